"""``hipas figure4 --cohort FILE --out DIR``: Figure 4 tables (CSV), plots (PNG, PDF) and an HTML
report from a cohort table. A malformed table gives one line naming the file, exit 2."""

from __future__ import annotations

import argparse
import os

# The models are small (about 12,000 x 10): multi-threaded BLAS gains nothing there and, on a
# shared machine, burns CPU spinning (about 5x the user CPU time measured on 2 busy cores). Set
# before numpy is first imported (the dispatcher imports none); a user's own setting wins.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", required=True, help="cohort table (.parquet, .csv or .tsv)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--age-bin-width", type=float, default=10.0,
                        help="width of the Figure 4b age bins in years (default 10)")


def run(args: argparse.Namespace) -> int:
    for variable in _BLAS_THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
    from analysis.cohort import load_cohort
    from hipas_core.errors import InvalidInputError

    if not args.age_bin_width > 0:
        raise InvalidInputError(f"--age-bin-width must be positive, got {args.age_bin_width:g}")
    cohort = load_cohort(args.cohort)  # validate before importing the statistics and plotting stack
    from analysis.report import write_figure4

    written = write_figure4(args.cohort, args.out, age_bin_width=args.age_bin_width, cohort=cohort)
    print(f"wrote {len(written)} files to {args.out}")
    return 0
