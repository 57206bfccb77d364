"""The training loss of a batch (eq. 17 per stage, or plain Dice; cross-entropy and Skeleton
Recall added as configured) and the validation Dice on fixed patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hipas_core.sts.batches import stage_targets, stage_territory
from hipas_core.sts.losses import dice_loss, skeleton_recall_loss, sts_stage_loss
from hipas_core.sts.train_config import TrainConfig

__all__ = ["Objective", "batch_loss", "final_logits", "validation_dice"]


class Objective(torch.nn.Module):
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
        target = stage_targets(batch["labels"], batch["levels"], 3)
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
            target = stage_targets(batch["labels"], batch["levels"], stage)
            loss = loss + _dice_and_cross_entropy(outputs[stage], target, config.bce_weight)
            continue
        loss = loss + sts_stage_loss(
            outputs[stage], stage_targets(batch["labels"], batch["levels"], stage),
            stage_territory(batch["territory"], stage), batch["weights"], max_level=stage, bce_weight=config.bce_weight,
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
        truth = stage_targets(batch["labels"], batch["levels"], 3).to(config.device) > 0.5
        inter += (pred & truth).sum(dim=(0, 2, 3, 4)).cpu().numpy()
        total += (pred.sum(dim=(0, 2, 3, 4)) + truth.sum(dim=(0, 2, 3, 4))).cpu().numpy()
    model.train()
    dice = 2 * inter / np.maximum(total, 1)
    return float(dice[0]), float(dice[1])
