"""The STS stage network: a 3D encoder-decoder with residual depthwise blocks.

Architecture (facts from the paper's Supplementary Fig. 5 and its public code, written here):
an encoder with four strided down-samplings, a decoder with four transposed-convolution
up-samplings and skip connections, and residual blocks made of

    depthwise 3x3x3 conv -> GroupNorm -> pointwise expansion (x4) -> GELU -> pointwise projection
    -> concatenation with the block input -> 3x3x3 conv (back to the block width) + block input.

Down-sampling is a strided (2) depthwise 2x2x2 conv followed by a pointwise conv that doubles
the width; up-sampling is a 2x2x2 transposed conv that halves it. The head gives two sigmoid
channels (artery, vein). Tensors are (batch, channel, z, y, x); every spatial size must be a
multiple of 16 (four halvings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

DOWNSAMPLINGS = 4
SIZE_MULTIPLE = 2**DOWNSAMPLINGS
# without gradients, a block's pointwise layers run on z-slabs of at most this many voxels per channel
POINTWISE_SLAB_VOXELS = 1 << 20


def _groups(channels: int) -> int:
    """GroupNorm groups: as many as possible up to 8 that divide ``channels``."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


class ResidualBlock(nn.Module):
    """Depthwise 3x3x3 -> GroupNorm -> 1x1x1 expansion x4 -> GELU -> 1x1x1 projection,
    concatenated with the input, fused by a 3x3x3 conv, plus the input (residual)."""

    def __init__(self, channels: int, expansion: int = 4) -> None:
        super().__init__()
        self.depthwise = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.expand = nn.Conv3d(channels, channels * expansion, 1)
        self.act = nn.GELU()
        self.project = nn.Conv3d(channels * expansion, channels, 1)
        self.fuse = nn.Conv3d(2 * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.depthwise(x))
        if torch.is_grad_enabled() or h[0, 0].numel() <= POINTWISE_SLAB_VOXELS:
            y = self.project(self.act(self.expand(h)))
        else:
            y = self._pointwise_in_slabs(h)
        del h
        return x + self.fuse(torch.cat([y, x], dim=1))

    def _pointwise_in_slabs(self, h: torch.Tensor) -> torch.Tensor:
        """expand -> GELU -> project, slab by slab along z: the same values (every op is per
        voxel), without the x4-wide expansion of the whole window alive at once (at full
        resolution in inference it was the largest tensor of a ``hipas segment`` call)."""
        step = max(1, POINTWISE_SLAB_VOXELS // (h.shape[3] * h.shape[4]))
        y = None
        for start in range(0, h.shape[2], step):
            slab = self.project(self.act(self.expand(h[:, :, start:start + step])))
            if y is None:
                shape = (h.shape[0], slab.shape[1], *h.shape[2:])
                layout = (torch.channels_last_3d if slab.is_contiguous(memory_format=torch.channels_last_3d)
                          else torch.contiguous_format)
                y = torch.empty(shape, dtype=slab.dtype, device=slab.device, memory_format=layout)
            y[:, :, start:start + step] = slab
        return y


class DownSample(nn.Module):
    """Strided depthwise 2x2x2 conv (halves every axis) and a pointwise conv to ``out``."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv3d(channels, channels, 2, stride=2, groups=channels)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.pointwise = nn.Conv3d(channels, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.norm(self.depthwise(x)))


@dataclass(frozen=True)
class StageConfig:
    """Shape of one stage network.

    ``width`` is the channels at full resolution (paper: 24), doubled at each down-sampling up to
    ``max_width_factor`` x width; ``blocks_per_level`` gives the residual blocks at each of the
    five resolutions (encoder and decoder each; the last entry is the bottleneck). A demo model
    for CPUs may use 0 blocks at full resolution.
    """

    in_channels: int = 2
    width: int = 24
    out_channels: int = 2
    blocks_per_level: tuple[int, ...] = (1, 1, 1, 1, 1)
    max_width_factor: int = 8

    def __post_init__(self) -> None:
        blocks = self.blocks_per_level
        if isinstance(blocks, int):
            blocks = (blocks,) * (DOWNSAMPLINGS + 1)
        object.__setattr__(self, "blocks_per_level", tuple(int(b) for b in blocks))
        if len(self.blocks_per_level) != DOWNSAMPLINGS + 1:
            raise ValueError(f"blocks_per_level needs {DOWNSAMPLINGS + 1} entries (one per resolution)")

    def to_dict(self) -> dict:
        return asdict(self)


class StageNet(nn.Module):
    """One STS stage: (B, in_channels, Z, Y, X) -> logits (B, 2, Z, Y, X) for (artery, vein).

    Apply ``torch.sigmoid`` to the logits for probabilities (kept separate so the loss can
    use a numerically stable form and autocast can run the network in half precision).
    """

    def __init__(self, config: StageConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.width * min(2**level, config.max_width_factor) for level in range(DOWNSAMPLINGS + 1)]
        self.stem = nn.Conv3d(config.in_channels, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList(
            nn.Sequential(*[ResidualBlock(w) for _ in range(n)])
            for w, n in zip(widths[:-1], config.blocks_per_level, strict=False)
        )
        self.down = nn.ModuleList(DownSample(widths[i], widths[i + 1]) for i in range(DOWNSAMPLINGS))
        self.bottleneck = nn.Sequential(*[ResidualBlock(widths[-1]) for _ in range(config.blocks_per_level[-1])])
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(DOWNSAMPLINGS)
        )
        self.merge = nn.ModuleList(nn.Conv3d(2 * widths[i], widths[i], 1) for i in range(DOWNSAMPLINGS))
        self.decoder = nn.ModuleList(
            nn.Sequential(*[ResidualBlock(w) for _ in range(n)])
            for w, n in zip(widths[:-1], config.blocks_per_level, strict=False)
        )
        self.head = nn.Conv3d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis_size in x.shape[2:]:
            if axis_size % SIZE_MULTIPLE:
                raise ValueError(f"spatial size {tuple(x.shape[2:])} is not a multiple of {SIZE_MULTIPLE}")
        x = self.stem(x)
        skips = []
        for level in range(DOWNSAMPLINGS):
            x = self.encoder[level](x)
            skips.append(x)
            x = self.down[level](x)
        x = self.bottleneck(x)
        for level in reversed(range(DOWNSAMPLINGS)):
            x = self.up[level](x)
            x = self.merge[level](torch.cat([x, skips[level]], dim=1))
            x = self.decoder[level](x)
        return self.head(x)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def paper_stage_config(*, in_channels: int = 4) -> StageConfig:
    """The paper-width stage (base width 24; about 14.4 M parameters per stage in the paper)."""
    return StageConfig(in_channels=in_channels, width=24, blocks_per_level=(1, 1, 2, 2, 1), max_width_factor=8)


def load_matching_weights(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor of ``state_dict`` whose name and shape ``module`` shares; residual blocks
    that ``state_dict`` lacks altogether start as identities (their ``fuse`` conv zeroed, so
    ``x + fuse(...) = x``), which grows a trained network by blocks without changing what it
    computes. Returns the names of ``module``'s parameters that were not loaded. Raises
    ``ValueError`` when a shared name has another shape."""
    own = module.state_dict()
    loaded = {}
    for name, tensor in state_dict.items():
        if name in own:
            if tuple(own[name].shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not fit {tuple(own[name].shape)}")
            loaded[name] = tensor
    module.load_state_dict(loaded, strict=False)
    missing = [name for name in own if name not in loaded]
    for block_name, block in module.named_modules():
        if isinstance(block, ResidualBlock):
            prefix = f"{block_name}." if block_name else ""
            if all(f"{prefix}{key}" not in loaded for key in block.state_dict()):
                with torch.no_grad():
                    block.fuse.weight.zero_()
                    block.fuse.bias.zero_()
    return missing
