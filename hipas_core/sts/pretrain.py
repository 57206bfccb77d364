"""Masked-autoencoder pre-training of the STS stage encoder (paper Methods: "Model pretraining
with masked autoencoder"): 32x32x32 mask cubes, 60 % of them masked, L2 loss on the masked
voxels, sparse convolution in the encoder, encoder frozen when transferred.

``MaskedAutoencoder`` holds exactly the encoder modules of a ``StageNet`` (``stem``, ``encoder``,
``down``, ``bottleneck``; same classes, same names) so its encoder weights load 1:1 into every
stage of an ``STSCascade``. The paper's sparse convolution (SparK) is emulated densely: the masked
cubes are zeroed in the input and, inside the encoder, the (down-sampled) visibility mask is
re-applied after every convolution, and GroupNorm statistics are taken over visible voxels only
(what a sparse convolution / sparse normalisation computes on the active sites). Masked voxels
therefore carry no information anywhere in the encoder, and encoder features at masked positions
are exactly zero at every resolution. The mask cube must be a multiple of 16 (the encoder's
total down-sampling) so that every coarse voxel is wholly visible or wholly masked.

The light decoder (SparK style) fills masked positions of each encoder scale with a learned mask
token, then up-samples (2x2x2 transposed conv), adds the next finer densified scale and refines
with one 3x3x3 conv + GroupNorm + GELU; a 1x1x1 head reconstructs the windowed-CT channel.

Input channels are those a cascade stage sees: windowed CT, vesselness and two prior channels,
which are zero here as they are for stage 0. All input channels are masked (the vesselness
channel would otherwise leak the CT of the masked cubes). Tensors (batch, channel, z, y, x).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hipas_core.conventions import DEMO_VESSELNESS_SIGMAS_MM
from hipas_core.errors import InvalidInputError
from hipas_core.sts.network import (
    DOWNSAMPLINGS,
    SIZE_MULTIPLE,
    DownSample,
    ResidualBlock,
    StageConfig,
    StageNet,
    _groups,
)

ENCODER_PREFIXES = ("stem.", "encoder.", "down.", "bottleneck.")
CHECKPOINT_KIND = "mae-encoder"
# what ``pretrain(resume=True)`` reads back (``load_checkpoint(..., require=RESUME_KEYS)``)
RESUME_KEYS = ("kind", "model_config", "state_dict", "decoder_state_dict", "optimizer", "step", "history", "rng")
PRETRAINED_INPUT_CHANNELS = 2  # windowed CT, vesselness: the stem's prior channels see only zeros


def random_cube_mask(
    shape: Sequence[int], *, cube: int | Sequence[int] = 32, ratio: float = 0.6, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A bool (z, y, x) mask of ``shape``, True = masked, made of whole ``cube``-sided cubes.

    The volume is tiled by cubes starting at the origin (partial cubes at the far ends); exactly
    ``round(ratio * number_of_cubes)`` cubes are masked, chosen by ``generator``.
    """
    shape = tuple(int(s) for s in shape)
    cube = (int(cube),) * 3 if np.isscalar(cube) else tuple(int(c) for c in cube)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} outside [0, 1]")
    grid = tuple(-(-s // c) for s, c in zip(shape, cube, strict=True))
    count = int(np.prod(grid))
    masked = int(round(ratio * count))
    order = torch.randperm(count, generator=generator)
    coarse = torch.zeros(count, dtype=torch.bool)
    coarse[order[:masked]] = True
    coarse = coarse.reshape(grid)
    for axis, c in enumerate(cube):
        coarse = coarse.repeat_interleave(c, dim=axis)
    return coarse[: shape[0], : shape[1], : shape[2]].contiguous()


def _masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, visible: torch.Tensor) -> torch.Tensor:
    """GroupNorm with statistics over visible voxels only (``visible`` (B, 1, ...) float 0/1)."""
    b, c = x.shape[:2]
    g = norm.num_groups
    xg = x.reshape(b, g, c // g, -1)
    v = visible.reshape(b, 1, 1, -1)
    count = (v.sum(dim=(2, 3), keepdim=True) * (c // g)).clamp(min=1.0)
    mean = (xg * v).sum(dim=(2, 3), keepdim=True) / count
    var = (((xg - mean) * v) ** 2).sum(dim=(2, 3), keepdim=True) / count
    out = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    out = out * norm.weight.reshape(shape) + norm.bias.reshape(shape)
    return out * visible


def _sparse_block(block: ResidualBlock, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    y = block.depthwise(x) * visible
    y = _masked_group_norm(y, block.norm, visible)
    y = block.project(block.act(block.expand(y))) * visible
    return (x + block.fuse(torch.cat([y, x], dim=1))) * visible


def _sparse_down(down: DownSample, x: torch.Tensor, visible_coarse: torch.Tensor) -> torch.Tensor:
    y = down.depthwise(x) * visible_coarse
    y = _masked_group_norm(y, down.norm, visible_coarse)
    return down.pointwise(y) * visible_coarse


class MaskedAutoencoder(nn.Module):
    """The encoder of a ``StageNet(config)`` (sparse-emulated) and a light reconstruction decoder.

    ``forward(image, mask)``: ``image`` (B, in_channels, Z, Y, X), ``mask`` (B, Z, Y, X) bool
    (True = masked, cube-aligned); returns the reconstructed windowed CT (B, 1, Z, Y, X).
    ``encode(image, mask)`` returns the encoder features of the five resolutions (full .. 1/16).
    """

    def __init__(self, config: StageConfig) -> None:
        super().__init__()
        self.config = config
        stage = StageNet(config)
        self.stem, self.encoder, self.down, self.bottleneck = stage.stem, stage.encoder, stage.down, stage.bottleneck
        widths = [config.width * min(2**level, config.max_width_factor) for level in range(DOWNSAMPLINGS + 1)]
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, w, 1, 1, 1)) for w in widths)
        self.rec_up = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(DOWNSAMPLINGS))
        self.rec_refine = nn.ModuleList(
            nn.Sequential(nn.Conv3d(w, w, 3, padding=1), nn.GroupNorm(_groups(w), w), nn.GELU()) for w in widths[:-1]
        )
        self.rec_head = nn.Conv3d(widths[0], 1, 1)

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        for axis_size in image.shape[2:]:
            if axis_size % SIZE_MULTIPLE:
                raise ValueError(f"spatial size {tuple(image.shape[2:])} is not a multiple of {SIZE_MULTIPLE}")
        visible = (~mask).unsqueeze(1).to(image.dtype)
        x = self.stem(image * visible) * visible
        features = []
        for level in range(DOWNSAMPLINGS):
            for block in self.encoder[level]:
                x = _sparse_block(block, x, visible)
            features.append(x)
            # cube-aligned masks: every 2x2x2 cell is wholly visible or wholly masked
            visible = nn.functional.max_pool3d(visible, 2)
            x = _sparse_down(self.down[level], x, visible)
        for block in self.bottleneck:
            x = _sparse_block(block, x, visible)
        features.append(x)
        return features

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.encode(image, mask)
        visible = (~mask).unsqueeze(1).to(image.dtype)
        dense = []
        for level, feature in enumerate(features):
            v = visible if level == 0 else nn.functional.max_pool3d(visible, 2**level)
            dense.append(feature * v + self.mask_tokens[level] * (1 - v))
        x = dense[-1]
        for level in reversed(range(DOWNSAMPLINGS)):
            x = self.rec_refine[level](self.rec_up[level](x) + dense[level])
        return self.rec_head(x)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder weights under their ``StageNet`` names (CPU copies)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def masked_l2_loss(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked voxels only: ``reconstruction``, ``target`` (B, 1, ...), ``mask`` (B, ...)."""
    weight = mask.unsqueeze(1).to(reconstruction.dtype)
    return ((reconstruction.float() - target.float()) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


@dataclass
class PretrainConfig:
    stage: dict = field(default_factory=lambda: StageConfig(in_channels=4).to_dict())
    patch: tuple[int, int, int] = (64, 96, 96)  # (z, y, x), multiples of mask_cube
    batch_size: int = 1
    steps: int = 1000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    mask_ratio: float = 0.6
    mask_cube: int = 32
    seed: int = 0
    checkpoint_every: int = 50
    max_minutes: float | None = None
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)

    def stage_config(self) -> StageConfig:
        stage = dict(self.stage)
        stage["blocks_per_level"] = tuple(stage["blocks_per_level"])
        return StageConfig(**stage)


def _random_patch(volume: np.ndarray, patch: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A (C, *patch) float32 crop at a uniform random position (zero-padded where it leaves)."""
    out = np.zeros((volume.shape[0], *patch), np.float32)
    src, dst = [], []
    for size, p in zip(volume.shape[1:], patch, strict=True):
        start = int(rng.integers(0, size - p + 1)) if size >= p else -int(rng.integers(0, p - size + 1))
        src.append(slice(max(start, 0), min(start + p, size)))
        dst.append(slice(max(start, 0) - start, min(start + p, size) - start))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out


def pretrain(
    config: PretrainConfig,
    volumes: Sequence[np.ndarray],
    *,
    output: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    data_description: dict | None = None,
) -> dict:
    """Pre-train the stage encoder on random patches of unlabelled volumes; write ``output``.

    ``volumes``: arrays (2, Z, Y, X) as in ``TrainingCase.image`` (windowed CT in [0, 1],
    vesselness), in the standardized grid; zero prior channels are appended. The checkpoint
    (``hipas_core.sts.checkpoint.save_checkpoint``, the layout of ``hipas_core.training_loop``)
    holds ``kind`` "mae-encoder", ``model_config`` (the ``StageConfig``), ``state_dict`` (encoder
    weights, ``StageNet`` names), ``training_config`` (the ``PretrainConfig``; older files name it
    ``pretrain_config``, read as ``training_config``), ``versions``, ``history``, ``step`` and,
    for ``resume``, ``decoder_state_dict``, ``optimizer``, ``rng`` (numpy, torch and the mask
    generator). Deterministic on the CPU for a seed. Returns the payload without weights.
    Progress as in ``hipas_core.sts.training.train`` (``progress`` False: log lines, no bar).
    ``InvalidInputError`` when ``resume`` finds at ``output`` a file it cannot continue from.
    """
    from hipas_core.progress import Progress
    from hipas_core.sts.checkpoint import FORMAT, load_checkpoint, save_checkpoint
    from hipas_core.training_loop import TrainingRun, cpu_weights, resume_check

    if not volumes:
        raise ValueError("no volumes to pre-train on")
    if config.mask_cube % SIZE_MULTIPLE:
        raise ValueError(f"mask_cube {config.mask_cube} must be a multiple of {SIZE_MULTIPLE}")
    if any(p % config.mask_cube for p in config.patch):
        raise ValueError(f"patch {tuple(config.patch)} must be a multiple of mask_cube {config.mask_cube}")
    stage_config = config.stage_config()
    if stage_config.in_channels < PRETRAINED_INPUT_CHANNELS:
        raise ValueError(f"stage in_channels {stage_config.in_channels} < {PRETRAINED_INPUT_CHANNELS}")
    run = TrainingRun(seed=config.seed, max_minutes=config.max_minutes,
                      generators={"mask": torch.Generator().manual_seed(config.seed)})
    rng, mask_generator = run.rng, run.generators["mask"]
    device = torch.device(config.device)
    model = MaskedAutoencoder(stage_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=tuple(config.betas))
    output = Path(output)
    if resume and output.is_file():
        state = load_checkpoint(output, kind=CHECKPOINT_KIND, require=RESUME_KEYS)
        with resume_check(output):
            model.load_state_dict({**state["state_dict"], **state["decoder_state_dict"]})
        run.resume_from(state, source=output, optimizer=optimizer)
    history = run.history

    def payload(final: bool) -> dict:
        weights = cpu_weights(model)
        return run.payload(
            format=FORMAT, kind=CHECKPOINT_KIND, model_config=stage_config.to_dict(),
            state_dict=model.encoder_state_dict(), training_config=config.to_dict(), optimizer=optimizer,
            finished=final,
            decoder_state_dict={k: v for k, v in weights.items() if not k.startswith(ENCODER_PREFIXES)},
            pretrained_input_channels=PRETRAINED_INPUT_CHANNELS,
            data={"volumes": len(volumes), **(data_description or {})},
        )

    run.start()
    model.train()
    bar = Progress("pretrain mae", total=config.steps, initial=run.step, unit="steps",
                   mode=None if progress else "lines")
    if run.step:
        bar.log(f"pretrain mae: resumed from {output} at step {run.step}/{config.steps}")
    extra = stage_config.in_channels - PRETRAINED_INPUT_CHANNELS
    while run.step < config.steps:
        if run.out_of_time():
            break
        patches, masks = [], []
        for _ in range(config.batch_size):
            volume = volumes[int(rng.integers(len(volumes)))]
            patch = _random_patch(np.asarray(volume[:PRETRAINED_INPUT_CHANNELS]), config.patch, rng)
            patches.append(np.concatenate([patch, np.zeros((extra, *config.patch), np.float32)]))
            masks.append(random_cube_mask(config.patch, cube=config.mask_cube, ratio=config.mask_ratio,
                                          generator=mask_generator))
        image = torch.from_numpy(np.stack(patches)).to(device)
        mask = torch.stack(masks).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = masked_l2_loss(model(image, mask), image[:, :1], mask)
        loss.backward()
        optimizer.step()
        run.step += 1
        history.append({"step": run.step, "loss": float(loss.detach())})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if run.step % config.checkpoint_every == 0:
            save_checkpoint(output, payload(final=False))
            if run.step < config.steps:  # (the last one is reported below)
                bar.log(f"pretrain mae: step {run.step}/{config.steps}, loss {history[-1]['loss']:.4f}, "
                        f"checkpoint {output}")
    bar.close()
    final = payload(final=run.step >= config.steps)
    save_checkpoint(output, final)
    bar.log(f"pretrain mae: step {run.step}/{config.steps}, checkpoint {output} "
            f"({'finished' if final['finished'] else 'stopped early'})")
    return {k: v for k, v in final.items() if k not in ("state_dict", "decoder_state_dict", "optimizer", "rng")}


def _stage_nets(model: nn.Module) -> list[StageNet]:
    if isinstance(model, StageNet):
        return [model]
    stages = getattr(model, "stages", None)
    if stages is not None and all(isinstance(s, StageNet) for s in stages):
        return list(stages)
    raise TypeError(f"{type(model).__name__}: expected a StageNet or an STSCascade")


def _keep_pretrained_inputs(grad: torch.Tensor, channels: int) -> torch.Tensor:
    grad = grad.clone()
    grad[:, :channels] = 0
    return grad


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike, *, freeze: bool = True) -> int:
    """Copy the pre-trained encoder (``stem``, ``encoder``, ``down``, ``bottleneck``) of the
    checkpoint ``path`` into ``model`` (a ``StageNet`` or every stage of an ``STSCascade``).

    With ``freeze`` (the paper: the encoder is fixed, only the decoder is optimised) the encoder
    parameters get ``requires_grad = False``, except the stem's weight: its input channels that
    pre-training never saw (the prior maps of stages 1..3, zero during pre-training) stay
    trainable, the pre-trained ones are held fixed by a gradient mask. The stages are marked so
    ``refreeze_encoders`` can restore this after code that toggles ``requires_grad``.
    Returns the number of stages loaded. ``InvalidInputError`` for a checkpoint that is not a
    pre-trained encoder or does not fit the model.
    """
    from hipas_core.sts.checkpoint import load_checkpoint

    state = load_checkpoint(path, kind=CHECKPOINT_KIND)
    encoder = state["state_dict"]
    channels = int(state.get("pretrained_input_channels", PRETRAINED_INPUT_CHANNELS))
    stages = _stage_nets(model)
    for stage in stages:
        own = stage.state_dict()
        wrong = [k for k, v in encoder.items() if k not in own or own[k].shape != v.shape]
        missing = [k for k in own if k.startswith(ENCODER_PREFIXES) and k not in encoder]
        if wrong or missing:
            raise InvalidInputError(
                f"{path}: encoder does not fit the model (width/blocks differ; first mismatch "
                f"{(wrong or missing)[0]!r}; pre-trained {state.get('model_config')})"
            )
        with torch.no_grad():
            for name, tensor in encoder.items():
                own[name].copy_(tensor)
        stage._hipas_frozen_encoder = bool(freeze)
        if freeze:
            stage.stem.weight.register_hook(lambda grad, c=channels: _keep_pretrained_inputs(grad, c))
    refreeze_encoders(model)
    return len(stages)


def refreeze_encoders(model: nn.Module) -> None:
    """Set ``requires_grad = False`` again on the encoder parameters of stages frozen by
    ``load_pretrained_encoder`` (the stem weight keeps its gradient mask instead)."""
    for stage in _stage_nets(model):
        if not getattr(stage, "_hipas_frozen_encoder", False):
            continue
        for name, parameter in stage.named_parameters():
            if name.startswith(ENCODER_PREFIXES) and name != "stem.weight":
                parameter.requires_grad_(False)


def prepare_unlabelled(
    ct, *, vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM, margin_mm: float = 10.0
) -> np.ndarray:
    """An unlabelled CT (``SimpleITK.Image`` in HU, any grid) as a pre-training volume: the
    standardized grid, cropped to the lungs as ``hipas_core.sts.data.prepare_case`` does (the
    whole volume when no lungs are found), windowed CT and its vesselness; (2, Z, Y, X) float16."""
    import SimpleITK as sitk

    from hipas_core.errors import InvalidScanError
    from hipas_core.lungs import lung_bounding_box
    from hipas_core.normalize import normalize_ct, window
    from hipas_core.sts.data import network_input

    standard, _record = normalize_ct(ct)
    try:
        box = lung_bounding_box(standard, margin_mm=margin_mm)
    except InvalidScanError:
        box = (slice(None),) * 3
    return network_input(window(sitk.GetArrayFromImage(standard)[box]), vesselness_sigmas_mm=vesselness_sigmas_mm)
