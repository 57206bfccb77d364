"""Measured against true: a phantom cohort's indices beside the generator's exact values.

Phantoms carry their truth (``truth.json`` of ``hipas phantom``): the intrapulmonary centreline
length and bifurcation count of each tree and the lung volume. This module puts a cohort
table's measured indices beside those values, per scan and summarised (bias, worst error,
Pearson r), and fits the Figure 4 full model (``analysis.figure4.full_regression``) twice, on the
measured and on the true indices, so a user sees whether the pipeline's coefficients are right.

Centreline length is compared in mm on both sides (``artery_sl_mm``/``vein_sl_mm`` of the
cohort table against the generator's graph length): the true trees have no skeleton voxels.
The two Figure 4 fits therefore use SLPA/SLPV in mm, BCPA/BCPV as counts, lung volume in litres.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.figure4 import full_regression

# cohort index -> (cohort column measured, truth.json tree or None, truth.json key, truth scale)
TRUTH_FIELDS: dict[str, tuple[str, str | None, str, float]] = {
    "SLPA": ("artery_sl_mm", "artery", "intrapulmonary_centerline_length_mm", 1.0),
    "SLPV": ("vein_sl_mm", "vein", "intrapulmonary_centerline_length_mm", 1.0),
    "BCPA": ("BCPA", "artery", "intrapulmonary_bifurcations", 1.0),
    "BCPV": ("BCPV", "vein", "intrapulmonary_bifurcations", 1.0),
    "lung_volume_l": ("lung_volume_l", None, "lung_volume_ml", 1e-3),
}
UNITS = {"SLPA": "mm", "SLPV": "mm", "BCPA": "count", "BCPV": "count", "lung_volume_l": "L"}


def true_value(truth: dict, index: str) -> float:
    """The true value of ``index`` (a key of ``TRUTH_FIELDS``) in one phantom's ``truth.json``."""
    _, tree, key, scale = TRUTH_FIELDS[index]
    source = truth if tree is None else truth[tree]
    return float(source[key]) * scale


def paired_cohorts(cohort: pd.DataFrame, truths: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measured, true): two copies of the cohort rows that have a truth, with SLPA, SLPV, BCPA,
    BCPV and lung_volume_l in the units of ``UNITS``; every other column as in ``cohort``.
    ``truths`` maps scan_id to its parsed ``truth.json``. ``cohort`` is not modified."""
    rows = cohort[cohort["scan_id"].isin(truths)].reset_index(drop=True)
    measured, true = rows.copy(), rows.copy()
    for index, (column, *_rest) in TRUTH_FIELDS.items():
        measured[index] = rows[column].astype(float)
        true[index] = [true_value(truths[s], index) for s in rows["scan_id"]]
    return measured, true


def per_scan_errors(measured: pd.DataFrame, true: pd.DataFrame) -> pd.DataFrame:
    """Long table: ``scan_id, site, protocol, slice_thickness_mm, index, unit, measured, truth,
    relative_error`` (measured / truth - 1)."""
    parts = []
    for index in TRUTH_FIELDS:
        part = measured[["scan_id", "site", "protocol", "slice_thickness_mm"]].copy()
        part["index"], part["unit"] = index, UNITS[index]
        part["measured"], part["truth"] = measured[index].to_numpy(), true[index].to_numpy()
        part["relative_error"] = part["measured"] / part["truth"] - 1.0
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def agreement(errors: pd.DataFrame) -> pd.DataFrame:
    """Per index: ``n``, ``bias_pct`` (mean relative error), ``mean_abs_pct``, ``worst_pct`` (the
    relative error largest in magnitude, with its sign), ``within_10pct`` (fraction of scans),
    ``pearson_r`` and its ``pearson_p``, from ``per_scan_errors``."""
    rows = []
    for index, part in errors.groupby("index", sort=False):
        relative = part["relative_error"].to_numpy()
        r, p = (stats.pearsonr(part["measured"], part["truth"]) if len(part) >= 3
                and part["measured"].nunique() > 1 and part["truth"].nunique() > 1 else (np.nan, np.nan))
        rows.append({
            "index": index, "n": len(part), "bias_pct": 100 * relative.mean(),
            "mean_abs_pct": 100 * np.abs(relative).mean(), "worst_pct": 100 * relative[np.argmax(np.abs(relative))],
            "within_10pct": float(np.mean(np.abs(relative) <= 0.10)), "pearson_r": float(r), "pearson_p": float(p),
        })
    return pd.DataFrame(rows)


def coefficient_comparison(measured: pd.DataFrame, true: pd.DataFrame) -> pd.DataFrame:
    """The Figure 4 full model on measured and on true indices, term by term: ``index, term,
    coef_measured, se_measured, coef_truth, se_truth, difference_in_se`` ((measured - truth) /
    the truth fit's SE; NaN where a term is not estimable), ``within_2se``, ``n``."""
    on_measured, on_truth = full_regression(measured), full_regression(true)
    table = on_measured[["index", "term", "coef", "se", "n"]].merge(
        on_truth[["index", "term", "coef", "se"]], on=["index", "term"], suffixes=("_measured", "_truth"))
    table["difference_in_se"] = (table["coef_measured"] - table["coef_truth"]) / table["se_truth"]
    table["within_2se"] = table["difference_in_se"].abs() <= 2.0
    return table[["index", "term", "coef_measured", "se_measured", "coef_truth", "se_truth",
                  "difference_in_se", "within_2se", "n"]]


def plot_measured_vs_truth(errors: pd.DataFrame):
    """Scatter of measured against true values, one panel per index, identity line and +-10 %
    band, thin and thick slices (> 2 mm) marked apart. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    from analysis.plots import STYLE

    indices = list(dict.fromkeys(errors["index"]))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(indices), figsize=(2.3 * len(indices), 2.6), constrained_layout=True)
        for axis, index in zip(np.atleast_1d(axes), indices, strict=True):
            part = errors[errors["index"] == index]
            thick = part["slice_thickness_mm"].to_numpy(dtype=float) > 2.0
            low = float(min(part["truth"].min(), part["measured"].min())) * 0.9
            high = float(max(part["truth"].max(), part["measured"].max())) * 1.1
            line = np.array([low, high])
            axis.fill_between(line, 0.9 * line, 1.1 * line, color="0.9", lw=0)
            axis.plot(line, line, color="0.5", lw=0.8)
            axis.scatter(part["truth"][~thick], part["measured"][~thick], s=8, color="tab:blue", label="<= 2 mm")
            axis.scatter(part["truth"][thick], part["measured"][thick], s=8, color="tab:orange", marker="^",
                         label="> 2 mm")
            r = stats.pearsonr(part["measured"], part["truth"])[0] if len(part) >= 3 else np.nan
            axis.set_title(f"{index} (r = {r:.2f})")
            axis.set_xlabel(f"truth ({UNITS[index]})")
            axis.set_ylabel(f"measured ({UNITS[index]})")
            axis.set_xlim(low, high)
            axis.set_ylim(low, high)
        np.atleast_1d(axes)[0].legend(loc="upper left", frameon=False)
    return figure
