"""``hipas import-labels -i LABELS --ct STD_CT --record STD_JSON -o OUT``: a scan's own
artery/vein labels onto its standardized grid (what the workflow does instead of ``segment`` for
manifest rows that give a ``labels`` file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True,
                        help="label map in the scan's own grid (0 background, 1 artery, 2 vein): NIfTI, NRRD/MHA")
    parser.add_argument("--ct", required=True, help="the scan's standardized CT (hipas normalize output)")
    parser.add_argument("--record", required=True, help="the scan's normalization record (hipas normalize OUT.json)")
    parser.add_argument("-o", "--output", required=True, help="labels in the standardized grid (.nii.gz)")
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    def work() -> None:
        import SimpleITK as sitk

        from hipas_core.atomic import write_image
        from hipas_core.errors import InvalidScanError
        from hipas_core.io import read_labels
        from hipas_core.label_import import labels_to_standard_grid
        from hipas_core.normalize import NormalizationRecord

        labels = read_labels(args.input)
        try:
            record = NormalizationRecord.from_json(Path(args.record).read_text())
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InvalidScanError(f"{args.record}: not a normalization record ({type(error).__name__})") from None
        standard_ct = sitk.ReadImage(str(args.ct))
        write_image(args.output, labels_to_standard_grid(labels, standard_ct=standard_ct, record=record,
                                                         name=str(args.input)))

    return run_scan_stage(
        stage="import_labels",
        scan_id=args.scan_id or default_scan_id(args.input),
        inputs=[args.ct, args.record],
        outputs=[args.output],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
