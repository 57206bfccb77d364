"""``hipas synth-cohort --n N --out FILE --seed S``: a cohort table with planted effects (Parquet,
or CSV when FILE ends in .csv) and its truth record as JSON (FILE with a .json suffix, or --truth)."""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=11784, help="number of rows (default 11784, the paper's cohort)")
    parser.add_argument("--out", required=True, help="cohort table to write (.parquet or .csv)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--model", choices=("paper", "alternative"), default="paper",
                        help="generating model: the paper's coefficients, or a different interaction-free one")
    parser.add_argument("--missing-rate", type=float, default=0.0,
                        help="probability that each covariate cell (sex, age, lung volume, flags) is blank")
    parser.add_argument("--truth", help="where to write the planted coefficients (default: OUT with .json)")


def run(args: argparse.Namespace) -> int:
    from analysis.synthetic import synthesize_cohort
    from hipas_core.atomic import atomic_path, write_json, write_parquet
    from hipas_core.errors import InvalidInputError

    out = Path(args.out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise InvalidInputError(f"{out}: output must end in .parquet or .csv")
    try:
        cohort, truth = synthesize_cohort(n=args.n, seed=args.seed, model=args.model,
                                          missing_rate=args.missing_rate)
    except ValueError as error:
        raise InvalidInputError(f"{out}: {error}") from None
    truth_path = Path(args.truth) if args.truth else out.with_suffix(".json")
    if out.suffix.lower() == ".csv":
        with atomic_path(out) as tmp:
            cohort.to_csv(tmp, index=False, lineterminator="\n")
    else:
        write_parquet(out, cohort, metadata={"synthetic_model": args.model, "seed": args.seed,
                                             "missing_rate": args.missing_rate})
    write_json(truth_path, truth)
    print(f"wrote {len(cohort)} rows to {out} and the planted model to {truth_path}")
    return 0
