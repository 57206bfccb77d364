"""STS losses: level-weighted Dice (paper eq. 13-15) and overlap-cross loss (eq. 16, 17).

Reading of the equations (documented because the paper leaves parts implicit):

* ``P·T`` is the voxel-wise product summed over the patch, ``P + T`` the sum of both maps. The
  paper writes the Dice ratio without the usual factor 2, so a perfect term is 1/2; we keep that.
  A smoothing ``eps`` is added as ``(P·T + eps) / (P + T + 2 eps)`` so an empty term with an
  empty prediction is also 1/2 (perfect), never 0/0.
* ``T^i`` is the tree's annotation of levels <= i, ``ΔT^i = T^i - T^{i-1}`` its voxels of level
  exactly i (eq. 14). The network gives one probability map P per tree, so ``P^i`` is read as
  P restricted to the *territory* of levels <= i: every voxel belongs to the level of its
  nearest annotated vessel voxel (either tree; see ``level_territories``), and
  ``ΔP^i = P^i - P^{i-1}`` is P on the territory of level i. False positives are therefore
  charged to the level whose region they lie in.
* ``w^i = V(T^0) / V(ΔT^i)`` (eq. 15) uses voxel counts of the whole annotated scan (a patch
  often holds no level-0 vessel, which would make every weight 0). A term whose ``ΔT^i`` is
  empty in the whole scan is dropped.
* For stage s only levels <= s exist (targets of higher levels are removed, their voxels join
  the territory of the nearest remaining level), so the sum of eq. 13 runs to s.
* Eq. 16 ``(P_A·T_V + P_V·T_A) / (P + T)`` with ``P = ΣP_A + ΣP_V`` and ``T = ΣT_A + ΣT_V``,
  on the stage's targets. Eq. 17: total = L_DSC(artery) + L_DSC(vein) + L_overlap.

Tensors: probabilities and targets (B, Z, Y, X) or (B, 2, Z, Y, X) in [0, 1]; territories
(B, Z, Y, X) integer levels 0..3; weights (B, 4) (entry 0 unused, w^0 = 1).
"""

from __future__ import annotations

import numpy as np
import torch

from hipas_core.conventions import ARTERY, LEVEL_VALUES, LEVELS, VEIN

EPS = 1.0


def _ratio(p: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """(Σ p t + eps) / (Σ p + Σ t + 2 eps) per sample: (B, ...) -> (B,)."""
    dims = tuple(range(1, p.ndim))
    return ((p * t).sum(dims) + eps) / (p.sum(dims) + t.sum(dims) + 2 * eps)


def level_weighted_dice_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    territory: torch.Tensor,
    weights: torch.Tensor,
    *,
    max_level: int,
    eps: float = EPS,
) -> torch.Tensor:
    """Eq. 13 for one tree: ``-(D(P^0, T^0) + Σ_{i=1..max_level} w^i D(ΔP^i, ΔT^i))``, mean over batch.

    ``prob`` (B, Z, Y, X) probabilities; ``target`` (B, Z, Y, X) 0/1 annotation of levels
    <= max_level; ``territory`` (B, Z, Y, X) level 0..max_level of each voxel; ``weights``
    (B, 4) w^i (0 drops a term).
    """
    total = prob.new_zeros(prob.shape[0])
    for level in range(max_level + 1):
        region = (territory == level).to(prob.dtype)
        term = _ratio(prob * region, target * region, eps)
        weight = prob.new_ones(prob.shape[0]) if level == 0 else weights[:, level].to(prob.dtype)
        total = total + weight * term
    return -total.mean()


def overlap_cross_loss(prob: torch.Tensor, target: torch.Tensor, *, eps: float = EPS) -> torch.Tensor:
    """Eq. 16: ``Σ(P_A T_V + P_V T_A) / (ΣP + ΣT)``; ``prob``, ``target`` (B, 2, Z, Y, X), mean over batch."""
    dims = tuple(range(1, prob.ndim))
    cross = (prob[:, 0] * target[:, 1] + prob[:, 1] * target[:, 0]).sum(dims[:-1])
    return (cross / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def sts_stage_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    territory: torch.Tensor,
    weights: torch.Tensor,
    *,
    max_level: int,
    bce_weight: float = 0.0,
) -> torch.Tensor:
    """Eq. 17 for one stage: level-weighted Dice of artery and of vein plus overlap-cross.

    ``logits`` (B, 2, Z, Y, X); ``target`` (B, 2, Z, Y, X) artery/vein of levels <= max_level;
    ``territory`` (B, Z, Y, X); ``weights`` (B, 2, 4) per tree. ``bce_weight`` > 0 adds voxel-wise
    binary cross-entropy (not in the paper; 0 = eq. 17 exactly): on a tiny CPU budget the Dice
    terms alone let a stage flood one class with saturated probabilities (zero gradient), which
    the cross-entropy prevents.
    """
    prob = torch.sigmoid(logits.float())
    target = target.float()
    loss = overlap_cross_loss(prob, target)
    if bce_weight:
        loss = loss + bce_weight * torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    for tree in range(2):
        loss = loss + level_weighted_dice_loss(
            prob[:, tree], target[:, tree], territory, weights[:, tree], max_level=max_level
        )
    return loss


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = EPS) -> torch.Tensor:
    """Plain soft Dice loss ``1 - (2ΣPT + eps)/(ΣP + ΣT + eps)``, mean over batch and the two classes."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    dims = tuple(range(2, prob.ndim))
    dice = (2 * (prob * target).sum(dims) + eps) / (prob.sum(dims) + target.sum(dims) + eps)
    return 1 - dice.mean()


def skeleton_recall_loss(logits: torch.Tensor, skeleton: torch.Tensor, *, eps: float = EPS) -> torch.Tensor:
    """Skeleton Recall (Kirchhoff et al., ECCV 2024): ``1 - (Σ P·S + eps) / (Σ S + eps)`` per tree,
    mean over batch and trees. ``logits`` (B, 2, Z, Y, X); ``skeleton`` (B, Z, Y, X) the tubed
    centrelines of the targets (0 none, 1 artery, 2 vein; ``hipas_core.sts.data.tubed_skeleton``).
    A tree with no centreline in the patch scores 1 (no loss). Only recall is charged, so thin
    vessels the network misses cost as much per centreline voxel as thick ones."""
    prob = torch.sigmoid(logits.float())
    target = torch.stack([skeleton == ARTERY, skeleton == VEIN], dim=1).to(prob.dtype)
    dims = tuple(range(2, prob.ndim))
    recall = ((prob * target).sum(dims) + eps) / (target.sum(dims) + eps)
    return 1 - recall.mean()


def level_weights(levels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """w^i of eq. 15 per tree from a whole annotated scan: (2, 4) float32, w^0 = 1.

    ``levels`` (Z, Y, X) 0 background, 1..4 = level 0..3; ``labels`` 1 artery, 2 vein.
    A level absent from the scan (or a scan with no level-0 vessel) gets weight 0.
    """
    weights = np.zeros((2, len(LEVELS)), dtype=np.float32)
    first, last = LEVEL_VALUES[0], LEVEL_VALUES[-1]
    for tree, value in enumerate((ARTERY, VEIN)):
        in_tree = labels == value
        counts = np.bincount(levels[in_tree].ravel(), minlength=last + 1)[first : last + 1].astype(np.float64)
        weights[tree, 0] = 1.0
        for level in LEVELS[1:]:
            if counts[level] > 0 and counts[0] > 0:
                weights[tree, level] = counts[0] / counts[level]
    return weights
