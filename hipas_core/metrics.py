"""Segmentation metrics of the paper (Methods, Statistical analyses) for artery/vein label maps.

Arrays are (z, y, x) label maps (0 background, 1 artery, 2 vein) with ``spacing`` in mm.
``evaluate_labels`` returns one row per (tree, region): tree ``artery``, ``vein`` or ``vessels``
(artery and vein together, the row that carries MCS), region ``whole`` (every voxel) or
``intrapulmonary`` (voxels of the lung mask, when one is given).

Definitions
-----------
- DSC = 2|P n T| / (|P| + |T|); sensitivity = TP / (TP + FN); specificity = TN / (TN + FP), TN
  counted over the region. Undefined ratios (0/0: both masks empty for DSC, empty truth for
  sensitivity, no negatives for specificity) are NaN.
- MCS (paper eq. 16 and Statistical analyses: MCS = (P_A . T_V + P_V . T_A) / (P + T)): P_X and T_X
  are the binary prediction and truth masks of tree X, ``.`` the voxel-wise product summed over the
  region, P = |P_A| + |P_V| and T = |T_A| + |T_V| (all predicted / all true vessel voxels). The paper
  writes its Dice (eq. 13) as P.T/(P+T) as well, i.e. it drops the conventional factor 2 of Dice in
  both places; we keep the factor 2, MCS = 2 (|P_A n T_V| + |P_V n T_A|) / (P + T), so MCS is the Dice
  of the prediction against the artery/vein-swapped truth: 0 with no cross-labelling, 1 when the two
  trees are swapped completely. NaN when P + T = 0.
- HD95 (mm): surfaces are mask voxels with a 6-neighbour outside the mask (the volume border counts
  as outside); for every surface voxel of one mask the Euclidean distance (with ``spacing``) to the
  nearest surface voxel of the other; HD95 = max of the two directed 95th percentiles (symmetric,
  as MONAI's ``compute_hausdorff_distance(percentile=95)``). NaN when either mask is empty (the
  distance is undefined; summaries then report fewer n).
- AUC (probabilities given): one-vs-rest per tree, the probability of that tree as the score and
  truth == tree as the positive class, over the region's voxels; computed exactly as the
  Mann-Whitney U statistic with ties counted one half (same as ``sklearn.metrics.roc_auc_score``).
  For the ``vessels`` row the score is max(P_artery, P_vein) against any vessel.
- ``vessels`` rows treat artery and vein as one class (binary vessel segmentation): DSC etc. of
  pred > 0 against truth > 0, TD/BD of both reference trees against any predicted vessel, SL/BC
  summed over both trees.
- TD and BD (ATM'22 airway challenge, "tree length detected" and "branches detected"): the
  reference tree's TEASAR skeleton (kimimaro via ``hipas_core.skeleton``, parameters in mm, spurs
  pruned, both as ``hipas_core.morphometry`` does) is split
  into branches at junctions and end points; a branch is detected when at least 80 % of its
  skeleton vertices lie in the predicted mask of the same tree; BD = detected branches / reference
  branches, TD = summed centreline length (mm, raw voxel path) of detected branches / total length.
  ATM'22 additionally keeps only the prediction's largest connected component; that is optional
  here (``largest_component``) because vessel predictions are legitimately split by the lung
  boundary crop and small gaps. Chains that join two degree >= 3 vertices of one bifurcation
  (shorter than the vessel radius or 2 mm, ``hipas_core.skeleton.junctions``) are not branches:
  they count towards length but not towards BD. For the intrapulmonary region a branch belongs to
  the region when most of its vertices lie in the lung mask.
- SL and BC ratios: the paper's SL (skeleton voxels) and BC (bifurcations) of the prediction over
  those of the reference, measured by ``hipas_core.morphometry.measure_trees`` in the standardized
  grid (its ``total_*`` figures for the whole region, the intrapulmonary ones otherwise). The
  skeleton metrics (TD, BD, SL, BC) are computed in the standardized grid like the paper's, the
  voxel metrics (DSC, SEN, SPE, MCS, HD95, AUC) in the input grid.

Cohort summary (``hipas_core.metric_summary``): mean, sd and a t-based 95 % CI (mean +- t(0.975,
n-1) sd / sqrt(n)) per metric, tree and region, NaN values left out (n says how many were used).
Paired comparison of two methods: Wilcoxon signed-rank test on scans present in both (scipy,
two-sided). The voxel metrics themselves are in ``hipas_core.voxel_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hipas_core.conventions import (
    STANDARD_SPACING,
    TREES,
    bounding_box,
    is_standard_spacing,
)
from hipas_core.voxel_metrics import (
    auc,
    confusion_counts,
    hd95,
    misclassification_score,
    safe_ratio,
)

DETECTION_FRACTION = 0.8
METRIC_COLUMNS: tuple[str, ...] = (
    "dsc",
    "sensitivity",
    "specificity",
    "mcs",
    "hd95_mm",
    "auc",
    "td",
    "bd",
    "sl_ratio",
    "bc_ratio",
)


# ----------------------------------------------------------------------------------------------
# skeleton metrics (TD, BD)


def reference_branches(graph, *, merge_mm: float = 2.0) -> list[dict]:
    """Branches of a reference skeleton (``hipas_core.skeleton.SkeletonGraph``).

    Returns dicts with ``voxels`` ((K, 3) int voxel indices of the chain's vertices), ``length_mm``
    (raw voxel-path length) and ``counted`` (False for chains inside one bifurcation cluster).
    """
    from hipas_core.skeleton import branches, junctions

    chains = branches(graph, smoothing_mm=0.0, trim_tips=False)
    found = junctions(graph, chains, merge_mm=merge_mm)
    cluster = {}
    for index, junction in enumerate(found):
        for vertex in junction.vertices:
            cluster[int(vertex)] = index
    voxels = graph.voxel_indices()
    result = []
    for chain in chains:
        a, b = int(chain.vertices[0]), int(chain.vertices[-1])
        inside_one_junction = a in cluster and b in cluster and cluster[a] == cluster[b] and a != b
        result.append(
            {
                "voxels": voxels[chain.vertices],
                "length_mm": chain.length_mm,
                "counted": not inside_one_junction,
            }
        )
    return result


def detected_ratios(
    branch_list: list[dict],
    pred_mask: np.ndarray,
    *,
    region: np.ndarray | None = None,
    fraction: float = DETECTION_FRACTION,
) -> dict[str, float]:
    """TD and BD of reference branches against a boolean prediction (module docstring).

    ``region``: keep only branches with most vertices inside it. Returns ``td``, ``bd`` (NaN when
    there is no reference branch / length) and the counts behind them."""
    pred_mask = np.asarray(pred_mask, bool)
    shape = np.asarray(pred_mask.shape)
    total_len = detected_len = 0.0
    n_branches = n_detected = 0
    for branch in branch_list:
        vox = np.clip(branch["voxels"], 0, shape - 1)
        if region is not None and np.mean(region[vox[:, 0], vox[:, 1], vox[:, 2]]) <= 0.5:
            continue
        hit = np.mean(pred_mask[vox[:, 0], vox[:, 1], vox[:, 2]]) >= fraction
        total_len += branch["length_mm"]
        detected_len += branch["length_mm"] if hit else 0.0
        if branch["counted"]:
            n_branches += 1
            n_detected += int(hit)
    return {
        "td": safe_ratio(detected_len, total_len),
        "bd": safe_ratio(n_detected, n_branches),
        "ref_length_mm": total_len,
        "detected_length_mm": detected_len,
        "ref_branches": n_branches,
        "detected_branches": n_detected,
    }


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cc3d

    if not mask.any():
        return mask
    return cc3d.largest_k(mask.astype(np.uint8), k=1, connectivity=26) > 0


# ----------------------------------------------------------------------------------------------
# one scan


def evaluate_labels(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float],
    probabilities: np.ndarray | None = None,
    lungs: np.ndarray | None = None,
    scan_id: str = "",
    skeleton_metrics: bool = True,
    largest_component: bool = False,
):
    """All metrics of one prediction against its truth, as a ``pandas.DataFrame``.

    ``pred``, ``truth``: (z, y, x) label maps (0/1 artery/2 vein) on one grid with ``spacing``
    (mm). ``probabilities``: optional float (2, z, y, x) array (artery, vein) for AUC. ``lungs``:
    optional lung mask (non-zero = lung) adds the intrapulmonary rows. ``skeleton_metrics=False``
    skips TD/BD/SL/BC (NaN). Columns: ``scan_id, tree, region`` then ``METRIC_COLUMNS`` and the
    counts ``tp, fp, fn, tn, ref_branches, detected_branches``. Inputs are not modified.
    """
    import pandas as pd

    pred = np.asarray(pred)
    truth = np.asarray(truth)
    spacing = tuple(float(s) for s in spacing)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must be 3D of one shape")
    if probabilities is not None:
        probabilities = np.asarray(probabilities)
        if probabilities.shape != (2, *pred.shape):
            raise ValueError(
                f"probabilities must be (2, {', '.join(map(str, pred.shape))}), got {probabilities.shape}"
            )
    lung = None if lungs is None else np.asarray(lungs) > 0
    if lung is not None and lung.shape != pred.shape:
        raise ValueError(f"lung mask {lung.shape} and labels {pred.shape} differ in shape")

    regions: dict[str, np.ndarray | None] = {"whole": None}
    if lung is not None:
        regions["intrapulmonary"] = lung
    skeleton = (
        _skeleton_metrics(pred, truth, lung, spacing, largest_component) if skeleton_metrics else {}
    )

    rows = []
    for region_name, region in regions.items():
        mcs = misclassification_score(pred, truth, region)
        for tree in (*TREES, "vessels"):
            if tree == "vessels":
                p_mask, t_mask = pred > 0, truth > 0
                score = None if probabilities is None else probabilities.max(axis=0)
            else:
                p_mask, t_mask = pred == TREES[tree], truth == TREES[tree]
                score = None if probabilities is None else probabilities[TREES[tree] - 1]
            p_in = p_mask if region is None else p_mask & region
            t_in = t_mask if region is None else t_mask & region
            counts = confusion_counts(p_mask, t_mask, region)
            row = {
                "scan_id": scan_id,
                "tree": tree,
                "region": region_name,
                "dsc": safe_ratio(2 * counts["tp"], 2 * counts["tp"] + counts["fp"] + counts["fn"]),
                "sensitivity": safe_ratio(counts["tp"], counts["tp"] + counts["fn"]),
                "specificity": safe_ratio(counts["tn"], counts["tn"] + counts["fp"]),
                "mcs": mcs if tree == "vessels" else math.nan,
                "hd95_mm": hd95(p_in, t_in, spacing=spacing),
                "auc": math.nan
                if score is None
                else auc(
                    score if region is None else score[region],
                    t_mask if region is None else t_mask[region],
                ),
            }
            figures = skeleton.get((tree, region_name), {})
            row.update(
                {key: figures.get(key, math.nan) for key in ("td", "bd", "sl_ratio", "bc_ratio")}
            )
            row.update(counts)
            row["ref_branches"] = figures.get("ref_branches", -1)
            row["detected_branches"] = figures.get("detected_branches", -1)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["scan_id"] = frame["scan_id"].astype(object)
    return frame


def _skeleton_metrics(pred, truth, lung, spacing, largest_component) -> dict:
    """TD, BD, SL and BC ratios per (tree, region), in the standardized grid."""
    from hipas_core.morphometry import MorphometrySettings, measure_trees

    settings = MorphometrySettings()
    pred_std, truth_std, lung_std = _to_standard_grid(pred, truth, lung, spacing)
    lung_for_morphometry = np.ones(truth_std.shape, np.uint8) if lung_std is None else lung_std
    truth_m = measure_trees(
        truth_std, lung_for_morphometry, spacing=STANDARD_SPACING, settings=settings
    )
    pred_m = measure_trees(
        pred_std, lung_for_morphometry, spacing=STANDARD_SPACING, settings=settings
    )
    regions = (
        {"whole": None} if lung_std is None else {"whole": None, "intrapulmonary": lung_std > 0}
    )
    result = {}
    all_branches = []
    for tree, value in TREES.items():
        branch_list = reference_branches(reference_skeleton(truth_std == value, settings=settings))
        all_branches += branch_list
        result.update(
            _per_region(
                branch_list, pred_std == value, regions, pred_m, truth_m, [tree], largest_component
            )
        )
    # both trees as one vessel class: any predicted vessel detects a reference branch
    result.update(
        _per_region(
            all_branches, pred_std > 0, regions, pred_m, truth_m, list(TREES), largest_component
        )
    )
    return result


def reference_skeleton(mask: np.ndarray, *, settings=None):
    """Skeleton graph of a (z, y, x) mask in the standardized grid, traced and spur-pruned as
    morphometry does (``MorphometrySettings``), vertices in the array frame (mm)."""
    from hipas_core.morphometry import MorphometrySettings
    from hipas_core.skeleton import prune_spurs, skeletonize

    settings = settings or MorphometrySettings()
    mask = np.asarray(mask, bool)
    if not mask.any():
        return skeletonize(np.zeros((1, 1, 1), np.uint8), spacing=STANDARD_SPACING)
    lo, hi = bounding_box(mask, pad=1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    graph = skeletonize(mask[box], spacing=STANDARD_SPACING, params=settings.teasar)
    graph.vertices_mm = graph.vertices_mm + np.asarray(lo) * np.asarray(STANDARD_SPACING)
    return prune_spurs(
        graph, min_length_mm=settings.spur_min_mm, radius_factor=settings.spur_radius_factor
    )


def _per_region(branch_list, mask, regions, pred_m, truth_m, trees, largest_component) -> dict:
    name = trees[0] if len(trees) == 1 else "vessels"
    if largest_component:
        mask = _largest_component(mask)
    result = {}
    for region_name, region in regions.items():
        figures = detected_ratios(branch_list, mask, region=region)
        prefix = "total_" if region_name == "whole" else ""
        for ratio, key in (("sl_ratio", f"{prefix}sl_vox"), ("bc_ratio", f"{prefix}bc")):
            figures[ratio] = safe_ratio(
                sum(pred_m[t][key] for t in trees), sum(truth_m[t][key] for t in trees)
            )
        result[(name, region_name)] = figures
    return result


def _to_standard_grid(pred, truth, lung, spacing):
    """Label maps (and lungs) resampled to the standardized grid, as ``measure_trees`` would."""
    import SimpleITK as sitk

    from hipas_core.morphometry import standardize_pair

    if is_standard_spacing(spacing):
        return pred, truth, None if lung is None else lung.astype(np.uint8)

    def image(array):
        img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
        img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
        return img

    lung_img = image(np.ones(truth.shape, np.uint8) if lung is None else lung)
    pred_img, lung_std = standardize_pair(image(pred), lung_img)
    truth_img, _ = standardize_pair(image(truth), lung_img)
    return (
        sitk.GetArrayFromImage(pred_img),
        sitk.GetArrayFromImage(truth_img),
        None if lung is None else sitk.GetArrayFromImage(lung_std),
    )
