"""Measured against true indices of a phantom cohort (analysis.truth, hipas phantom-truth)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.cohort import validate_cohort
from analysis.synthetic import synthesize_cohort
from analysis.truth import (
    TRUTH_FIELDS,
    agreement,
    coefficient_comparison,
    paired_cohorts,
    per_scan_errors,
)


def _cohort_and_truths(n=120, seed=3):
    """A synthetic cohort and truth records that equal its values (mm and counts)."""
    cohort, _ = synthesize_cohort(n=n, seed=seed)
    cohort = validate_cohort(cohort, source="synthetic")
    truths = {}
    for row in cohort.itertuples():
        truths[row.scan_id] = {
            "artery": {"intrapulmonary_centerline_length_mm": row.artery_sl_mm, "intrapulmonary_bifurcations": row.BCPA},
            "vein": {"intrapulmonary_centerline_length_mm": row.vein_sl_mm, "intrapulmonary_bifurcations": row.BCPV},
            "lung_volume_ml": row.lung_volume_l * 1000.0,
        }
    return cohort, truths


def test_exact_measurements_give_zero_error_r_one_and_identical_coefficients():
    cohort, truths = _cohort_and_truths()
    measured, true = paired_cohorts(cohort, truths)
    errors = per_scan_errors(measured, true)
    assert len(errors) == len(cohort) * len(TRUTH_FIELDS)
    assert np.allclose(errors["relative_error"], 0.0)
    summary = agreement(errors).set_index("index")
    assert np.allclose(summary["pearson_r"], 1.0) and (summary["within_10pct"] == 1.0).all()
    table = coefficient_comparison(measured, true)
    assert np.allclose(table["coef_measured"], table["coef_truth"])
    assert np.allclose(table["difference_in_se"].dropna(), 0.0) and table["within_2se"].all()


def test_a_biased_measurement_shows_its_bias_worst_error_and_a_shifted_coefficient():
    cohort, truths = _cohort_and_truths()
    before = cohort.copy()
    skewed = cohort.copy()
    skewed["artery_sl_mm"] = cohort["artery_sl_mm"] * 0.8  # 20 % short everywhere
    skewed.loc[0, "vein_sl_mm"] = cohort.loc[0, "vein_sl_mm"] * 1.5  # one scan 50 % long
    measured, true = paired_cohorts(skewed, truths)
    summary = agreement(per_scan_errors(measured, true)).set_index("index")
    assert summary.loc["SLPA", "bias_pct"] == pytest.approx(-20.0)
    assert summary.loc["SLPA", "within_10pct"] == 0.0
    assert summary.loc["SLPV", "worst_pct"] == pytest.approx(50.0)
    assert summary.loc["BCPA", "bias_pct"] == pytest.approx(0.0)
    table = coefficient_comparison(measured, true).set_index(["index", "term"])
    lung = table.loc[("SLPA", "lung_volume_l")]
    assert lung["coef_measured"] == pytest.approx(0.8 * lung["coef_truth"], rel=1e-9)
    pd.testing.assert_frame_equal(cohort, before)  # inputs untouched


def test_scans_without_truth_are_left_out():
    cohort, truths = _cohort_and_truths(n=80)
    kept = dict(list(truths.items())[:50])
    measured, true = paired_cohorts(cohort, kept)
    assert list(measured["scan_id"]) == list(kept) and list(true["scan_id"]) == list(kept)


def test_phantom_truth_cli_writes_tables_and_plot(tmp_path, hipas):
    cohort, truths = _cohort_and_truths(n=70)
    cohort.to_parquet(tmp_path / "metrics.parquet")
    pairs = []
    for scan_id, truth in truths.items():
        path = tmp_path / f"{scan_id}.json"
        path.write_text(json.dumps(truth))
        pairs.append(f"{scan_id}={path}")
    result = hipas("phantom-truth", "--cohort", tmp_path / "metrics.parquet", "--out", tmp_path / "out", *pairs,
                   check=True)
    assert "SLPA: n 70, bias +0.0 %" in result.stdout
    for name in ("measured_vs_truth.csv", "agreement.csv", "fig4ef_measured_vs_truth.csv", "measured_vs_truth.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    bad = hipas("phantom-truth", "--cohort", tmp_path / "metrics.parquet", "--out", tmp_path / "bad", "no-equals-sign")
    assert bad.returncode == 2 and "expected SCAN_ID=TRUTH.json" in bad.stderr
