"""``hipas morphometry --labels L --lungs M -o ROW.parquet``: one morphometry row per scan.

Columns (``hipas_core.morphometry.ROW_COLUMNS``): scan_id, artery/vein SL (standardized voxels
and mm), bifurcations, end points, volumes (intrapulmonary), lung_volume_ml, lung_total_ml.
Provenance (versions, TEASAR parameters, lung margin, grid, the input files' SHA-256, never their
paths) is in the Parquet key-value metadata. ``--skeleton PATH.npz`` also writes the skeletons
for QC: ``vertices_zyx_mm`` (standardized-grid array frame), ``vertices_world_mm`` (physical x,
y, z), ``edges``, ``radius_mm``, ``tree`` (1 artery, 2 vein), ``origin``/``spacing`` of the
standardized grid.
"""

from __future__ import annotations

import argparse

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels", required=True,
        help="artery/vein label map (0, 1 artery, 2 vein); for thick-slice scans give the labels in the "
        "standardized grid (hipas segment --std-output): on 2.5-5 mm slices the input-grid labels lose thin vessels",
    )
    parser.add_argument(
        "--lungs", required=True, help="lung mask (non-zero = lung) covering the same box"
    )
    parser.add_argument("-o", "--output", required=True, help="one-row Parquet file")
    parser.add_argument("--skeleton", help="also write the skeleton graphs (.npz) for QC")
    parser.add_argument(
        "--lung-margin-mm",
        type=float,
        default=0.0,
        help="erode the lung mask by this much before deciding what is intrapulmonary (default 0)",
    )
    parser.add_argument(
        "--fix-branching", action="store_true", help="kimimaro fix_branching (slow; same figures)"
    )
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    scan_id = args.scan_id or default_scan_id(args.labels)
    if args.lung_margin_mm < 0:
        from hipas_core.errors import InvalidInputError

        raise InvalidInputError(f"--lung-margin-mm must be >= 0, not {args.lung_margin_mm}")

    def work() -> None:
        import io

        import numpy as np

        from hipas_core.atomic import atomic_path, write_parquet
        from hipas_core.io import read_labels
        from hipas_core.morphometry import MorphometrySettings, morphometry_row, skeleton_arrays
        from hipas_core.provenance import file_sha256

        labels = read_labels(args.labels)
        lungs = read_labels(args.lungs)
        settings = MorphometrySettings(
            lung_margin_mm=args.lung_margin_mm, fix_branching=args.fix_branching
        )
        frame, metadata, result = morphometry_row(
            labels, lungs, scan_id=scan_id, settings=settings, return_skeletons=True
        )
        # the inputs by their content, never by path (a path may carry a patient's name)
        metadata["hipas_parameters"]["labels_sha256"] = file_sha256(args.labels)
        metadata["hipas_parameters"]["lungs_sha256"] = file_sha256(args.lungs)
        if args.skeleton:
            reference = result["standard_reference"]
            arrays = skeleton_arrays(result, reference)
            buffer = io.BytesIO()
            np.savez_compressed(
                buffer,
                **arrays,
                origin=np.asarray(reference.GetOrigin()),
                spacing=np.asarray(reference.GetSpacing()),
            )
            with atomic_path(args.skeleton) as tmp:
                tmp.write_bytes(buffer.getvalue())
        write_parquet(args.output, frame, metadata)

    return run_scan_stage(
        stage="morphometry",
        scan_id=scan_id,
        inputs=[args.labels, args.lungs],
        outputs=[args.output, args.skeleton],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
