"""``hipas phantom-truth --cohort METRICS --out DIR SCAN_ID=TRUTH.json ...``: a phantom cohort's
measured indices against the generator's truth (``analysis.truth``).

Writes ``measured_vs_truth.csv`` (per scan and index), ``agreement.csv`` (bias, worst error,
Pearson r per index), ``fig4ef_measured_vs_truth.csv`` (the Figure 4 full model on measured
and on true indices) and ``measured_vs_truth.png``/``.pdf`` (one scatter panel per index).
Scans of the cohort without a truth file are left out; a truth file of a scan the cohort lacks
(an excluded scan) is ignored.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", required=True, help="cohort table (results/cohort/metrics.parquet)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("truth", nargs="+", metavar="SCAN_ID=TRUTH.json", help="each phantom's truth file")


def run(args: argparse.Namespace) -> int:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")  # small models: see hipas_core.cli.figure4
    from analysis.cohort import load_cohort
    from hipas_core.errors import InvalidInputError

    truths = {}
    for item in args.truth:
        scan_id, sep, path = item.partition("=")
        if not sep or not scan_id or not path:
            raise InvalidInputError(f"{item}: expected SCAN_ID=TRUTH.json")
        try:
            truths[scan_id] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path}: not a readable truth file ({type(error).__name__})") from None
    cohort = load_cohort(args.cohort)
    from analysis.plots import save_figure
    from analysis.truth import (
        agreement,
        coefficient_comparison,
        paired_cohorts,
        per_scan_errors,
        plot_measured_vs_truth,
    )
    from hipas_core.atomic import write_text

    measured, true = paired_cohorts(cohort, truths)
    if len(measured) < 3:
        raise InvalidInputError(f"{args.cohort}: {len(measured)} scan(s) with a truth file; at least 3 needed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    errors = per_scan_errors(measured, true)
    write_text(out / "measured_vs_truth.csv", errors.to_csv(index=False, float_format="%.6g"))
    summary = agreement(errors)
    write_text(out / "agreement.csv", summary.to_csv(index=False, float_format="%.4g"))
    write_text(out / "fig4ef_measured_vs_truth.csv",
               coefficient_comparison(measured, true).to_csv(index=False, float_format="%.6g"))
    save_figure(plot_measured_vs_truth(errors), out / "measured_vs_truth.png")
    for row in summary.itertuples():
        print(f"{row.index}: n {row.n}, bias {row.bias_pct:+.1f} %, worst {row.worst_pct:+.1f} %, r {row.pearson_r:.3f}")
    return 0
