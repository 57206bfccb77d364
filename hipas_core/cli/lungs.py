"""``hipas lungs -i CT -o MASK.nii.gz [--method threshold|lungmask]``: lung mask of a CT.

Writes a uint8 mask in the CT's own grid: 0 background, 1 right lung, 2 left lung. ``threshold``
(default) needs no weights and suits the demo phantoms; real scans should use ``lungmask``
(R231 weights from ``--weights`` or the torch hub cache; nothing is downloaded).
"""

from __future__ import annotations

import argparse

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage


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
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    def work() -> None:
        from hipas_core.atomic import write_image
        from hipas_core.io import read_ct
        from hipas_core.lungs import lung_masks, resolve_lungmask_weights

        if args.method == "lungmask":
            resolve_lungmask_weights(args.weights)  # fail before reading the scan
        image = read_ct(args.input, metadata_table=args.metadata_table)
        mask = lung_masks(image, method=args.method, weights=args.weights, device=args.device)
        write_image(args.output, mask)

    return run_scan_stage(
        stage="lungs",
        scan_id=args.scan_id or default_scan_id(args.input),
        inputs=[args.input],
        outputs=[args.output],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
