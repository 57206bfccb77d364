"""``hipas levels --labels L -o LEVELS [--lungs M]``: the paper's four branch levels of a label map.

Writes a uint8 map on the labels' grid: 0 background, 1..4 = paper level 0..3 (A0/V0 cardinal
vessels, A1/V1 generations 1-2 at the hilum, A2/V2 generations 3-5, A3/V3 the rest); which tree a
voxel belongs to stays in the label map. The lung mask tells the mediastinal vessels (level 0)
from the intrapulmonary ones; without it a radius rule stands in and the result is rough.
Definitions: ``hipas_core.levels``.
"""

from __future__ import annotations

import argparse

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels", required=True, help="artery/vein label map (0, 1 artery, 2 vein)"
    )
    parser.add_argument("-o", "--output", required=True, help="level map (.nii.gz)")
    parser.add_argument(
        "--lungs", help="lung mask (non-zero = lung) on the labels' grid (strongly recommended)"
    )
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    scan_id = args.scan_id or default_scan_id(args.labels)

    def work() -> None:
        import SimpleITK as sitk

        from hipas_core.atomic import write_image
        from hipas_core.conventions import same_grid
        from hipas_core.errors import InvalidInputError
        from hipas_core.io import read_labels
        from hipas_core.levels import vessel_levels

        labels = read_labels(args.labels)
        lungs = None
        if args.lungs:
            lung_image = read_labels(args.lungs)
            if not same_grid(lung_image, labels, spacing_rtol=1e-4, origin_atol=None, direction_atol=None):
                raise InvalidInputError(
                    f"{args.lungs}: grid {lung_image.GetSize()} differs from the labels' {labels.GetSize()}"
                )
            lungs = sitk.GetArrayViewFromImage(lung_image)
        levels = vessel_levels(
            sitk.GetArrayViewFromImage(labels), spacing=labels.GetSpacing()[::-1], lungs=lungs
        )
        image = sitk.GetImageFromArray(levels)
        image.CopyInformation(labels)
        write_image(args.output, image)

    inputs = [p for p in (args.labels, args.lungs) if p]
    return run_scan_stage(
        stage="levels",
        scan_id=scan_id,
        inputs=inputs,
        outputs=[args.output],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
