"""Cohort summaries of per-scan metric rows (``hipas_core.metrics.evaluate_labels``): mean, sd and
a t-based confidence interval per metric, tree and region, and the paired comparison of two
methods (Wilcoxon signed-rank on the scans both have).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hipas_core.metrics import METRIC_COLUMNS

__all__ = ["paired_comparison", "summarize"]



def summarize(frame, *, metrics: Sequence[str] = METRIC_COLUMNS, confidence: float = 0.95):
    """Per (tree, region, metric): n, mean, sd, t-based CI (``ci_low``, ``ci_high``), median.
    NaN values are left out; n counts the values used."""
    import pandas as pd
    from scipy import stats

    rows = []
    for (tree, region), group in frame.groupby(["tree", "region"], sort=False):
        for metric in metrics:
            if metric not in group:
                continue
            values = group[metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            n = len(values)
            mean = float(values.mean()) if n else math.nan
            sd = float(values.std(ddof=1)) if n > 1 else math.nan
            if n > 1:
                half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
                low, high = mean - half, mean + half
            else:
                low = high = math.nan
            rows.append(
                {
                    "tree": tree,
                    "region": region,
                    "metric": metric,
                    "n": n,
                    "mean": mean,
                    "sd": sd,
                    "ci_low": low,
                    "ci_high": high,
                    "median": float(np.median(values)) if n else math.nan,
                }
            )
    return pd.DataFrame(rows)


def paired_comparison(
    frame_a, frame_b, *, metric: str, tree: str = "artery", region: str = "whole"
) -> dict:
    """Wilcoxon signed-rank test (two-sided) of ``metric`` between two methods' per-scan frames,
    on the scans present in both with finite values. Returns ``metric, tree, region, n, mean_a,
    mean_b, median_difference`` (a - b), ``statistic`` and ``p`` (NaN when n < 1 or all
    differences are zero)."""
    from scipy import stats

    def pick(frame):
        part = frame[(frame["tree"] == tree) & (frame["region"] == region)]
        return part.set_index("scan_id")[metric].astype(float)

    joined = pick(frame_a).to_frame("a").join(pick(frame_b).to_frame("b"), how="inner").dropna()
    a = joined["a"].to_numpy()
    b = joined["b"].to_numpy()
    n = len(a)
    statistic = p = math.nan
    if n > 0 and np.any(a != b):
        test = stats.wilcoxon(a, b, alternative="two-sided")
        statistic, p = float(test.statistic), float(test.pvalue)
    return {
        "metric": metric,
        "tree": tree,
        "region": region,
        "n": n,
        "mean_a": float(a.mean()) if n else math.nan,
        "mean_b": float(b.mean()) if n else math.nan,
        "median_difference": float(np.median(a - b)) if n else math.nan,
        "statistic": statistic,
        "p": p,
    }
