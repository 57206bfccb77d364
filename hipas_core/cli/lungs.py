"""``hipas lungs -i CT -o MASK.nii.gz [--method threshold|lungmask]``: lung mask of a CT.

Writes a uint8 mask in the CT's own grid: 0 background, 1 right lung, 2 left lung. ``threshold``
(default) needs no weights and suits the demo phantoms; real scans should use ``lungmask``
(R231 weights from ``--weights`` or the torch hub cache; nothing is downloaded). ``--series-uid``
picks one series of a DICOM folder holding several (``hipas_core.io``). A scan whose lungs are not
found, or whose mask holds less than ``MIN_LUNG_MASK_ML`` (either method), is an invalid scan: one
line naming the input, exit status 2 (or exclusion markers with ``--exclude-invalid``).
"""

from __future__ import annotations

import argparse

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage

MIN_LUNG_MASK_ML = 20.0
"""A lung mask (both lungs) smaller than this, in ml, means no lungs were found."""


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--input", required=True, help="CT: DICOM folder, NIfTI, NRRD/MHA or HiPaS NPZ"
    )
    parser.add_argument("-o", "--output", required=True, help="lung mask (.nii.gz)")
    parser.add_argument(
        "--method",
        choices=("threshold", "lungmask"),
        default="threshold",
        help="threshold: offline classical method (demo/phantoms); lungmask: R231 U-Net (real scans)",
    )
    parser.add_argument(
        "--weights", help="lungmask R231 state-dict file (default: the torch hub cache)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="device for lungmask"
    )
    parser.add_argument("--metadata-table", help="CSV with the spacing of HiPaS NPZ cases")
    parser.add_argument("--series-uid", help="SeriesInstanceUID to read from a DICOM folder holding several series")
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    def work() -> None:
        import numpy as np
        import SimpleITK as sitk

        from hipas_core.atomic import write_image
        from hipas_core.errors import InvalidScanError
        from hipas_core.io import read_ct
        from hipas_core.lungs import lung_masks, resolve_lungmask_weights

        if args.method == "lungmask":
            resolve_lungmask_weights(args.weights)  # fail before reading the scan
        image = read_ct(args.input, metadata_table=args.metadata_table, series_uid=args.series_uid)
        try:
            mask = lung_masks(image, method=args.method, weights=args.weights, device=args.device)
        except InvalidScanError as error:  # the library's message does not know the file
            reason = " ".join(str(error).split())
            raise InvalidScanError(f"{args.input}: {reason}") from None
        volume_ml = np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * float(np.prod(mask.GetSpacing())) / 1000.0
        if volume_ml < MIN_LUNG_MASK_ML:
            raise InvalidScanError(
                f"{args.input}: no lungs found ({args.method} lung mask {volume_ml:.1f} ml, "
                f"less than {MIN_LUNG_MASK_ML:g} ml)"
            )
        write_image(args.output, mask)

    return run_scan_stage(
        stage="lungs",
        scan_id=args.scan_id or default_scan_id(args.input),
        inputs=[args.input],
        outputs=[args.output],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
