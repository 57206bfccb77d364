"""Training of the STS cascade (or the single-stage baseline) on ``TrainingCase`` patches.

Per step: a batch of patches (vessel-biased sampling, augmentation, optional domain randomization
with the vesselness recomputed: ``hipas_core.sts.randomization``), the cascade's per-stage
logits, the loss of eq. 17 for each stage against its own targets (levels <= stage) summed over
stages (``mode="joint"``), or one stage at a time with the earlier stages frozen
(``mode="stagewise"``: the steps are split evenly over the stages; with ``warm_start`` stage s
starts from stage s-1's weights, which on a small compute budget gets the last stage far
further than training it from scratch). The baseline is trained with
plain Dice on the whole trees (plus ``bce_weight`` x cross-entropy when set, the same term the
cascade gets). Adam (paper: lr 1e-4, betas (0.99, 0.999)); AMP (bf16, or fp16
with loss scaling) on CUDA. A checkpoint (model + training config + data + versions + optimizer
+ RNG state) is written every ``checkpoint_every`` steps and at the end; ``resume=True`` continues
from it. For a fixed seed, data and number of steps the run is deterministic on the CPU.
Progress (``hipas_core.progress``): a bar on a terminal (``progress=False``: never a bar), else
log lines every few seconds; a line at every validation and every checkpoint in both cases.

Distributed data-parallel (``hipas_core.sts.distributed``; the caller joins the process group,
``torchrun``/``srun`` + ``hipas train`` do): ``batch_size`` is per rank, a step's global batch is
``world_size x batch_size`` patches and rank r trains on positions r*B..(r+1)*B-1 of it, the
patches one process with the global batch would draw there; DistributedDataParallel averages the
gradients (every loss is a mean over the batch, and the networks normalize per sample with
GroupNorm, so that is the gradient of the global batch). ``patch_stream="sequential"`` (default):
the one numpy stream a single process draws, which every rank advances over the whole global batch
(it cuts and augments the others' patches only as far as their random draws need), so any world
size with the same global batch continues the same stream, a single-process run included;
``"per-patch"``: patch i of step t from its own generator (seed, t, i), each rank draws only its
own (no replay: for many GPUs). Rank 0 alone validates, logs and writes checkpoints; the others
wait for it at a barrier. The logged loss is the mean over the ranks.

A prepared training set (``hipas_core.sts.streaming.PreparedPatches`` as ``patch_source``) gives
the same batches from memory-mapped case folders, drawn in DataLoader worker processes. Every run
writes a CSV log beside the checkpoint (``write_training_log``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hipas_core.conventions import (
    ARTERY,
    DEMO_VESSELNESS_SIGMAS_MM,
    LEVEL_OFFSET,
    STANDARD_SPACING,
    VEIN,
)
from hipas_core.errors import InvalidInputError
from hipas_core.progress import Progress
from hipas_core.sts import distributed
from hipas_core.sts.checkpoint import build_model, error_summary, load_checkpoint, save_checkpoint
from hipas_core.sts.data import Augmentation, TrainingCase, sample_patch
from hipas_core.sts.losses import dice_loss, skeleton_recall_loss, sts_stage_loss
from hipas_core.sts.network import load_matching_weights


@dataclass
class TrainConfig:
    kind: str = "cascade"  # or "baseline"
    model_config: dict = field(default_factory=dict)
    patch: tuple[int, int, int] = (128, 192, 192)  # (z, y, x); paper 192 x 192 x 128
    batch_size: int = 1
    steps: int = 1000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.99, 0.999)
    mode: str = "joint"  # or "stagewise" (cascade only)
    warm_start: bool = True  # stagewise: stage s starts from stage s-1's weights
    stage_steps: tuple[int, ...] | None = None  # stagewise: steps per stage (default: steps split evenly)
    seed: int = 0
    vessel_probability: float = 0.7
    level_weight_cap: float | None = None  # None: eq. 15 exactly
    bce_weight: float = 0.0  # cascade: weight of an added cross-entropy term (0: eq. 17 exactly)
    # "paper": eq. 17 per stage; "dice": plain soft Dice per tree on the stage's targets (levels
    # <= stage) instead of the level-weighted Dice and overlap-cross terms (a CPU-budget recipe:
    # eq. 15 weighs the many level-3 voxels down, so whole-tree Dice rises far more slowly)
    stage_loss: str = "paper"
    # Augmentation's fields as a dict; "domain_randomization" holds the DomainRandomization
    # settings as a dict (hipas_core.sts.randomization; absent or all probabilities 0: off)
    augmentation: dict = field(default_factory=lambda: asdict(Augmentation()))
    val_every: int = 50
    val_patches: int = 4
    checkpoint_every: int = 50
    max_minutes: float | None = None  # stop early (and save) after this wall time
    device: str = "cpu"
    amp: bool = True  # CUDA only
    inference_window: tuple[int, int, int] | None = None  # default: the patch
    inference_overlap: float = 0.25
    vesselness_sigmas_mm: tuple[float, ...] = DEMO_VESSELNESS_SIGMAS_MM
    encoder_init: str | None = None  # a `hipas pretrain` checkpoint copied into every stage's encoder
    freeze_encoder: bool = True  # the paper: encoder fixed when transferred, only the decoder trained
    # stagewise: stage s >= 1 reads P^{s-1} of the frozen stages from a per-case cache, computed
    # over the whole case crop stage by stage (as inference does), instead of running stages
    # 0..s-1 on every patch. Faster (one stage forward per step instead of s + 1); the cached
    # prior sees the case before patch augmentation and domain randomization (flips are applied
    # to it as to the labels).
    cached_priors: bool = False
    # cached_priors: also keep each case's prior on disk here (.npy), named by the case, the stage
    # and a digest of the frozen stages' weights, so a resumed or repeated run reads it instead of
    # recomputing it (None: in memory only)
    prior_cache_dir: str | None = None
    # weight of the Skeleton Recall loss (Kirchhoff et al., ECCV 2024) added to each trained
    # stage's (or the baseline's) loss, on the tubed centrelines of that stage's targets (0: off)
    skeleton_recall_weight: float = 0.0
    # start from this checkpoint's weights (same kind; tensors matched by name, residual blocks it
    # lacks start as identities: hipas_core.sts.network.load_matching_weights). Every stage then
    # counts as started, so stagewise warm start never overwrites a trained stage.
    init_from: str | None = None
    # "constant", or "poly": lr x (1 - step / steps) ** 0.9 (nnU-Net's schedule), so the last
    # steps refine instead of jumping around the minimum
    lr_schedule: str = "constant"
    # weights and batches in channels-last 3D memory format (about 15 % faster steps on this
    # project's CPU under oneDNN; numerically equivalent, not bit-identical)
    channels_last: bool = False
    # where each step's patches come from: "sequential" (one numpy stream over the global batch,
    # as a single process draws it) or "per-patch" (patch i of step t from its own generator
    # (seed, t, i): distributed ranks draw only their own patches)
    patch_stream: str = "sequential"

    def __post_init__(self) -> None:
        if self.patch_stream not in ("sequential", "per-patch"):
            raise ValueError(f"patch_stream must be 'sequential' or 'per-patch', not {self.patch_stream!r}")
        if self.stage_loss not in ("paper", "dice"):
            raise ValueError(f"stage_loss must be 'paper' or 'dice', not {self.stage_loss!r}")
        if self.lr_schedule not in ("constant", "poly"):
            raise ValueError(f"lr_schedule must be 'constant' or 'poly', not {self.lr_schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _stage_targets(labels: torch.Tensor, levels: torch.Tensor, stage: int) -> torch.Tensor:
    """(B, 2, ...) artery/vein annotation of levels <= stage from labels and levels (B, ...)."""
    keep = (levels >= LEVEL_OFFSET) & (levels <= stage + LEVEL_OFFSET)
    return torch.stack([(labels == ARTERY) & keep, (labels == VEIN) & keep], dim=1).float()


def _territory(territory: torch.Tensor, stage: int) -> torch.Tensor:
    return torch.zeros_like(territory[:, 0]) if stage == 0 else territory[:, stage - 1]


def _augmentation(config: TrainConfig) -> Augmentation:
    return Augmentation(**{**config.augmentation, "flip_axes": tuple(config.augmentation.get("flip_axes", ()))})


def _draw_patch(cases, config: TrainConfig, augmentation: Augmentation, rng: np.random.Generator, *, augment: bool,
                prior_of=None, keep: bool = True) -> dict | None:
    """One patch drawn from ``rng``; ``keep`` False: only the random draws (the same ones), no
    prior, centrelines or target flips, and None is returned (another rank's patch)."""
    case = cases[int(rng.integers(len(cases)))]
    if augment:  # a CTPA case may be swapped for its synthetic NCCT (draws rng only when enabled)
        case = augmentation.pick_case(case, rng, vesselness_sigmas_mm=config.vesselness_sigmas_mm)
    # With cached priors the frozen stages' prior is computed once per case on the un-augmented
    # (and un-randomized) image, so the trained stage sees a randomized CT next to a prior made
    # from the clean one. Accepted: recomputing the prior per patch is what cached priors avoid.
    extra = {"prior": prior_of(case)} if prior_of is not None and keep else {}
    if config.skeleton_recall_weight and keep:
        extra["skeleton"] = case.centrelines()
    randomize = augment and augmentation.domain_randomization.enabled
    if randomize and keep:  # cut and flipped with the labels; used by the randomization only
        extra["lungs"] = case.lungs
    halo = _randomization_halo(config) if randomize else (0, 0, 0)
    size = tuple(p + 2 * h for p, h in zip(config.patch, halo, strict=True))
    sample = sample_patch(case, size, rng, vessel_probability=config.vessel_probability, extra=extra)
    if augment:
        keys = ["labels", "levels", "territory", *extra] if keep else []  # targets draw nothing from rng
        image, targets = augmentation.apply(sample["image"], [sample[k] for k in keys], rng)
        sample.update(image=image, **dict(zip(keys, targets, strict=True)))
    if randomize:  # after the flips, on the flipped labels; vesselness recomputed from the new CT
        lungs = sample.pop("lungs", None)
        sample["image"] = augmentation.randomize_domain(
            sample["image"], sample["labels"] if keep else None, rng, lungs=lungs,
            vesselness_sigmas_mm=config.vesselness_sigmas_mm)
        if keep:
            inner = tuple(slice(h, h + p) for h, p in zip(halo, config.patch, strict=True))
            sample = {key: value if key == "weights" else np.ascontiguousarray(value[(..., *inner)])
                      for key, value in sample.items()}
    return sample if keep else None


def _randomization_halo(config: TrainConfig) -> tuple[int, int, int]:
    """Voxels (z, y, x) cut on each side of a domain-randomized patch and dropped after its
    vesselness is recomputed, so that the patch's vesselness, like the whole-scan vesselness of
    inference, does not see the patch border: 2 sigma of the largest scale (on phantom patches
    the mean difference to the case's own vesselness falls from 0.005 to 0.0001)."""
    sigma_mm = max(config.vesselness_sigmas_mm)
    return tuple(math.ceil(2 * sigma_mm / spacing) for spacing in STANDARD_SPACING)


def _collate(items: Sequence[dict], config: TrainConfig) -> dict:
    batch = {key: torch.from_numpy(np.stack([it[key] for it in items])) for key in items[0]}
    if config.level_weight_cap is not None:
        batch["weights"] = batch["weights"].clamp(max=config.level_weight_cap)
    return batch


def make_batch(
    cases: Sequence[TrainingCase], config: TrainConfig, rng: np.random.Generator, *, augment: bool = True,
    prior_of: Callable[[TrainingCase], np.ndarray] | None = None, keep: range | None = None,
):
    """Sample ``config.batch_size`` patches; returns a dict of CPU tensors. With ``prior_of`` (case
    -> (2, Z, Y, X) prior map of the frozen stages) the batch also holds that map's patches
    (``"prior"``). ``keep``: the positions the batch holds (a rank's share of a global batch of
    ``config.batch_size``); ``rng`` is advanced over all of them as without ``keep``."""
    augmentation = _augmentation(config)
    items = []
    for position in range(config.batch_size):
        sample = _draw_patch(cases, config, augmentation, rng, augment=augment, prior_of=prior_of,
                             keep=keep is None or position in keep)
        if sample is not None:
            items.append(sample)
    if not items:
        raise ValueError(f"keep {keep} holds no position of a batch of {config.batch_size}")
    return _collate(items, config)


def patch_seed_batch(
    cases: Sequence[TrainingCase], config: TrainConfig, step: int, positions: Sequence[int], *, augment: bool = True,
    prior_of: Callable[[TrainingCase], np.ndarray] | None = None,
):
    """The ``"per-patch"`` stream: the patches at ``positions`` of step ``step`` (0-based), patch i
    drawn from its own generator seeded by (config.seed, step, i)."""
    augmentation = _augmentation(config)
    items = [_draw_patch(cases, config, augmentation, np.random.default_rng([config.seed, step, i]),
                         augment=augment, prior_of=prior_of) for i in positions]
    return _collate(items, config)


class _Objective(torch.nn.Module):
    """``batch_loss`` as a module's forward, so that DistributedDataParallel runs it (whichever
    of the model's methods the loss calls) and syncs the gradients of what it reaches."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, batch: dict, stages: Sequence[int] | None = None) -> torch.Tensor:
        return batch_loss(self.model, batch, self.config, stages=stages)
def _dice_and_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bce_weight: float) -> torch.Tensor:
    loss = dice_loss(logits, target)
    if bce_weight:
        loss = loss + bce_weight * torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    return loss


def _skeleton_recall(logits: torch.Tensor, batch: dict, config: TrainConfig, stage: int) -> torch.Tensor:
    """config.skeleton_recall_weight x Skeleton Recall on the centrelines of the stage's targets."""
    if not config.skeleton_recall_weight:
        return logits.new_zeros(())
    keep = (batch["levels"] >= 1) & (batch["levels"] <= stage + 1)
    skeleton = torch.where(keep, batch["skeleton"], torch.zeros_like(batch["skeleton"]))
    return config.skeleton_recall_weight * skeleton_recall_loss(logits, skeleton)


def batch_loss(model: torch.nn.Module, batch: dict, config: TrainConfig, *, stages: Sequence[int] | None = None) -> torch.Tensor:
    """The training loss of one batch (already on the model's device)."""
    if config.kind == "baseline":  # the cascade's added cross-entropy too, for a like-for-like comparison
        target = _stage_targets(batch["labels"], batch["levels"], 3)
        logits = model(batch["image"])
        return _dice_and_cross_entropy(logits, target, config.bce_weight) + _skeleton_recall(logits, batch, config, 3)
    if "prior" in batch:  # stagewise with cached priors: only the stage being trained runs
        (stage,) = stages
        outputs = {stage: model.forward_stage(stage, batch["image"], batch["prior"])}
    else:
        outputs = model(batch["image"], last_stage=None if stages is None else max(stages))
        stages = range(len(outputs)) if stages is None else stages
    loss = batch["image"].new_zeros(())
    for stage in stages:
        loss = loss + _skeleton_recall(outputs[stage], batch, config, stage)
        if config.stage_loss == "dice":
            target = _stage_targets(batch["labels"], batch["levels"], stage)
            loss = loss + _dice_and_cross_entropy(outputs[stage], target, config.bce_weight)
            continue
        loss = loss + sts_stage_loss(
            outputs[stage], _stage_targets(batch["labels"], batch["levels"], stage),
            _territory(batch["territory"], stage), batch["weights"], max_level=stage, bce_weight=config.bce_weight,
        )
    return loss


def final_logits(model: torch.nn.Module, image: torch.Tensor, kind: str) -> torch.Tensor:
    out = model(image)
    return out[-1] if kind == "cascade" else out


@torch.no_grad()
def validation_dice(model: torch.nn.Module, batches: Sequence[dict], config: TrainConfig) -> tuple[float, float]:
    """Hard Dice (threshold 0.5) of artery and vein on fixed validation patches (pooled voxels)."""
    model.eval()
    inter = np.zeros(2)
    total = np.zeros(2)
    for batch in batches:
        image = batch["image"].to(config.device)
        pred = torch.sigmoid(final_logits(model, image, config.kind).float()) > 0.5
        truth = _stage_targets(batch["labels"], batch["levels"], 3).to(config.device) > 0.5
        inter += (pred & truth).sum(dim=(0, 2, 3, 4)).cpu().numpy()
        total += (pred.sum(dim=(0, 2, 3, 4)) + truth.sum(dim=(0, 2, 3, 4))).cpu().numpy()
    model.train()
    dice = 2 * inter / np.maximum(total, 1)
    return float(dice[0]), float(dice[1])


def _cached_prior(model, cache: dict, case: TrainingCase, *, config: TrainConfig, device, autocast) -> np.ndarray:
    """P^{s-1} over the whole crop of ``case`` from the frozen stages 0..s-1 (s = cache["stage"]),
    computed once per case and stage with the inference window and overlap; with
    ``config.prior_cache_dir`` read from (or written to) disk as well."""
    if case.name not in cache:
        path = _prior_path(model, cache, case, config=config, device=device)
        if path is not None and path.is_file():
            try:
                cache[case.name] = np.load(path)
                return cache[case.name]
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
        from hipas_core.sts.cascade import cascade_probabilities
        from hipas_core.sts.sliding_window import fitted_window, sliding_window_predict

        window = tuple(config.inference_window or config.patch)
        device_type, dtype, enabled = autocast

        def slide(fn, volume):
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled):
                return sliding_window_predict(fn, volume, window=fitted_window(window, tuple(volume.shape[1:])),
                                              overlap=config.inference_overlap, out_channels=2)

        image = torch.from_numpy(case.image.astype(np.float32)).to(device)
        probs = cascade_probabilities(model, image, slide=slide, last_stage=cache["stage"] - 1)
        cache[case.name] = probs.cpu().numpy().astype(np.float16)
        if path is not None:
            from hipas_core.atomic import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, cache[case.name])
    return cache[case.name]


def _prior_path(model, cache: dict, case: TrainingCase, *, config: TrainConfig, device) -> Path | None:
    """Where the prior of ``case`` lies on disk: named by the case, the stage, and a digest of
    what it depends on (the frozen stages and transmissions, window, overlap, device type);
    None without ``config.prior_cache_dir``."""
    if config.prior_cache_dir is None:
        return None
    if "digest" not in cache:
        import hashlib

        stage = cache["stage"]
        digest = hashlib.sha256()
        frozen = [*model.stages[:stage], *model.transmissions[:stage - 1]]
        for module in frozen:
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        window = tuple(config.inference_window or config.patch)
        digest.update(repr((window, config.inference_overlap, torch.device(device).type)).encode())
        cache["digest"] = digest.hexdigest()[:16]
    return Path(config.prior_cache_dir) / f"{case.name}-prior{cache['stage']}-{cache['digest']}.npy"


def training_log_path(checkpoint: str | os.PathLike) -> Path:
    """The CSV training log beside a checkpoint: ``run.pt`` -> ``run.log.csv``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.log.csv")


def write_training_log(path: str | os.PathLike, history: Sequence[dict], throughput: Sequence[dict], *,
                       global_batch: int) -> None:
    """Write (atomically) one CSV row per step: ``step``, ``loss``, ``val_dice_artery``,
    ``val_dice_vein`` (empty where not validated), ``patches_per_s`` (the global batch over the
    step's wall time: waiting for the batch, moving it to the device, forward, backward, update;
    validation and checkpoints are not counted) and ``data_wait_fraction`` (the share of that
    time spent waiting for the batch)."""
    import csv
    import io

    from hipas_core.atomic import write_text

    timing = {int(t["step"]): t for t in throughput}
    columns = ("step", "loss", "val_dice_artery", "val_dice_vein", "patches_per_s", "data_wait_fraction")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in history:
        times = timing.get(int(record["step"]))
        seconds = times["seconds"] if times else None
        writer.writerow([
            record["step"], f"{record['loss']:.6g}",
            *(f"{record[k]:.6g}" if k in record else "" for k in ("val_dice_artery", "val_dice_vein")),
            f"{global_batch / seconds:.4g}" if seconds else "",
            f"{times['data_seconds'] / seconds:.4f}" if seconds else "",
        ])
    write_text(path, buffer.getvalue())


def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def train(
    config: TrainConfig,
    cases: Sequence[TrainingCase],
    *,
    output: str | os.PathLike,
    validation_cases: Sequence[TrainingCase] = (),
    data_description: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    patch_source=None,
) -> dict:
    """Train and write the checkpoint ``output``; returns the final checkpoint payload (no weights).

    ``cases``: training cases; ``validation_cases``: for the validation Dice shown in the
    progress bar (fixed patches; the training cases are used when none are given). ``progress``
    False: log lines only, no bar. ``patch_source``: where the training batches come from instead
    of drawing them from ``cases`` in this process (``hipas_core.sts.streaming.PreparedPatches``:
    the same patches, from memory-mapped case folders in DataLoader workers; ``cases`` are then
    those folders' memory-mapped cases). Beside ``output`` a CSV log (``training_log_path``) gets
    step, loss, validation Dice, patches/s and the share of the step spent waiting for data.
    ``InvalidInputError`` when ``init_from``, ``encoder_init`` or (with ``resume``) ``output`` is
    not a checkpoint this run can start from; nothing is written then.

    In a process group (``hipas_core.sts.distributed.setup``) every rank calls this with the same
    arguments (``config.device`` its own device); rank 0 writes ``output``, every rank returns the
    same summary.
    """
    from hipas_core.provenance import package_versions

    if not cases:
        raise ValueError("no training cases")
    if config.cached_priors and (config.kind != "cascade" or config.mode != "stagewise"):
        raise ValueError("cached_priors needs a cascade trained stagewise")
    if patch_source is not None:
        patch_source.check(config)
    rank, world = distributed.world()
    main = rank == 0
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    model = build_model(config.kind, config.model_config).to(device)
    if config.encoder_init:  # MAE pre-training transfer, before the optimizer and any resume state
        from hipas_core.sts.pretrain import load_pretrained_encoder

        load_pretrained_encoder(model, config.encoder_init, freeze=config.freeze_encoder)
    step, history, elapsed_before, warm_started = 0, [], 0.0, []
    throughput: list[dict] = []  # per step: seconds of the step and of its wait for data
    if config.init_from:
        initial = load_checkpoint(config.init_from)
        if initial.get("kind") != config.kind:
            raise InvalidInputError(f"{config.init_from}: a {initial.get('kind')} checkpoint cannot start a {config.kind}")
        try:
            load_matching_weights(model, initial["state_dict"])
        except ValueError as error:
            raise InvalidInputError(f"{config.init_from}: does not fit the model ({error})") from None
        if config.kind == "cascade":
            warm_started = list(range(1, len(model.stages)))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=tuple(config.betas))
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    output = Path(output)
    if resume and output.is_file():
        state = load_checkpoint(output, kind=config.kind)
        try:
            model.load_state_dict(state["state_dict"])
            if "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
                for group in optimizer.param_groups:  # a resumed run may lower the learning rate
                    group["lr"], group["betas"] = config.lr, tuple(config.betas)
            step, history = int(state.get("step", 0)), list(state.get("history", []))
            throughput = list(state.get("throughput", []))
            elapsed_before = float(state.get("train_seconds", 0.0))
            warm_started = list(state.get("warm_started", []))
            if "rng" in state:
                rng.bit_generator.state = state["rng"]["numpy"]
                torch.set_rng_state(state["rng"]["torch"])
            first_batch = state.get("training_config", {}).get("batch_size", config.batch_size)
            resumed_from = dict(state.get("distributed", {"world_size": 1, "global_batch": first_batch}))
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
            raise InvalidInputError(f"{output}: cannot resume from this checkpoint ({error_summary(error)})") from None
    else:
        resumed_from = None
    global_config = config if world == 1 else TrainConfig(**{**config.to_dict(), "batch_size": world * config.batch_size})
    positions = distributed.rank_positions(rank, world, config.batch_size)
    val_rng = np.random.default_rng(config.seed + 1_000_003)
    val_source = list(validation_cases) or list(cases)
    val_config = TrainConfig(**{**config.to_dict(), "batch_size": 1})
    val_batches = ([make_batch(val_source, val_config, val_rng, augment=False) for _ in range(config.val_patches)]
                   if main else [])  # only rank 0 validates

    stage_count = len(model.stages) if config.kind == "cascade" else 1
    per_stage = math.ceil(config.steps / stage_count)
    if config.kind == "cascade" and config.mode == "stagewise" and config.stage_steps:
        if len(config.stage_steps) != stage_count or sum(config.stage_steps) != config.steps:
            raise ValueError(f"stage_steps {tuple(config.stage_steps)} must give {stage_count} counts summing to steps")
        stage_ends = np.cumsum(config.stage_steps)
    else:
        stage_ends = np.array([per_stage * (i + 1) for i in range(stage_count)])

    def payload(final: bool) -> dict:
        inference_window = config.inference_window or config.patch
        return {
            "kind": config.kind,
            "model_config": model.config.to_dict(),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "inference": {
                "window": list(inference_window), "overlap": config.inference_overlap,
                "thresholds": [0.5, 0.5], "vesselness_sigmas_mm": list(config.vesselness_sigmas_mm),
            },
            "training_config": config.to_dict(),
            "data": data_description or {"cases": [c.name for c in cases]},
            "validation_cases": [c.name for c in validation_cases],
            "versions": package_versions(),
            "history": history,
            "throughput": throughput,
            "step": step,
            "finished": final,
            "warm_started": list(warm_started),
            "train_seconds": elapsed_before + (time.monotonic() - started),
            # what the training time was measured on (the CLI's --threads / --device)
            "train_device": {"device": str(device), "threads": torch.get_num_threads()},
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(rng),
            # the patch stream continues from "rng" (sequential) or the step (per-patch) on any
            # number of ranks; the same global batch continues it exactly
            **({"distributed": {"world_size": world, "batch_per_rank": config.batch_size,
                                "global_batch": world * config.batch_size}} if world > 1 else {}),
        }

    def save(payload_now: dict | None) -> None:  # rank 0 writes, the others wait until it has
        if main:
            save_checkpoint(output, payload_now)
            write_training_log(training_log_path(output), history, throughput,
                               global_batch=world * config.batch_size)
        distributed.barrier()

    prior_cache: dict = {}  # cached_priors: {"stage": s, case name: P^{s-1} (2, Z, Y, X) float16}
    started = time.monotonic()
    model.train()
    bar = Progress(f"train {config.kind}", total=config.steps, initial=step, unit="steps",
                   mode=("off" if not main else None if progress else "lines"))
    if world > 1:
        bar.log(f"train {config.kind}: {world} ranks ({'nccl' if device.type == 'cuda' else 'gloo'}), "
                f"{config.batch_size} patches per rank, global batch {world * config.batch_size}, "
                f"{config.patch_stream} patch stream")
    if step:
        bar.log(f"train {config.kind}: resumed from {output} at step {step}/{config.steps}")
        if resumed_from is not None and resumed_from.get("global_batch") != world * config.batch_size:
            bar.log(f"train {config.kind}: the checkpoint's global batch was {resumed_from.get('global_batch')}, "
                    f"now {world * config.batch_size}: the patch stream goes on, but not as the first run's would")
    val = (float("nan"), float("nan"))
    stopped_early = False
    ddp, ddp_key = None, None  # DistributedDataParallel over the parameters trained now (world > 1)
    objective = _Objective(model, config) if world > 1 else None
    stream = (patch_source.batches(config, global_config, first_step=step, rng=rng, positions=positions)
              if patch_source is not None else None)
    while step < config.steps:
        if config.max_minutes is not None:
            late = (time.monotonic() - started) / 60 > config.max_minutes
            if world > 1:  # every rank stops at the same step when any one is out of time
                late = distributed.all_sum([float(late)], device)[0] > 0
            if late:
                stopped_early = True
                break
        stages = None
        if config.kind == "cascade" and config.mode == "stagewise":
            current = min(int(np.searchsorted(stage_ends, step, side="right")), stage_count - 1)
            stages = [current]
            # stages reached for the first time start from their predecessor (in order, so a
            # schedule that jumps over a stage still hands the trained weights on)
            for later in range(1, current + 1) if config.warm_start else ():
                if later not in warm_started:
                    load_matching_weights(model.stages[later], model.stages[later - 1].state_dict())
                    warm_started.append(later)
            for index, stage_net in enumerate(model.stages):
                stage_net.requires_grad_(index == current)
            for index, transmission in enumerate(model.transmissions):
                transmission.requires_grad_(index + 1 == current)
            if config.encoder_init and config.freeze_encoder:  # MAE transfer: keep encoders frozen
                from hipas_core.sts.pretrain import refreeze_encoders

                refreeze_encoders(model)
        prior_of = None
        if config.cached_priors and stages is not None and stages[0] >= 1:
            if prior_cache.get("stage") != stages[0]:  # the frozen stages changed: recompute lazily
                prior_cache.clear()
                prior_cache["stage"] = stages[0]
            prior_of = partial(_cached_prior, model, prior_cache, config=config, device=device,
                               autocast=(device.type, amp_dtype, use_amp))
        step_started = time.perf_counter()
        if stream is not None:
            cpu_batch, stream_state = next(stream)
            if stream_state is not None:  # the sequential stream's generator, where it now stands
                rng.bit_generator.state = stream_state
        elif config.patch_stream == "per-patch":
            cpu_batch = patch_seed_batch(cases, config, step, positions, prior_of=prior_of)
        elif world == 1:
            cpu_batch = make_batch(cases, config, rng, prior_of=prior_of)
        else:  # the whole global batch's draws, this rank's patches
            cpu_batch = make_batch(cases, global_config, rng, prior_of=prior_of, keep=positions)
        data_seconds = time.perf_counter() - step_started
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        if world > 1:  # (re)wrap when the trained parameters change (stagewise: a new stage)
            key = tuple(p.requires_grad for p in model.parameters())
            if key != ddp_key:
                ddp, ddp_key = distributed.wrap(objective, device, previous=ddp), key
        if config.channels_last:
            for key in ("image", "prior"):
                if key in batch:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last_3d)
        if config.lr_schedule == "poly":
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1 - step / config.steps) ** 0.9
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            loss = batch_loss(model, batch, config, stages=stages) if ddp is None else ddp(batch, stages=stages)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        record = {"step": step, "loss": float(loss.detach())}
        throughput.append({"step": step, "seconds": time.perf_counter() - step_started, "data_seconds": data_seconds})
        validate = step % config.val_every == 0 or step == config.steps
        if validate and main:
            val = validation_dice(model, val_batches, config)
        if world > 1:  # the mean loss over the ranks, and rank 0's validation for every rank
            total = distributed.all_sum([record["loss"], *(val if validate and main else (0.0, 0.0))], device)
            record["loss"] = total[0] / world
            if validate:
                val = (total[1], total[2])
        if validate:
            record.update(val_dice_artery=val[0], val_dice_vein=val[1])
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", dsc_a=f"{val[0]:.3f}", dsc_v=f"{val[1]:.3f}")
        if "val_dice_artery" in record:
            bar.log(f"train {config.kind}: step {step}/{config.steps}, loss {record['loss']:.4f}, "
                    f"validation Dice artery {val[0]:.3f} vein {val[1]:.3f}")
        if step % config.checkpoint_every == 0:
            save(payload(final=False) if main else None)
            if step < config.steps:  # (the last one is reported below)
                bar.log(f"train {config.kind}: step {step}/{config.steps}, checkpoint {output}")
    bar.close()
    del stream  # ends the loader's worker processes
    if stopped_early:
        bar.log(f"train {config.kind}: stopped after {config.max_minutes:g} min at step {step}/{config.steps}")
    if stopped_early and config.kind == "cascade" and config.mode == "stagewise" and config.warm_start:
        # a run stopped before the last stage still ends with a usable cascade: stages never
        # reached carry their predecessor's weights, as warm start would have given them
        for later in range(1, stage_count):
            if later not in warm_started:
                load_matching_weights(model.stages[later], model.stages[later - 1].state_dict())
                warm_started.append(later)
    if stopped_early and (not history or "val_dice_artery" not in history[-1]):
        val = validation_dice(model, val_batches, config) if main else (0.0, 0.0)
        if world > 1:
            val = tuple(distributed.all_sum(val, device))
        if history:
            history[-1].update(val_dice_artery=val[0], val_dice_vein=val[1])
    final = payload(final=True)
    final["stopped_early"] = stopped_early
    save(final)
    bar.log(f"train {config.kind}: step {step}/{config.steps}, checkpoint {output} ({'stopped early' if stopped_early else 'finished'})")
    return {k: v for k, v in final.items() if k not in ("state_dict", "optimizer", "rng")}
