"""Training batches: patches drawn from ``TrainingCase``s (vessel-biased sampling, augmentation,
domain randomization with the vesselness recomputed), as the one sequential stream or the
per-patch stream (``TrainConfig.patch_stream``; see ``hipas_core.sts.training``), and the
per-stage targets (levels <= stage) and territories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hipas_core.conventions import ARTERY, LEVEL_OFFSET, STANDARD_SPACING, VEIN
from hipas_core.sts.data import Augmentation, TrainingCase, sample_patch
from hipas_core.sts.train_config import TrainConfig

__all__ = ["collate", "config_augmentation", "draw_patch", "make_batch", "patch_seed_batch", "randomization_halo",
           "stage_targets", "stage_territory"]


def stage_targets(labels: torch.Tensor, levels: torch.Tensor, stage: int) -> torch.Tensor:
    """(B, 2, ...) artery/vein annotation of levels <= stage from labels and levels (B, ...)."""
    keep = (levels >= LEVEL_OFFSET) & (levels <= stage + LEVEL_OFFSET)
    return torch.stack([(labels == ARTERY) & keep, (labels == VEIN) & keep], dim=1).float()


def stage_territory(territory: torch.Tensor, stage: int) -> torch.Tensor:
    return torch.zeros_like(territory[:, 0]) if stage == 0 else territory[:, stage - 1]


def config_augmentation(config: TrainConfig) -> Augmentation:
    return Augmentation(**{**config.augmentation, "flip_axes": tuple(config.augmentation.get("flip_axes", ()))})


def draw_patch(cases, config: TrainConfig, augmentation: Augmentation, rng: np.random.Generator, *, augment: bool,
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
    halo = randomization_halo(config) if randomize else (0, 0, 0)
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


def randomization_halo(config: TrainConfig) -> tuple[int, int, int]:
    """Voxels (z, y, x) cut on each side of a domain-randomized patch and dropped after its
    vesselness is recomputed, so that the patch's vesselness, like the whole-scan vesselness of
    inference, does not see the patch border: 2 sigma of the largest scale (on phantom patches
    the mean difference to the case's own vesselness falls from 0.005 to 0.0001)."""
    sigma_mm = max(config.vesselness_sigmas_mm)
    return tuple(math.ceil(2 * sigma_mm / spacing) for spacing in STANDARD_SPACING)


def collate(items: Sequence[dict], config: TrainConfig) -> dict:
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
    augmentation = config_augmentation(config)
    items = []
    for position in range(config.batch_size):
        sample = draw_patch(cases, config, augmentation, rng, augment=augment, prior_of=prior_of,
                             keep=keep is None or position in keep)
        if sample is not None:
            items.append(sample)
    if not items:
        raise ValueError(f"keep {keep} holds no position of a batch of {config.batch_size}")
    return collate(items, config)


def patch_seed_batch(
    cases: Sequence[TrainingCase], config: TrainConfig, step: int, positions: Sequence[int], *, augment: bool = True,
    prior_of: Callable[[TrainingCase], np.ndarray] | None = None,
):
    """The ``"per-patch"`` stream: the patches at ``positions`` of step ``step`` (0-based), patch i
    drawn from its own generator seeded by (config.seed, step, i)."""
    augmentation = config_augmentation(config)
    items = [draw_patch(cases, config, augmentation, np.random.default_rng([config.seed, step, i]),
                         augment=augment, prior_of=prior_of) for i in positions]
    return collate(items, config)
