"""I2SR: inter- and intra-slice super-resolution of thick-slice CT to 1 mm slices.

Architecture (paper, Methods "CT spatial-normalization with I2SR"; arrays (z, y, x)):

* FE  - feature extraction on the thick-slice grid: a 3x3x3 conv and residual conv blocks.
* FI  - feature interpolation: the features are interpolated linearly along z to the output
  slice positions (1 mm apart), giving the initial high-resolution representation.
* I2FF x l - inter/intra feature fusion: parallel k1 x k1 x 1 (in-plane) and 1 x 1 x k2
  (through-plane) convolutions, concatenated, then 3x3x3 and 1x1x1 convolutions, with layer
  normalization over channels and ReLU; residual.
* RE  - reconstruction: 3x3x3 conv, ReLU, 1x1x1 conv to one channel (zero-initialised).

The output is linear interpolation along z of the input plus the learned residual, so an
untrained model is exactly trilinear (here: linear in z, the in-plane grid is unchanged).
Intensities inside the network are CT windowed to [-1000, 600] HU and mapped to [0, 1]; at
inference the residual is added (times 1600 HU) to the linearly interpolated HU, so values
outside the window (bone, air padding) pass through like trilinear interpolation.

Training (``train``; also ``python -m hipas_core.i2sr --train ...``): thin-slice volumes (1 mm)
are turned into thick slices by slice-profile (box) averaging, corrupted with Poisson-law noise
(counts ~ Poisson(I0 exp(-mu))), and the model learns to recover the 1 mm volume with the loss
``||SR - GT||^2 + ||O_F(SR) - O_F(GT)||^2``, where ``O_F`` is a small 3x3x3 conv network first
trained to imitate the Frangi vesselness of ``hipas_core.vesselness``.

Inference tiles the volume (z slabs and in-plane tiles with a halo larger than the receptive
field), so memory stays bounded on CPU and GPU; it reports its tiles done
(``hipas_core.progress``: a bar on a terminal, else ``I2SR: tiles k/N (s)`` lines), and so
does ``hipas normalize``'s I2SR. Checkpoints hold tensors and plain data only and are read with
``torch.load(weights_only=True)``: loading one never runs code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from hipas_core.conventions import HU_WINDOW, META_SLICE_THICKNESS
from hipas_core.errors import InvalidInputError
from hipas_core.progress import Progress, log

CHECKPOINT_FORMAT = "hipas-i2sr/1"
_HU_LOW, _HU_HIGH = HU_WINDOW
_HU_RANGE = _HU_HIGH - _HU_LOW


@dataclass(frozen=True)
class I2SRConfig:
    """Network shape. ``target_spacing_mm``: output slice spacing."""

    channels: int = 8
    fe_blocks: int = 2
    i2ff_layers: int = 2
    k1: int = 3
    k2: int = 3
    target_spacing_mm: float = 1.0


# --------------------------------------------------------------------------------------------
# network


class _ChannelLayerNorm(nn.Module):
    """Layer normalization over the channel dimension of (B, C, D, H, W)."""

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
    """Linear interpolation of (B, C, D, H, W) along D at fractional slice ``positions`` (1D)."""
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
    """FE -> FI -> I2FF x l -> RE on windowed CT (B, 1, D, H, W) in [0, 1]."""

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
        """Learned correction at the output ``positions`` (fractional thick-slice indices)."""
        features = self.fe(F.relu(self.head(_channels_last(thick))))
        hr = self.i2ff(_channels_last(interpolate_z(features, positions)))
        return self.re2(F.relu(self.re1(hr)))

    def forward(self, thick: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
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
    """O_F: a few 3x3x3 convolutions imitating the Frangi vesselness (differentiable)."""

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


# --------------------------------------------------------------------------------------------
# checkpoints


def save_model(model: I2SRNet, path: str | os.PathLike, *, training: dict | None = None) -> None:
    """Write a checkpoint (config, weights, package versions, training record) atomically."""
    from hipas_core.atomic import atomic_path
    from hipas_core.provenance import package_versions

    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": package_versions(),
        "training": json.dumps(training or {}, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read_checkpoint(path: Path, use) -> object:
    """``use(payload)`` of the checkpoint ``path`` (read as tensors and plain data only: never
    runs code from the file); ``InvalidInputError`` for anything wrong with the file."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such I2SR model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("format")
        return use(payload)
    except Exception as error:  # noqa: BLE001 - anything wrong with the file is the user's input
        raise InvalidInputError(f"{path}: not an I2SR checkpoint ({type(error).__name__})") from None


def load_model(path: str | os.PathLike, *, device: str = "cpu") -> I2SRNet:
    """Load a checkpoint written by ``save_model``; ``InvalidInputError`` when it is not one."""

    def build(payload: dict) -> I2SRNet:
        model = I2SRNet(I2SRConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model.to(memory_format=torch.channels_last_3d)

    return _read_checkpoint(Path(path), build).to(device).eval()


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Config, versions and training record of a checkpoint (no weights)."""
    return _read_checkpoint(Path(path), lambda payload: {
        "config": payload["config"], "versions": payload["versions"], "training": json.loads(payload["training"])})


# --------------------------------------------------------------------------------------------
# inference


def output_positions(depth: int, spacing_mm: float, target_mm: float = 1.0) -> np.ndarray:
    """Fractional input-slice indices of output slices ``target_mm`` apart from the first slice."""
    count = int(math.floor((depth - 1) * spacing_mm / target_mm + 1e-6)) + 1
    return np.arange(count) * (target_mm / spacing_mm)


@torch.no_grad()
def super_resolve_array(
    hu: np.ndarray,
    spacing_z_mm: float,
    *,
    model: I2SRNet,
    device: str = "cpu",
    slab_slices: int = 24,
    tile_voxels: int = 160,
    progress: str | None = None,
) -> np.ndarray:
    """Super-resolve a (z, y, x) HU array with slices ``spacing_z_mm`` apart to 1 mm (float32 HU).

    Output slice j lies j * target mm from input slice 0 (same in-plane grid). Processed in z
    slabs of ``slab_slices`` input slices and in-plane tiles of ``tile_voxels`` with halos
    (float16 autocast on CUDA, float32 on CPU). ``progress``: ``hipas_core.progress`` mode of
    the tile count (default: bar on a terminal, else log lines; ``"off"``).
    """
    model = model.to(device).eval()
    target = model.config.target_spacing_mm
    positions = output_positions(hu.shape[0], spacing_z_mm, target)
    depth, height, width = hu.shape
    halo_z, halo_xy = model.halo(spacing_z_mm)
    out = np.empty((len(positions), height, width), np.float32)
    windowed = (np.clip(hu, _HU_LOW, _HU_HIGH).astype(np.float32) - _HU_LOW) / _HU_RANGE
    per_slab = math.ceil(height / tile_voxels) * math.ceil(width / tile_voxels)
    tiles = Progress("I2SR", total=math.ceil(depth / slab_slices) * per_slab, unit="tiles", mode=progress)
    for c0 in range(0, depth, slab_slices):
        c1 = min(depth, c0 + slab_slices)
        a0, b0 = max(0, c0 - halo_z), min(depth, c1 + halo_z)
        last = c1 == depth
        core = np.nonzero((positions >= c0) & ((positions < c1) | (last & (positions <= depth - 1))))[0]
        if core.size == 0:
            tiles.update(per_slab)  # no output slice lies in this slab
            continue
        span = np.nonzero((positions >= a0) & (positions <= b0 - 1))[0]
        local = torch.from_numpy(positions[span] - a0)
        keep = slice(core[0] - span[0], core[-1] - span[0] + 1)
        for y0 in range(0, height, tile_voxels):
            for x0 in range(0, width, tile_voxels):
                y1, x1 = min(height, y0 + tile_voxels), min(width, x0 + tile_voxels)
                ya, yb = max(0, y0 - halo_xy), min(height, y1 + halo_xy)
                xa, xb = max(0, x0 - halo_xy), min(width, x1 + halo_xy)
                block = torch.from_numpy(np.ascontiguousarray(windowed[a0:b0, ya:yb, xa:xb]))[None, None].to(device)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=block.is_cuda):
                    residual = model.residual(block, local)[0, 0, keep, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
                out[core[0] : core[-1] + 1, y0:y1, x0:x1] = residual.float().cpu().numpy() * _HU_RANGE
                tiles.update(1)
    tiles.close()
    for j, position in enumerate(positions):  # plus linear interpolation of the HU, slice by slice
        lower = min(int(math.floor(position)), depth - 1)
        upper, weight = min(lower + 1, depth - 1), float(position - lower)
        out[j] += hu[lower] * (1.0 - weight) + hu[upper] * weight
    return out


def super_resolve(image: sitk.Image, *, model: I2SRNet, device: str = "cpu", progress: str | None = None) -> sitk.Image:
    """I2SR of a thick-slice CT (HU) to slices ``model.config.target_spacing_mm`` (1 mm) apart.

    Same in-plane grid, origin (first slice centre) and direction; float32 HU. The last output
    slice is the last one within the input's first-to-last slice span. ``progress`` as for
    ``super_resolve_array``.
    """
    hu = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()
    result = super_resolve_array(hu.astype(np.float32, copy=False), spacing[2], model=model, device=device,
                                 progress=progress)
    out = sitk.GetImageFromArray(result)
    out.SetSpacing((spacing[0], spacing[1], model.config.target_spacing_mm))
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    out.SetMetaData(META_SLICE_THICKNESS, f"{model.config.target_spacing_mm:g}")
    return out


# --------------------------------------------------------------------------------------------
# training data


def thick_slice_profile(depth: int, spacing_mm: float, thickness_mm: float | None = None) -> np.ndarray:
    """(K, depth) box-profile weights turning 1 mm slices into slices ``spacing_mm`` apart.

    Thick slice k is centred at k * spacing_mm (thin slice j covers [j - 0.5, j + 0.5] mm); each
    weight is the overlap of the two intervals, rows normalised to 1 (clipped at the ends).
    """
    thickness = spacing_mm if thickness_mm is None else thickness_mm
    count = int(math.floor((depth - 1) / spacing_mm + 1e-6)) + 1
    centres = np.arange(count) * spacing_mm
    edges = np.arange(depth)
    low = np.maximum(centres[:, None] - thickness / 2, edges[None, :] - 0.5)
    high = np.minimum(centres[:, None] + thickness / 2, edges[None, :] + 0.5)
    weights = np.clip(high - low, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def simulate_thick(thin: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Thick slices (box profile, thickness = spacing) from a (z, y, x) volume with 1 mm slices."""
    weights = thick_slice_profile(thin.shape[0], spacing_mm).astype(np.float32)
    return np.tensordot(weights, thin.astype(np.float32), axes=(1, 0))


def poisson_noise(hu: torch.Tensor, incident_counts: torch.Tensor | float, generator=None) -> torch.Tensor:
    """Poisson-law noise: counts ~ Poisson(I0 exp(-mu)), mu proportional to HU + 1000.

    A voxel-wise stand-in for projection noise (mu = 2 (HU + 1000) / 1000, water: 2); the
    lower ``incident_counts`` (I0), the noisier; about 20-40 HU SD in soft tissue at I0 = 1000.
    """
    mu = 2.0 * (hu + 1000.0).clamp(min=0) / 1000.0
    expected = incident_counts * torch.exp(-mu)
    counts = torch.poisson(expected, generator=generator).clamp(min=1.0)
    noisy_mu = -torch.log(counts / incident_counts)
    return noisy_mu * 500.0 - 1000.0


def synthetic_vessel_volume(seed: int, shape: Sequence[int] = (48, 96, 96), spacing: Sequence[float] = (1.0, 0.7, 0.7)) -> np.ndarray:
    """A (z, y, x) HU volume of lung-like background with curved, branching vessels and blobs.

    Used to train and test I2SR without the phantom generator: background -860 +- smooth
    variation, vessels 20-70 HU of radius 0.5-3.5 mm with partial-volume edges, a few nodules,
    and a soft-tissue/bone slab at one side (values outside the HU window).
    """
    rng = np.random.default_rng(seed)
    shape, spacing = tuple(int(n) for n in shape), np.asarray(spacing, dtype=np.float64)
    extent = np.array(shape) * spacing
    from scipy.ndimage import zoom as nd_zoom

    smooth = nd_zoom(rng.normal(size=(4, 4, 4)), [n / 4 for n in shape], order=3)
    hu = -860.0 + 25.0 * smooth[: shape[0], : shape[1], : shape[2]]
    vessel = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(6, 10))):
        position = rng.uniform(0.1, 0.9, 3) * extent
        heading = rng.normal(size=3)
        radius = rng.uniform(1.5, 3.5)
        stack = [(position, heading, radius)]
        while stack:
            position, heading, radius = stack.pop()
            for _ in range(int(rng.integers(3, 7))):
                heading = heading / np.linalg.norm(heading) + rng.normal(scale=0.35, size=3)
                heading /= np.linalg.norm(heading)
                end = position + heading * rng.uniform(4, 10)
                _paint_segment(vessel, spacing, position, end, radius)
                position = end
                if radius > 0.9 and rng.random() < 0.35:
                    stack.append((position, heading + rng.normal(scale=1.0, size=3), radius * 0.7))
                radius = max(0.5, radius * rng.uniform(0.85, 0.97))
    vessel_hu = rng.uniform(20, 70)
    hu = hu + vessel * (vessel_hu - hu)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    for _ in range(int(rng.integers(0, 3))):
        centre, radius = rng.uniform(0.2, 0.8, 3) * extent, rng.uniform(2, 5)
        distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        hu = hu + _sigmoid((radius - distance) / 0.35) * (rng.uniform(-50, 400) - hu)
    wall = yy > extent[1] * rng.uniform(0.8, 0.95)
    hu[wall] = rng.uniform(-100, 80)
    hu[wall & (np.sin(zz / 6.0 + xx / 9.0) > 0.6)] = rng.uniform(500, 1100)
    return hu.astype(np.float32)


def _paint_segment(volume: np.ndarray, spacing: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> None:
    """Max-composite a soft-edged capsule (mm coordinates) into ``volume`` within its bounding box."""
    margin = radius + 1.5
    low = np.maximum(np.floor((np.minimum(start, end) - margin) / spacing).astype(int), 0)
    high = np.minimum(np.ceil((np.maximum(start, end) + margin) / spacing).astype(int) + 1, volume.shape)
    if np.any(high <= low):
        return
    grids = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(low, high, spacing, strict=True)], indexing="ij")
    points = np.stack(grids, axis=-1)
    direction = end - start
    t = np.clip(((points - start) @ direction) / (direction @ direction), 0, 1)
    distance = np.linalg.norm(points - (start + t[..., None] * direction), axis=-1)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    volume[box] = np.maximum(volume[box], _sigmoid((radius - distance) / 0.3))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


# --------------------------------------------------------------------------------------------
# training


def _window_t(hu: torch.Tensor) -> torch.Tensor:
    return (hu.clamp(_HU_LOW, _HU_HIGH) - _HU_LOW) / _HU_RANGE


def train_vesselness_net(
    volumes: Sequence[np.ndarray], spacing: Sequence[float], *, steps: int = 60, seed: int = 0, patch: int = 24
) -> tuple[VesselnessNet, float]:
    """Fit O_F to ``hipas_core.vesselness`` on random patches of windowed ``volumes``; (net, last loss)."""
    from hipas_core.vesselness import vesselness

    rng = np.random.default_rng(seed)
    targets = [vesselness(_window_t(torch.from_numpy(v)).numpy(), spacing=spacing) for v in volumes]
    patch = min(patch, *(min(v.shape) for v in volumes))
    net = VesselnessNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_value = float("nan")
    for _ in range(steps):
        inputs, wanted = [], []
        for _ in range(2):
            index = int(rng.integers(len(volumes)))
            corner = [int(rng.integers(0, n - patch + 1)) for n in volumes[index].shape]
            crop = tuple(slice(c, c + patch) for c in corner)
            inputs.append(_window_t(torch.from_numpy(volumes[index][crop])))
            wanted.append(torch.from_numpy(np.ascontiguousarray(targets[index][crop])))
        x, y = torch.stack(inputs)[:, None], torch.stack(wanted)[:, None]
        loss = F.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net.eval(), loss_value


def make_training_pair(
    thin_hu: np.ndarray, spacing_mm: float, rng: np.random.Generator, *, depth: int, size: int,
    noise: bool = True, counts_range: tuple[float, float] = (2000.0, 50000.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(thick windowed (1, K, size, size), positions, ground truth windowed (1, n, size, size)).

    With ``noise``, Poisson-law noise with incident counts log-uniform in ``counts_range``.
    """
    corner = [int(rng.integers(0, n - m + 1)) for n, m in zip(thin_hu.shape, (depth, size, size), strict=True)]
    crop = thin_hu[corner[0] : corner[0] + depth, corner[1] : corner[1] + size, corner[2] : corner[2] + size]
    thick = torch.from_numpy(simulate_thick(crop, spacing_mm))
    if noise:
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        counts = float(np.exp(rng.uniform(np.log(counts_range[0]), np.log(counts_range[1]))))
        thick = poisson_noise(thick, counts, generator)
    positions = torch.from_numpy(output_positions(thick.shape[0], spacing_mm))
    truth = torch.from_numpy(np.ascontiguousarray(crop[: len(positions)]))
    return _window_t(thick)[None], positions, _window_t(truth)[None]


def i2sr_loss(
    model: I2SRNet, o_f: VesselnessNet, thick: torch.Tensor, positions: torch.Tensor, truth: torch.Tensor,
    *, vesselness_weight: float = 1.0,
) -> torch.Tensor:
    """Eq. 7: ``MSE(SR, GT) + w * MSE(O_F(SR), O_F(GT))`` on windowed intensities."""
    prediction = model(thick, positions)
    with torch.no_grad():
        target_vessels = o_f(truth)
    return F.mse_loss(prediction, truth) + vesselness_weight * F.mse_loss(o_f(prediction), target_vessels)


def train(
    *,
    steps: int = 240,
    seed: int = 0,
    config: I2SRConfig | None = None,
    volumes: Sequence[np.ndarray] | None = None,
    volume_spacing: Sequence[float] = (1.0, 0.7, 0.7),
    thickness_range: tuple[float, float] = (2.5, 5.0),
    patch_depth: int = 21,
    patch_size: int = 32,
    batch: int = 2,
    lr: float = 3e-3,
    vesselness_steps: int = 200,
    vesselness_weight: float = 1.0,
    noise_counts: tuple[float, float] | None = (2000.0, 50000.0),
    device: str = "cpu",
    log_every: int = 20,
) -> tuple[I2SRNet, dict]:
    """Train I2SR on thin-slice ``volumes`` (HU, (z, y, x), 1 mm slices; default: 6 synthetic).

    Each step: random crops, thick slices 2.5-5 mm (box profile), Poisson-law noise, loss
    ``MSE(SR, GT) + vesselness_weight * MSE(O_F(SR), O_F(GT))``. Deterministic for ``seed`` on CPU.
    Progress (``hipas_core.progress``) with a line every ``log_every`` steps (0: no output).
    Returns (model, record with losses, timings and settings).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    if volumes is None:
        volumes = [synthetic_vessel_volume(1000 + seed * 100 + i, shape=(40, 80, 80)) for i in range(6)]
    mode = None if log_every else "off"
    o_f, o_f_loss = train_vesselness_net(volumes, volume_spacing, steps=vesselness_steps, seed=seed)
    log(f"train i2sr: O_F (vesselness imitation) trained, mse {o_f_loss:.5f} ({time.perf_counter() - started:.1f} s)",
        mode=mode)
    o_f = o_f.to(device)
    model = I2SRNet(config or I2SRConfig()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    losses: list[float] = []
    baselines: list[float] = []  # the same loss for plain linear interpolation, for comparison
    progress = Progress("train i2sr", total=steps, unit="steps", mode=mode)
    for step in range(steps):
        spacing_mm = float(rng.uniform(*thickness_range))
        pairs = [make_training_pair(volumes[int(rng.integers(len(volumes)))], spacing_mm, rng,
                                    depth=patch_depth, size=patch_size, noise=noise_counts is not None,
                                    counts_range=noise_counts or (1.0, 1.0)) for _ in range(batch)]
        thick = torch.stack([p[0] for p in pairs]).to(device)
        truth = torch.stack([p[2] for p in pairs]).to(device)
        loss = i2sr_loss(model, o_f, thick, pairs[0][1], truth, vesselness_weight=vesselness_weight)
        with torch.no_grad():
            linear = interpolate_z(thick, pairs[0][1].to(device))
            baseline = F.mse_loss(linear, truth) + vesselness_weight * F.mse_loss(o_f(linear), o_f(truth))
        baselines.append(float(baseline))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        progress.update(1)
        progress.set_postfix(loss=f"{losses[-1]:.6f}")
        if log_every and (step + 1) % log_every == 0:
            recent, reference = np.mean(losses[-log_every:]), np.mean(baselines[-log_every:])
            progress.log(f"train i2sr: step {step + 1}/{steps}, loss {recent:.6f} (linear {reference:.6f}, "
                         f"ratio {recent / reference:.3f})")
    progress.close()
    record = {
        "steps": steps, "seed": seed, "batch": batch, "lr": lr, "patch_depth": patch_depth,
        "patch_size": patch_size, "thickness_range_mm": list(thickness_range),
        "vesselness_steps": vesselness_steps, "vesselness_net_final_mse": o_f_loss,
        "vesselness_weight": vesselness_weight, "noise_counts": noise_counts, "first_losses": losses[:10], "last_losses": losses[-10:],
        "loss_ratio_to_linear_first_50": float(np.sum(losses[:50]) / np.sum(baselines[:50])),
        "loss_ratio_to_linear_last_50": float(np.sum(losses[-50:]) / np.sum(baselines[-50:])),
        "seconds": round(time.perf_counter() - started, 1), "n_volumes": len(volumes),
    }
    return model.eval(), record


# --------------------------------------------------------------------------------------------
# evaluation


def psnr(prediction: np.ndarray, truth: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of windowed intensities (peak 1), optionally inside ``mask``."""
    p, t = ((np.clip(a, _HU_LOW, _HU_HIGH) - _HU_LOW) / _HU_RANGE for a in (prediction, truth))
    error = (p - t) ** 2
    mse = float(error[mask].mean() if mask is not None else error.mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(
    model: I2SRNet,
    volumes: Sequence[np.ndarray],
    thicknesses: Sequence[float] = (2.5, 5.0),
    *,
    vessel_masks: Sequence[np.ndarray] | None = None,
) -> list[dict]:
    """PSNR of I2SR vs linear-in-z on held-out thin (1 mm) volumes made thick (no noise).

    PSNR is on windowed intensities (peak 1), over the whole volume and inside the vessel region:
    ``vessel_masks`` (true vessels, e.g. phantom labels) dilated by one voxel, or by default voxels
    of -300..300 HU (vessels, nodules) dilated by one voxel.
    """
    from scipy.ndimage import binary_dilation

    rows = []
    for thickness in thicknesses:
        for index, thin in enumerate(volumes):
            thick = simulate_thick(thin, thickness)
            sr = super_resolve_array(thick, thickness, model=model, progress="off")
            positions = output_positions(thick.shape[0], thickness)
            linear = interpolate_z(torch.from_numpy(thick)[None, None], torch.from_numpy(positions))[0, 0].numpy()
            truth = thin[: len(positions)]
            if vessel_masks is not None:
                vessels = binary_dilation(vessel_masks[index][: len(positions)] > 0)
            else:
                vessels = binary_dilation((truth > -300) & (truth < 300))
            rows.append({
                "thickness_mm": thickness, "volume": index,
                "psnr_i2sr": psnr(sr, truth), "psnr_linear": psnr(linear, truth),
                "psnr_vessels_i2sr": psnr(sr, truth, mask=vessels), "psnr_vessels_linear": psnr(linear, truth, mask=vessels),
            })
    return rows


def phantom_volumes(seeds: Sequence[int], *, crop: tuple[int, int, int] = (48, 112, 112)) -> tuple[list, list]:
    """Central crops (z, y, x) of 1 mm small NCCT phantoms: (HU volumes, artery/vein label maps)."""
    from hipas_core.phantom import PhantomSpec, generate_phantom

    volumes, labels = [], []
    for seed in seeds:
        phantom = generate_phantom(PhantomSpec.from_seed(seed, size="small", protocol="ncct", slice_thickness_mm=1.0))
        hu = sitk.GetArrayFromImage(phantom.ct).astype(np.float32)
        lab = sitk.GetArrayFromImage(phantom.labels)
        box = tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + c) for n, c in zip(hu.shape, crop, strict=True))
        volumes.append(np.ascontiguousarray(hu[box]))
        labels.append(np.ascontiguousarray(lab[box]))
    return volumes, labels


def main(argv: list[str] | None = None) -> int:
    """``python -m hipas_core.i2sr --train --out models/i2sr-demo.pt [--steps N] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m hipas_core.i2sr", description="train / evaluate the I2SR demo model")
    parser.add_argument("--train", action="store_true", help="train a model and save it to --out")
    parser.add_argument("--evaluate", help="evaluate this checkpoint on held-out synthetic volumes")
    parser.add_argument("--out", default="models/i2sr-demo.pt")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--no-noise", action="store_true", help="train without Poisson-law noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-volumes", type=int, default=3, help="held-out synthetic volumes")
    parser.add_argument("--eval-phantoms", type=int, nargs="*", default=[], help="held-out phantom seeds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    held_out = [synthetic_vessel_volume(900_000 + i, shape=(41, 96, 96)) for i in range(args.eval_volumes)]
    if args.train:
        model, record = train(steps=args.steps, seed=args.seed, lr=args.lr,
                              noise_counts=None if args.no_noise else (2000.0, 50000.0))
        record["command"] = "python -m hipas_core.i2sr " + " ".join(argv if argv is not None else sys.argv[1:])
        rows = evaluate(model, held_out)
        record["evaluation"] = rows
        save_model(model, args.out, training=record)
        print(json.dumps(_summary(rows), indent=2))
        print(f"trained in {record['seconds']} s; saved {args.out}", file=sys.stderr)
    if args.evaluate:
        model = load_model(args.evaluate)
        print("synthetic:", json.dumps(_summary(evaluate(model, held_out)), indent=2))
        if args.eval_phantoms:
            volumes, labels = phantom_volumes(args.eval_phantoms)
            print("phantoms:", json.dumps(_summary(evaluate(model, volumes, vessel_masks=labels)), indent=2))
    return 0


def _summary(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for thickness in sorted({r["thickness_mm"] for r in rows}):
        chosen = [r for r in rows if r["thickness_mm"] == thickness]
        out[f"{thickness:g} mm"] = {k: round(float(np.mean([r[k] for r in chosen])), 3) for k in chosen[0] if k.startswith("psnr")}
    return out


if __name__ == "__main__":
    sys.exit(main())
