"""``hipas evaluate``: segmentation metrics of a prediction against its truth, and cohort summaries.

Per scan::

    hipas evaluate --pred P --truth T -o OUT.parquet|.csv [--probabilities PROB] [--lungs M] [--scan-id ID]

writes one row per (tree: artery, vein, vessels) x (region: whole, intrapulmonary when --lungs is
given) with DSC, sensitivity, specificity, MCS, HD95 (mm), AUC, TD, BD and the SL/BC ratios
(definitions: ``hipas_core.metrics``), and prints the table. ``--probabilities``: an image with
two components (artery, vein) per voxel, or a 4D image whose first axis has length 2, on the
labels' grid. Prediction, truth and lungs must share one grid.

Cohort::

    hipas evaluate --summarize A.parquet B.parquet ... -o SUMMARY.csv
    hipas evaluate --compare METHOD1.parquet METHOD2.parquet --metric dsc -o TEST.csv

``--summarize`` concatenates per-scan tables and writes mean, sd, t-based 95 % CI per metric, tree
and region; ``--compare`` takes two per-scan tables (or files listing many scans each, e.g. the
concatenation of a method's per-scan tables) and writes a Wilcoxon signed-rank test per tree and
region for ``--metric``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage
from hipas_core.errors import InvalidInputError


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", help="predicted label map (0, 1 artery, 2 vein)")
    parser.add_argument("--truth", help="reference label map on the same grid")
    parser.add_argument("--probabilities", help="artery/vein probabilities (2 components) for AUC")
    parser.add_argument("--lungs", help="lung mask (non-zero = lung): adds intrapulmonary rows")
    parser.add_argument("-o", "--output", required=True, help="output table (.parquet or .csv)")
    parser.add_argument(
        "--no-skeleton", action="store_true", help="skip TD, BD, SL and BC (no skeletonisation)"
    )
    parser.add_argument(
        "--largest-component",
        action="store_true",
        help="ATM'22 rule: TD/BD count only the prediction's largest connected component",
    )
    parser.add_argument(
        "--summarize", nargs="+", metavar="TABLE", help="per-scan tables to summarise"
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="two methods' per-scan tables"
    )
    parser.add_argument("--metric", default="dsc", help="metric for --compare (default dsc)")
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.summarize or args.compare:
        return _cohort(args)
    if not args.pred or not args.truth:
        raise InvalidInputError(
            "hipas evaluate needs --pred and --truth (or --summarize / --compare)"
        )
    _check_suffix(args.output)
    scan_id = args.scan_id or default_scan_id(args.pred)

    def work() -> None:
        import SimpleITK as sitk

        from hipas_core.io import read_labels
        from hipas_core.metrics import evaluate_labels
        from hipas_core.provenance import provenance
        from hipas_core.voxel_metrics import probabilities_from_array

        pred = read_labels(args.pred)
        truth = read_labels(args.truth)
        _require_same_grid(pred, truth, args.pred, args.truth)
        lungs = probabilities = None
        if args.lungs:
            lung_image = read_labels(args.lungs)
            _require_same_grid(lung_image, truth, args.lungs, args.truth)
            lungs = sitk.GetArrayViewFromImage(lung_image)
        truth_array = sitk.GetArrayViewFromImage(truth)
        if args.probabilities:
            prob_image = sitk.ReadImage(str(args.probabilities))
            try:
                probabilities = probabilities_from_array(
                    sitk.GetArrayFromImage(prob_image), truth_array.shape
                )
            except ValueError as error:
                raise InvalidInputError(f"{args.probabilities}: {error}") from None
        frame = evaluate_labels(
            sitk.GetArrayViewFromImage(pred),
            truth_array,
            spacing=truth.GetSpacing()[::-1],
            probabilities=probabilities,
            lungs=lungs,
            scan_id=scan_id,
            skeleton_metrics=not args.no_skeleton,
            largest_component=args.largest_component,
        )
        metadata = provenance(
            stage="evaluate",
            scan_id=scan_id,
            pred=str(args.pred),
            truth=str(args.truth),
            lungs=args.lungs,
            probabilities=args.probabilities,
            skeleton_metrics=not args.no_skeleton,
            largest_component=args.largest_component,
        )
        _write_table(args.output, frame, metadata)
        _print(frame)

    inputs = [p for p in (args.pred, args.truth, args.lungs, args.probabilities) if p]
    return run_scan_stage(
        stage="evaluate",
        scan_id=scan_id,
        inputs=inputs,
        outputs=[args.output],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )


def _cohort(args: argparse.Namespace) -> int:
    import pandas as pd

    from hipas_core.metric_summary import paired_comparison, summarize
    from hipas_core.provenance import provenance

    _check_suffix(args.output)
    if args.summarize:
        frame = pd.concat([_read_table(p) for p in args.summarize], ignore_index=True)
        result = summarize(frame)
        metadata = provenance(stage="evaluate-summary", tables=[str(p) for p in args.summarize])
    else:
        a, b = (_read_table(p) for p in args.compare)
        if args.metric not in a or args.metric not in b:
            raise InvalidInputError(f"--metric {args.metric!r} is not a column of both tables")
        keys = a[["tree", "region"]].drop_duplicates().itertuples(index=False)
        result = pd.DataFrame(
            [paired_comparison(a, b, metric=args.metric, tree=t, region=r) for t, r in keys]
        )
        metadata = provenance(
            stage="evaluate-compare", a=args.compare[0], b=args.compare[1], metric=args.metric
        )
    _write_table(args.output, result, metadata)
    _print(result)
    return 0


def _check_suffix(path: str) -> None:
    if Path(path).suffix.lower() not in (".parquet", ".csv"):
        raise InvalidInputError(f"{path}: output must end in .parquet or .csv")


def _read_table(path: str):
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"{path}: no such table")
    try:
        frame = pd.read_parquet(file) if file.suffix.lower() == ".parquet" else pd.read_csv(file)
    except Exception as error:  # unreadable table: one line naming the file
        raise InvalidInputError(f"{path}: cannot read table ({type(error).__name__})") from None
    missing = {"scan_id", "tree", "region"} - set(frame.columns)
    if missing:
        raise InvalidInputError(f"{path}: not a per-scan metrics table (missing {sorted(missing)})")
    return frame


def _write_table(path: str, frame, metadata) -> None:
    from hipas_core.atomic import write_parquet, write_text

    if Path(path).suffix.lower() == ".parquet":
        write_parquet(path, frame, metadata)
    else:
        write_text(path, frame.to_csv(index=False))


def _require_same_grid(a, b, path_a, path_b) -> None:
    """``InvalidInputError`` unless sizes match and spacings agree to rtol 1e-4 (origins and
    directions are not compared)."""
    from hipas_core.conventions import same_grid

    if not same_grid(a, b, spacing_rtol=1e-4, origin_atol=None, direction_atol=None):
        raise InvalidInputError(
            f"{path_a}: grid {a.GetSize()} spacing {tuple(round(s, 4) for s in a.GetSpacing())} differs "
            f"from {path_b} {b.GetSize()} {tuple(round(s, 4) for s in b.GetSpacing())}"
        )


def _print(frame) -> None:
    import pandas as pd

    with pd.option_context(
        "display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4f}".format
    ):
        print(frame.to_string(index=False))
