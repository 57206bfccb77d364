"""Voxel metrics of artery/vein label maps: confusion counts, Dice, MCS, surface distances and
HD95, AUC (definitions in ``hipas_core.metrics``' module docstring). Arrays are (z, y, x) bool
masks or label maps (0 background, 1 artery, 2 vein); ``spacing`` in mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hipas_core.conventions import ARTERY, VEIN, bounding_slices

__all__ = ["auc", "confusion_counts", "dice", "hd95", "misclassification_score", "probabilities_from_array",
           "safe_ratio", "surface_distances"]



def confusion_counts(
    pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None
) -> dict[str, int]:
    """TP, FP, FN, TN of two boolean masks, counted inside ``region`` (all voxels when None)."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    if region is not None:
        region = np.asarray(region, bool)
        pred, truth = pred[region], truth[region]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    tn = int(pred.size) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def safe_ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """DSC of two boolean masks; NaN when both are empty."""
    c = confusion_counts(pred, truth)
    return safe_ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def misclassification_score(
    pred_labels: np.ndarray, truth_labels: np.ndarray, region: np.ndarray | None = None
) -> float:
    """MCS = 2 (|P_A n T_V| + |P_V n T_A|) / (|P_A| + |P_V| + |T_A| + |T_V|) (module docstring)."""
    pred = np.asarray(pred_labels)
    truth = np.asarray(truth_labels)
    if region is not None:
        region = np.asarray(region, bool)
        pred, truth = pred[region], truth[region]
    cross = np.count_nonzero((pred == ARTERY) & (truth == VEIN)) + np.count_nonzero(
        (pred == VEIN) & (truth == ARTERY)
    )
    total = np.count_nonzero((pred == ARTERY) | (pred == VEIN)) + np.count_nonzero(
        (truth == ARTERY) | (truth == VEIN)
    )
    return safe_ratio(2 * cross, total)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    interior = ndi.binary_erosion(
        mask, structure=ndi.generate_binary_structure(3, 1), border_value=0
    )
    return mask & ~interior


def surface_distances(
    a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm): from each surface voxel of ``a`` to the surface of ``b``,
    and from ``b`` to ``a``. Both masks must be non-empty. Computed in the joint bounding box
    (padded), so the cost follows the objects' extent, not the volume's."""
    from scipy import ndimage as ndi

    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    box = bounding_slices(a | b, pad=1)
    # outside the box both masks are empty, so surfaces and distances in the crop are exact (a crop
    # edge on the volume border keeps the border as outside)
    sa, sb = _surface(a[box]), _surface(b[box])
    dist_to_b = ndi.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndi.distance_transform_edt(~sa, sampling=spacing)
    return dist_to_b[sa], dist_to_a[sb]


def hd95(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float]) -> float:
    """Symmetric 95 % Hausdorff distance in mm (module docstring); NaN if either mask is empty."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return math.nan
    d_pt, d_tp = surface_distances(pred, truth, spacing=spacing)
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + P(tie) / 2, exact; NaN when one class
    is absent."""
    scores = np.asarray(scores).ravel()
    positive = np.asarray(positive, bool).ravel()
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    values, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=positive, minlength=len(values))
    neg = np.bincount(inverse, minlength=len(values)) - pos
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (float(n_pos) * float(n_neg)))


def probabilities_from_array(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(2, z, y, x) float32 (artery, vein) from an array read from a probability image: either
    channels last (SimpleITK vector image, (z, y, x, 2)) or first ((2, z, y, x), a 4D image)."""
    array = np.asarray(array)
    shape = tuple(int(n) for n in shape)
    if array.shape == (*shape, 2):
        array = np.moveaxis(array, -1, 0)
    elif array.shape != (2, *shape):
        raise ValueError(
            f"probabilities of shape {array.shape} do not match labels {shape} with 2 channels"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("probabilities hold NaN or infinite values")
    return array.astype(np.float32, copy=False)
