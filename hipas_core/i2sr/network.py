"""The I2SR network and O_F, the small network imitating the Frangi vesselness.

Architecture (paper, Methods "CT spatial-normalization with I2SR"; tensors (B, C, Z, Y, X)):

* FE  - feature extraction on the thick-slice grid: a 3x3x3 conv and residual conv blocks.
* FI  - feature interpolation: the features are interpolated linearly along z to the output
  slice positions (1 mm apart), giving the initial high-resolution representation.
* I2FF x l - inter/intra feature fusion: parallel k1 x k1 x 1 (in-plane) and 1 x 1 x k2
  (through-plane) convolutions, concatenated, then 3x3x3 and 1x1x1 convolutions, with layer
  normalization over channels and ReLU; residual.
* RE  - reconstruction: 3x3x3 conv, ReLU, 1x1x1 conv to one channel (zero-initialised).

The output is linear interpolation along z of the input plus the learned residual, so an
untrained model is exactly linear in z (the in-plane grid is unchanged). Intensities inside the
network are CT windowed by ``window_ct``: ``HU_WINDOW`` ([-1000, 600] HU) mapped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hipas_core.conventions import HU_WINDOW

HU_LOW, HU_HIGH = HU_WINDOW
HU_RANGE = HU_HIGH - HU_LOW  # HU per unit of windowed intensity


def window_ct(hu: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """CT in HU (any shape) clipped to ``HU_WINDOW`` and mapped to [0, 1]; float32 for numpy input,
    the tensor's dtype for a tensor."""
    if isinstance(hu, torch.Tensor):
        return (hu.clamp(HU_LOW, HU_HIGH) - HU_LOW) / HU_RANGE
    return (np.clip(hu, HU_LOW, HU_HIGH).astype(np.float32) - HU_LOW) / HU_RANGE


@dataclass(frozen=True)
class I2SRConfig:
    """Network shape: ``channels`` feature channels, ``fe_blocks`` residual blocks in FE,
    ``i2ff_layers`` I2FF iterations with in-plane kernel ``k1`` and through-plane kernel ``k2``;
    ``target_spacing_mm``: output slice spacing (mm)."""

    channels: int = 8
    fe_blocks: int = 2
    i2ff_layers: int = 2
    k1: int = 3
    k2: int = 3
    target_spacing_mm: float = 1.0


class _ChannelLayerNorm(nn.Module):
    """Layer normalization over the channel dimension of (B, C, Z, Y, X)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class I2FF(nn.Module):
    """Inter- and intra-slice feature fusion (one iteration)."""

    def __init__(self, channels: int, k1: int, k2: int):
        super().__init__()
        self.intra = nn.Conv3d(channels, channels, (1, k1, k1), padding=(0, k1 // 2, k1 // 2))
        self.inter = nn.Conv3d(channels, channels, (k2, 1, 1), padding=(k2 // 2, 0, 0))
        self.norm1 = _ChannelLayerNorm(2 * channels)
        self.fuse = nn.Conv3d(2 * channels, channels, 3, padding=1)
        self.norm2 = _ChannelLayerNorm(channels)
        self.project = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(torch.cat([self.intra(x), self.inter(x)], dim=1)))
        h = F.relu(self.norm2(self.fuse(h)))
        return x + self.project(h)


def interpolate_z(volume: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (B, C, Z, Y, X) along Z at fractional slice indices ``positions``
    (1D, clamped to [0, Z - 1]); returns (B, C, len(positions), Y, X)."""
    depth = volume.shape[2]
    positions = positions.to(volume.device, volume.dtype).clamp(0, depth - 1)
    lower = positions.floor().long().clamp(0, depth - 1)
    upper = (lower + 1).clamp(max=depth - 1)
    weight = (positions - lower.to(positions.dtype)).view(1, 1, -1, 1, 1)
    return volume[:, :, lower] * (1 - weight) + volume[:, :, upper] * weight


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # 3D convolutions with few channels run several times faster in channels-last layout on CPU
    return x.contiguous(memory_format=torch.channels_last_3d)


class I2SRNet(nn.Module):
    """FE -> FI -> I2FF x l -> RE on windowed CT (B, 1, Z, Y, X) in [0, 1]."""

    def __init__(self, config: I2SRConfig | None = None):
        super().__init__()
        config = config or I2SRConfig()
        c = config.channels
        self.config = config
        self.head = nn.Conv3d(1, c, 3, padding=1)
        self.fe = nn.Sequential(*[_ResidualBlock(c) for _ in range(config.fe_blocks)])
        self.i2ff = nn.Sequential(*[I2FF(c, config.k1, config.k2) for _ in range(config.i2ff_layers)])
        self.re1 = nn.Conv3d(c, c, 3, padding=1)
        self.re2 = nn.Conv3d(c, 1, 1)
        nn.init.zeros_(self.re2.weight)
        nn.init.zeros_(self.re2.bias)
        self.to(memory_format=torch.channels_last_3d)

    def residual(self, thick: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Learned correction (B, 1, len(positions), Y, X) at the output ``positions``
        (fractional thick-slice indices) of windowed thick slices (B, 1, Z, Y, X)."""
        features = self.fe(F.relu(self.head(_channels_last(thick))))
        hr = self.i2ff(_channels_last(interpolate_z(features, positions)))
        return self.re2(F.relu(self.re1(hr)))

    def forward(self, thick: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Super-resolved windowed CT (B, 1, len(positions), Y, X)."""
        return interpolate_z(thick, positions) + self.residual(thick, positions)

    def halo(self, spacing_z_mm: float) -> tuple[int, int]:
        """(thick slices, in-plane voxels) of context covering the receptive field, so tiled
        inference equals whole-volume inference (up to float rounding)."""
        cfg = self.config
        after_fi = cfg.i2ff_layers * (max(cfg.k1, cfg.k2) // 2 + 1) + 1  # I2FF and RE convs
        before_fi = 1 + 2 * cfg.fe_blocks  # head and FE convs
        z = before_fi + math.ceil(after_fi * cfg.target_spacing_mm / spacing_z_mm) + 1
        return z, before_fi + after_fi


class VesselnessNet(nn.Module):
    """O_F: a few 3x3x3 convolutions imitating the Frangi vesselness (differentiable); windowed
    CT (B, 1, Z, Y, X) in, vesselness in [0, 1] of the same shape out."""

    def __init__(self, channels: int = 8, layers: int = 4):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv3d(1, channels, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 2):
            blocks += [nn.Conv3d(channels, channels, 3, padding=1), nn.ReLU()]
        blocks.append(nn.Conv3d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)
        self.to(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(_channels_last(x)))
