"""``hipas qc``: the per-scan QC picture (orthogonal slices with labels, projection of the trees).

With ``--exclude-invalid`` an excluded scan gets a picture that states the stage and the reason
(not a JSON marker): the QC picture is an end product, browsed by people and shown in the
report, and nothing downstream reads it.
"""

from __future__ import annotations

import argparse

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, metavar="CT", help="CT image (NIfTI/NRRD/MHA)")
    parser.add_argument("--labels", required=True, metavar="L", help="artery/vein label map (0/1/2)")
    parser.add_argument("-o", "--output", required=True, metavar="QC.png", help="PNG to write")
    parser.add_argument("--title", help="figure title (default: the scan id)")
    add_scan_stage_options(parser)


def _read(path: str):
    from pathlib import Path

    import SimpleITK as sitk

    from hipas_core.errors import InvalidScanError

    if not Path(path).is_file():
        raise InvalidScanError(f"{path}: no such file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = " ".join(str(error).split()).split("ERROR:")[-1].strip()[:200]
        raise InvalidScanError(f"{path}: cannot read image ({reason})") from None


def _exclusion_picture(path, exclusion) -> None:
    from hipas_core.qc import render_exclusion_png

    render_exclusion_png(exclusion, path)


def run(args: argparse.Namespace) -> int:
    scan_id = args.scan_id or default_scan_id(args.input)

    def work() -> None:
        import SimpleITK as sitk

        from hipas_core.conventions import same_grid
        from hipas_core.errors import InvalidScanError
        from hipas_core.qc import render_qc_png

        ct = _read(args.input)
        labels = _read(args.labels)
        if ct.GetDimension() != 3:
            raise InvalidScanError(f"{args.input}: not a 3-D image")
        # labels on another grid (size or exact spacing) are resampled onto the CT's
        if not same_grid(labels, ct, spacing_rtol=0.0, spacing_atol=0.0, origin_atol=None, direction_atol=None):
            labels = sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        render_qc_png(ct, sitk.Cast(labels, sitk.sitkUInt8), args.output, title=args.title or scan_id)

    return run_scan_stage(stage="qc", scan_id=scan_id, inputs=[args.input, args.labels], outputs=[args.output],
                          exclude_invalid=args.exclude_invalid, work=work,
                          write_exclusion=_exclusion_picture)
