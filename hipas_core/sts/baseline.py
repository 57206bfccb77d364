"""The single-stage baseline: a plain 3D U-Net (two 3x3x3 conv-GroupNorm-ReLU per level,
four max-pool down-samplings, transposed-conv up-sampling, skip concatenation) giving
(artery, vein) logits from the same two input channels (windowed CT, vesselness). Trained with
plain Dice; its width is chosen so that its parameter count is about that of the whole cascade.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from hipas_core.sts.network import DOWNSAMPLINGS, SIZE_MULTIPLE, _groups


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.GroupNorm(_groups(cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.GroupNorm(_groups(cout), cout),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class UNetConfig:
    """``widths``: channels at each of the five resolutions (full resolution first)."""

    in_channels: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    out_channels: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != DOWNSAMPLINGS + 1:
            raise ValueError(f"widths needs {DOWNSAMPLINGS + 1} entries")

    def to_dict(self) -> dict:
        return asdict(self)


class UNet3D(nn.Module):
    """(B, in_channels, Z, Y, X) -> logits (B, 2, Z, Y, X); sizes must be multiples of 16."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = list(config.widths)
        self.encoder = nn.ModuleList()
        cin = config.in_channels
        for w in widths:
            self.encoder.append(_double_conv(cin, w))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(DOWNSAMPLINGS))
        self.decoder = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(DOWNSAMPLINGS))
        self.head = nn.Conv3d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis_size in x.shape[2:]:
            if axis_size % SIZE_MULTIPLE:
                raise ValueError(f"spatial size {tuple(x.shape[2:])} is not a multiple of {SIZE_MULTIPLE}")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < DOWNSAMPLINGS:
                skips.append(x)
                x = self.pool(x)
        for level in reversed(range(DOWNSAMPLINGS)):
            x = self.decoder[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        return self.head(x)


def matching_unet_config(target_parameters: int, *, base_width: int, in_channels: int = 2) -> UNetConfig:
    """A U-Net with ``base_width`` channels at full resolution (doubling per level) whose two
    deepest levels are widened so the parameter count is closest to ``target_parameters``.

    Keeping the full-resolution width equal to a cascade stage's keeps the compute per step
    comparable; the extra parameters sit where they are cheap (the coarse levels).
    """
    from hipas_core.sts.network import count_parameters

    best = None
    for factor in [x / 4 for x in range(4, 129)]:
        widths = (base_width, 2 * base_width, 4 * base_width,
                  int(round(8 * base_width * factor)), int(round(16 * base_width * factor)))
        config = UNetConfig(in_channels=in_channels, widths=widths)
        n = count_parameters(UNet3D(config))
        if best is None or abs(n - target_parameters) < best[0]:
            best = (abs(n - target_parameters), config)
        if n > target_parameters:
            break
    return best[1]
