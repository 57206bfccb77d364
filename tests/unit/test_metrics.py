"""Evaluation metrics on tiny hand-built volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import stats
from scipy.spatial import cKDTree

from hipas_core.grid import STANDARD_SPACING
from hipas_core.metric_summary import paired_comparison, summarize
from hipas_core.metrics import evaluate_labels
from hipas_core.voxel_metrics import (
    auc,
    confusion_counts,
    dice,
    hd95,
    misclassification_score,
    probabilities_from_array,
    surface_distances,
)


def test_confusion_dice_sensitivity_specificity_by_counting():
    truth = np.zeros((4, 4, 4), bool)
    pred = np.zeros((4, 4, 4), bool)
    truth[0, 0, :4] = True  # 4 true voxels
    pred[0, 0, :3] = True  # 3 of them found
    pred[3, 3, :2] = True  # 2 false positives
    counts = confusion_counts(pred, truth)
    assert counts == {"tp": 3, "fp": 2, "fn": 1, "tn": 64 - 6}
    assert dice(pred, truth) == pytest.approx(2 * 3 / (5 + 4))
    region = np.zeros((4, 4, 4), bool)
    region[0] = True  # only slice 0: the false positives are outside
    assert confusion_counts(pred, truth, region) == {"tp": 3, "fp": 0, "fn": 1, "tn": 12}
    assert math.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_evaluate_rows_count_dsc_sen_spe():
    truth = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros_like(truth)
    truth[1, 1, 1:5] = 1  # 4 artery
    truth[2, 3, 1:4] = 2  # 3 vein
    pred[1, 1, 1:4] = 1  # 3 artery right
    pred[2, 3, 1:4] = 2  # 3 vein right
    pred[3, 0, 0] = 1  # 1 artery false positive
    frame = evaluate_labels(pred, truth, spacing=(1, 1, 1), skeleton_metrics=False)
    artery = frame[(frame.tree == "artery") & (frame.region == "whole")].iloc[0]
    assert artery.dsc == pytest.approx(6 / 8)
    assert artery.sensitivity == pytest.approx(3 / 4)
    assert artery.specificity == pytest.approx((120 - 5) / (120 - 4))
    vein = frame[(frame.tree == "vein") & (frame.region == "whole")].iloc[0]
    assert vein.dsc == 1.0 and vein.sensitivity == 1.0 and vein.specificity == 1.0
    assert set(frame.region) == {"whole"} and set(frame.tree) == {"artery", "vein", "vessels"}
    assert frame["td"].isna().all()


def test_mcs_hand_values():
    truth = np.array([1] * 10 + [2] * 10 + [0] * 5, np.uint8)
    pred = truth.copy()
    pred[:2] = 2  # 2 arteries called vein
    pred[10:13] = 1  # 3 veins called artery
    pred[20] = 1  # one false positive (not a cross-labelling)
    # 2 (2 + 3) / (|P| = 21 + |T| = 20)
    assert misclassification_score(pred, truth) == pytest.approx(10 / 41)
    assert misclassification_score(truth, truth) == 0.0
    swapped = np.where(truth == 1, 2, np.where(truth == 2, 1, 0)).astype(np.uint8)
    assert misclassification_score(swapped, truth) == 1.0
    assert math.isnan(misclassification_score(np.zeros(3), np.zeros(3)))


def test_hd95_parallel_plates_known_distance():
    spacing = (2.0, 0.5, 0.7)
    a = np.zeros((12, 20, 20), bool)
    b = np.zeros_like(a)
    a[3, 2:18, 2:18] = True
    b[7, 2:18, 2:18] = True  # 4 slices apart: every point is 8 mm from the other plate
    assert hd95(a, b, spacing=spacing) == pytest.approx(8.0)
    assert hd95(a, a, spacing=spacing) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a), spacing=spacing))


def test_hd95_offset_cubes_against_brute_force():
    spacing = (1.0, 0.8, 0.6)
    a = np.zeros((20, 22, 24), bool)
    b = np.zeros_like(a)
    a[4:12, 5:13, 6:14] = True
    b[4:12, 5:13, 9:17] = True  # shifted 3 voxels (1.8 mm) in x
    d_ab, d_ba = surface_distances(a, b, spacing=spacing)

    def surface_points(mask):
        from scipy import ndimage as ndi

        surf = mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(3, 1))
        return np.argwhere(surf) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    brute_ab = cKDTree(pb).query(pa)[0]
    brute_ba = cKDTree(pa).query(pb)[0]
    np.testing.assert_allclose(np.sort(d_ab), np.sort(brute_ab), atol=1e-9)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(brute_ba), atol=1e-9)
    expected = max(np.percentile(brute_ab, 95), np.percentile(brute_ba, 95))
    measured = hd95(a, b, spacing=spacing)
    assert measured == pytest.approx(expected)
    assert 0 < measured <= 1.8 + 1e-9  # never more than the shift
    # a mask touching the volume border: the border counts as outside
    c = np.zeros_like(a)
    c[0:6, 5:13, 6:14] = True
    assert np.isfinite(hd95(c, a, spacing=spacing))


def test_auc_hand_cases_and_sklearn():
    from sklearn.metrics import roc_auc_score

    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert auc([0.9, 0.1], [1, 0]) == 1.0
    assert math.isnan(auc([0.2, 0.3], [1, 1]))
    rng = np.random.default_rng(0)
    labels = rng.random(2000) < 0.3
    scores = np.round(rng.random(2000) + 0.5 * labels, 2)  # many ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_probability_layouts():
    first = np.zeros((2, 3, 4, 5), np.float32)
    assert probabilities_from_array(first, (3, 4, 5)).shape == (2, 3, 4, 5)
    last = np.zeros((3, 4, 5, 2), np.float32)
    last[..., 1] = 1
    out = probabilities_from_array(last, (3, 4, 5))
    assert out.shape == (2, 3, 4, 5) and out[1].min() == 1 and out[0].max() == 0
    with pytest.raises(ValueError, match="do not match"):
        probabilities_from_array(np.zeros((3, 3, 4, 5)), (3, 4, 5))


# --------------------------------------------------------------------------------------------
# skeleton metrics on a hand-built Y (artery) and a straight tube (vein), standardized grid


def _capsule(shape, spacing, a_mm, b_mm, radius_mm):
    zz, yy, xx = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    p = np.stack([zz, yy, xx], -1)
    a, b = np.asarray(a_mm, float), np.asarray(b_mm, float)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1) <= radius_mm


SHAPE = (60, 64, 72)
JUNCTION = (34.0, 20.0, 23.0)
SEGMENTS = {  # artery Y: trunk and two daughters (mm), vein: a tube
    "trunk": ((4.0, 20.0, 23.0), JUNCTION, 2.6),
    "left": (JUNCTION, (56.0, 20.0, 8.0), 2.0),
    "right": (JUNCTION, (56.0, 20.0, 38.0), 2.0),
    "vein": ((4.0, 32.0, 23.0), (56.0, 32.0, 30.0), 2.2),
}


def _y_phantom():
    labels = np.zeros(SHAPE, np.uint8)
    for name, (a, b, r) in SEGMENTS.items():
        labels[_capsule(SHAPE, STANDARD_SPACING, a, b, r)] = 2 if name == "vein" else 1
    return labels


def _length(name):
    a, b, _ = SEGMENTS[name]
    return float(np.linalg.norm(np.subtract(b, a)))


def test_td_bd_on_y_with_one_branch_removed():
    truth = _y_phantom()
    frame = evaluate_labels(truth, truth, spacing=STANDARD_SPACING)
    whole = frame[frame.region == "whole"].set_index("tree")
    assert whole.loc["artery", "ref_branches"] == 3 and whole.loc["vein", "ref_branches"] == 1
    for tree in ("artery", "vein", "vessels"):
        assert (
            whole.loc[tree, "dsc"] == 1.0
            and whole.loc[tree, "td"] == 1.0
            and whole.loc[tree, "bd"] == 1.0
        )
        assert whole.loc[tree, "sl_ratio"] == 1.0 and whole.loc[tree, "hd95_mm"] == 0.0
    assert whole.loc["vessels", "mcs"] == 0.0

    # remove the right daughter beyond 3.5 mm from the junction
    pred = truth.copy()
    a, b, r = SEGMENTS["right"]
    direction = np.subtract(b, a) / _length("right")
    start = np.asarray(a) + 3.5 * direction
    pred[
        _capsule(SHAPE, STANDARD_SPACING, start, b, r + 1.0)
        & (truth == 1)
        & ~_capsule(SHAPE, STANDARD_SPACING, *SEGMENTS["trunk"][:2], SEGMENTS["trunk"][2])
        & ~_capsule(SHAPE, STANDARD_SPACING, *SEGMENTS["left"][:2], SEGMENTS["left"][2])
    ] = 0
    frame = evaluate_labels(pred, truth, spacing=STANDARD_SPACING)
    artery = frame[(frame.region == "whole") & (frame.tree == "artery")].iloc[0]
    assert artery.bd == pytest.approx(2 / 3)
    assert artery.detected_branches == 2
    expected_td = (_length("trunk") + _length("left")) / (
        _length("trunk") + _length("left") + _length("right")
    )
    assert artery.td == pytest.approx(expected_td, abs=0.06)
    assert artery.sl_ratio < 0.85 and artery.bc_ratio == 0.0  # the only bifurcation is gone
    vessels = frame[(frame.region == "whole") & (frame.tree == "vessels")].iloc[0]
    assert vessels.bd == pytest.approx(3 / 4)


def test_swapped_trees_and_intrapulmonary_rows():
    truth = _y_phantom()
    swapped = np.where(truth == 1, 2, np.where(truth == 2, 1, 0)).astype(np.uint8)
    lungs = np.zeros(SHAPE, np.uint8)
    lungs[30:] = 1  # "lungs" above z = 30 mm
    frame = evaluate_labels(swapped, truth, spacing=STANDARD_SPACING, lungs=lungs)
    assert set(frame.region) == {"whole", "intrapulmonary"}
    vessels = frame[frame.tree == "vessels"].set_index("region")
    assert vessels.loc["whole", "mcs"] == 1.0 and vessels.loc["intrapulmonary", "mcs"] == 1.0
    assert vessels.loc["whole", "dsc"] == 1.0 and vessels.loc["whole", "td"] == 1.0
    artery = frame[frame.tree == "artery"].set_index("region")
    assert artery.loc["whole", "dsc"] == 0.0 and artery.loc["whole", "td"] == 0.0
    # intrapulmonary: only the daughters (and the trunk's top) are counted
    assert artery.loc["intrapulmonary", "ref_branches"] == 2
    assert artery.loc["intrapulmonary", "tn"] + artery.loc["intrapulmonary", "fp"] + artery.loc[
        "intrapulmonary", "fn"
    ] + artery.loc["intrapulmonary", "tp"] == int(lungs.sum())


def test_auc_rows_from_probabilities():
    truth = _y_phantom()
    rng = np.random.default_rng(2)
    probs = np.stack(
        [(truth == 1) * 0.6 + 0.5 * rng.random(SHAPE), (truth == 2) * 0.2 + 0.5 * rng.random(SHAPE)]
    )
    frame = evaluate_labels(
        truth, truth, spacing=STANDARD_SPACING, probabilities=probs, skeleton_metrics=False
    )
    rows = frame.set_index("tree")
    assert rows.loc["artery", "auc"] == pytest.approx(auc(probs[0], truth == 1))
    assert rows.loc["artery", "auc"] > 0.99 and 0.6 < rows.loc["vein", "auc"] < 0.95


# --------------------------------------------------------------------------------------------
# cohort


def _cohort(values_a, values_b):
    rows_a = [
        {"scan_id": f"s{i}", "tree": "artery", "region": "whole", "dsc": v}
        for i, v in enumerate(values_a)
    ]
    rows_b = [
        {"scan_id": f"s{i}", "tree": "artery", "region": "whole", "dsc": v}
        for i, v in enumerate(values_b)
    ]
    return pd.DataFrame(rows_a), pd.DataFrame(rows_b)


def test_summarize_t_interval():
    values = [0.9, 0.8, 0.85, 0.95, math.nan]
    frame, _ = _cohort(values, values)
    summary = summarize(frame, metrics=("dsc",)).iloc[0]
    finite = np.array(values[:4])
    low, high = stats.t.interval(0.95, 3, loc=finite.mean(), scale=stats.sem(finite))
    assert summary.n == 4 and summary["mean"] == pytest.approx(finite.mean())
    assert summary.ci_low == pytest.approx(low) and summary.ci_high == pytest.approx(high)


def test_paired_comparison_wilcoxon():
    a_values = [0.90, 0.85, 0.88, 0.92, 0.80, 0.87, 0.91]
    b_values = [0.86, 0.84, 0.83, 0.90, 0.79, 0.80, 0.85]
    a, b = _cohort(a_values, b_values)
    b = b.iloc[::-1].reset_index(drop=True)  # order must not matter: paired by scan_id
    result = paired_comparison(a, b, metric="dsc")
    expected = stats.wilcoxon(a_values, b_values)
    assert result["n"] == 7 and result["p"] == pytest.approx(expected.pvalue)
    assert result["mean_a"] > result["mean_b"]


# --------------------------------------------------------------------------------------------
# command line


def _write(path, array, spacing=STANDARD_SPACING):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(image, str(path))
    return path


def test_cli_identity_and_swapped(tmp_path, hipas):
    truth = _y_phantom()
    swapped = np.where(truth == 1, 2, np.where(truth == 2, 1, 0)).astype(np.uint8)
    t = _write(tmp_path / "truth.nii.gz", truth)
    s = _write(tmp_path / "swapped.nii.gz", swapped)
    probs = np.stack([(truth == 1), (truth == 2)], -1).astype(np.float32)
    prob_image = sitk.GetImageFromArray(probs, isVector=True)
    prob_image.SetSpacing(tuple(reversed(STANDARD_SPACING)))
    sitk.WriteImage(prob_image, str(tmp_path / "probs.nii.gz"))

    out = tmp_path / "same.parquet"
    result = hipas(
        "evaluate",
        "--pred",
        t,
        "--truth",
        t,
        "--probabilities",
        tmp_path / "probs.nii.gz",
        "-o",
        out,
        "--scan-id",
        "y1",
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out).set_index("tree")
    assert (frame.scan_id == "y1").all()
    for tree in ("artery", "vein"):
        assert (
            frame.loc[tree, "dsc"] == 1
            and frame.loc[tree, "td"] == 1
            and frame.loc[tree, "bd"] == 1
        )
        assert frame.loc[tree, "auc"] == 1
    assert frame.loc["vessels", "mcs"] == 0
    assert "dsc" in result.stdout

    csv = tmp_path / "swapped.csv"
    assert hipas("evaluate", "--pred", s, "--truth", t, "-o", csv, "--no-skeleton").returncode == 0
    swapped_frame = pd.read_csv(csv).set_index("tree")
    assert swapped_frame.loc["vessels", "mcs"] == pytest.approx(1.0)

    summary = tmp_path / "summary.csv"
    assert hipas("evaluate", "--summarize", out, csv, "-o", summary).returncode == 0
    table = pd.read_csv(summary)
    row = table[(table.tree == "artery") & (table.metric == "dsc")].iloc[0]
    assert row.n == 2 and row["mean"] == pytest.approx(0.5)


def test_cli_rejects_mismatched_grids(tmp_path, hipas):
    truth = _write(tmp_path / "truth.nii.gz", np.zeros((8, 9, 10), np.uint8))
    other = _write(tmp_path / "other.nii.gz", np.zeros((8, 9, 11), np.uint8))
    out = tmp_path / "out.parquet"
    result = hipas("evaluate", "--pred", other, "--truth", truth, "-o", out)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "other.nii.gz" in result.stderr
    assert not out.exists()
    bad = hipas("evaluate", "--pred", truth, "--truth", truth, "-o", tmp_path / "out.txt")
    assert bad.returncode == 2 and "parquet or .csv" in bad.stderr
