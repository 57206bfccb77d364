"""The STS cascade: four stage networks linked by prior-map transmission (paper eq. 10-12).

Stage i sees ``Y ⊕ C_T(P_A^{i-1}, P_V^{i-1})`` where Y is the windowed CT concatenated with its
vessel-enhanced version (eq. 12) and C_T is two 3x3x3 convolutions with a residual connection
(eq. 10). Stage 0 sees an all-zero prior (the paper replaces its previous map by zeros; the
zeros are given to the network directly, not passed through a C_T). Stage i is trained on the
vessels of levels <= i, so the last stage gives the whole trees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from hipas_core.sts.network import StageConfig, StageNet

IMAGE_CHANNELS = 2  # windowed CT, vesselness
PRIOR_CHANNELS = 2  # artery, vein probabilities of the previous stage


class PriorTransmission(nn.Module):
    """C_T of eq. 10: ``p + conv(gelu(conv(p)))`` with size-preserving 3x3x3 convolutions."""

    def __init__(self, channels: int = PRIOR_CHANNELS, hidden: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, hidden, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv3d(hidden, channels, 3, padding=1)

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        return prior + self.conv2(self.act(self.conv1(prior)))


@dataclass(frozen=True)
class CascadeConfig:
    """Shape of the cascade: ``stages`` stage networks of shape ``stage`` (its ``in_channels``
    is forced to image + prior channels).

    ``stage_blocks`` optionally gives each stage its own residual blocks per resolution (one
    5-tuple per stage), e.g. full-resolution blocks in the last stage only, where the thin
    vessels are decided; None: every stage has ``stage.blocks_per_level``.
    """

    stages: int = 4
    stage: StageConfig = field(default_factory=StageConfig)
    transmission_hidden: int = 8
    stage_blocks: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.stage_blocks is not None:
            blocks = tuple(tuple(int(b) for b in per_stage) for per_stage in self.stage_blocks)
            if len(blocks) != self.stages:
                raise ValueError(f"stage_blocks needs {self.stages} entries (one per stage), not {len(blocks)}")
            object.__setattr__(self, "stage_blocks", blocks)

    def stage_config(self, index: int) -> StageConfig:
        """The shape of stage ``index``."""
        if self.stage_blocks is None:
            return self.stage
        return StageConfig(**{**asdict(self.stage), "blocks_per_level": self.stage_blocks[index]})

    def to_dict(self) -> dict:
        data = {"stages": self.stages, "stage": asdict(self.stage), "transmission_hidden": self.transmission_hidden}
        if self.stage_blocks is not None:
            data["stage_blocks"] = [list(b) for b in self.stage_blocks]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CascadeConfig:
        stage = dict(data["stage"])
        stage["blocks_per_level"] = tuple(stage["blocks_per_level"])
        stage_blocks = data.get("stage_blocks")
        return cls(stages=int(data["stages"]), stage=StageConfig(**stage), transmission_hidden=int(data["transmission_hidden"]),
                   stage_blocks=None if stage_blocks is None else tuple(tuple(b) for b in stage_blocks))


class STSCascade(nn.Module):
    """Four (``config.stages``) cascaded stage networks.

    ``forward(image)`` takes (B, 2, Z, Y, X) (windowed CT, vesselness in [0, 1]) and returns the
    list of per-stage logits, each (B, 2, Z, Y, X) for (artery, vein); the last is the answer.
    ``forward_stage(i, image, prior)`` runs one stage given the previous stage's probabilities
    (None for stage 0), which is what stage-by-stage sliding-window inference uses.
    """

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__()
        stage_config = StageConfig(**{**asdict(config.stage), "in_channels": IMAGE_CHANNELS + PRIOR_CHANNELS})
        self.config = CascadeConfig(stages=config.stages, stage=stage_config, transmission_hidden=config.transmission_hidden,
                                    stage_blocks=config.stage_blocks)
        self.stages = nn.ModuleList(StageNet(self.config.stage_config(i)) for i in range(config.stages))
        # C_T for stages 1..n-1 (stage 0 gets zeros)
        self.transmissions = nn.ModuleList(
            PriorTransmission(hidden=config.transmission_hidden) for _ in range(config.stages - 1)
        )

    def forward_stage(self, index: int, image: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        if index == 0 or prior is None:
            if index != 0:
                raise ValueError(f"stage {index} needs the previous stage's probabilities")
            transmitted = image.new_zeros((image.shape[0], PRIOR_CHANNELS, *image.shape[2:]))
        else:
            transmitted = self.transmissions[index - 1](prior)
        return self.stages[index](torch.cat([image, transmitted], dim=1))

    def forward(self, image: torch.Tensor, *, last_stage: int | None = None) -> list[torch.Tensor]:
        outputs = []
        prior = None
        for index in range(len(self.stages) if last_stage is None else last_stage + 1):
            logits = self.forward_stage(index, image, prior)
            outputs.append(logits)
            prior = torch.sigmoid(logits)
        return outputs


@torch.no_grad()
def cascade_probabilities(
    model: STSCascade,
    image: torch.Tensor,
    *,
    slide: Callable,
    last_stage: int | None = None,
    on_stage: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the cascade stage by stage over a whole volume, as inference does.

    ``image`` (2, Z, Y, X) (windowed CT, vesselness); ``slide(fn, volume)`` applies ``fn`` (a map
    from (B, C, z, y, x) windows to (B, 2, z, y, x) probabilities) over a (C, Z, Y, X) volume,
    e.g. a sliding window. Each stage sees the image and the previous stage's probabilities over
    the whole volume. Returns the (2, Z, Y, X) float32 probabilities of ``last_stage`` (default:
    the last stage); ``on_stage(index)`` is called after each stage (timings).
    """
    last = len(model.stages) - 1 if last_stage is None else int(last_stage)
    # one buffer holds the image and the latest prior (filled in place), instead of a new
    # concatenated copy of both for every stage
    source = image.new_empty((IMAGE_CHANNELS + PRIOR_CHANNELS, *image.shape[1:]))
    source[:IMAGE_CHANNELS] = image
    prior = None
    for index in range(last + 1):

        def run(x: torch.Tensor, index: int = index) -> torch.Tensor:
            img, pri = x[:, :IMAGE_CHANNELS], (x[:, IMAGE_CHANNELS:] if x.shape[1] > IMAGE_CHANNELS else None)
            return torch.sigmoid(model.forward_stage(index, img, pri).float())

        prior = slide(run, source[:IMAGE_CHANNELS] if index == 0 else source)
        if index < last:
            source[IMAGE_CHANNELS:] = prior
            del prior
        if on_stage is not None:
            on_stage(index)
    return prior
