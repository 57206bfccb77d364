"""``hipas prepare-training``: one annotated CT (or one phantom) as a prepared training case.

    hipas prepare-training --ct CT --labels LABELS --out DIR [--case-id ID] [--protocol ncct|ctpa]
                           [--levels L] [--lungs M] [--metadata-table CSV] [--synthetic-ncct]
                           [--exclude-invalid]
    hipas prepare-training --phantom-seed N [--protocol ncct|ctpa] [--slice-thickness MM]
                           [--phantom-size small|full] --out DIR

CT: a NIfTI/NRRD/MHA file, a DICOM folder, or a HiPaS ``ct_scan/NNN.npz`` (with labels
``annotation/artery/NNN.npz``, the vein mask read beside it; spacing from ``--metadata-table``);
labels: 0 background, 1 artery, 2 vein on the CT's grid. The case goes through
``hipas_core.sts.data.prepare_case`` (standardized grid, lung crop, HU window, vesselness at
``--vesselness-sigmas``, levels from the labels unless ``--levels`` is given, territories,
weights) and is written as the case folder DIR (``hipas_core.sts.prepared``: one ``.npy`` per
array + ``case.json``), atomically. A phantom is the phantom of ``hipas phantom --seed N`` (small unless
``--phantom-size full``; protocol default: odd seeds NCCT, even CTPA), prepared exactly as ``hipas train`` prepares it.
Slices thicker than 2 mm go through I2SR (``--i2sr-model``, default the shipped ``i2sr-demo.pt``,
as ``hipas segment``; ``none``: trilinear z), so a network trains on the input it will see.
``--synthetic-ncct``: a CTPA case also stores the input channels of its synthetic non-contrast
copy, which ``hipas train --prepared --synthetic-ncct P`` needs.

A case that cannot be used (unreadable, labels not on the CT grid, empty labels, no lungs) is
one error line naming the file and the problem, exit 2, and nothing is written; with
``--exclude-invalid`` DIR becomes an excluded case (only ``case.json``, an exclusion marker)
and the exit status is 0, so a training set can still be built.
"""

from __future__ import annotations

import argparse

from hipas_core.cli._training_options import add_i2sr_option, i2sr_model_path, i2sr_record
from hipas_core.conventions import DEMO_VESSELNESS_SIGMAS_MM

MARGIN_MM = 10.0  # prepare_case's default lung-box margin


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="the case folder to write")
    parser.add_argument("--ct", help="CT: NIfTI/NRRD/MHA, DICOM folder or HiPaS ct_scan/NNN.npz")
    parser.add_argument("--labels", help="artery/vein label map on the CT's grid (or HiPaS annotation/artery/NNN.npz)")
    parser.add_argument("--levels", help="branch-level map on the CT's grid (default: derived from the labels)")
    parser.add_argument("--lungs", help="lung mask on the CT's grid (default: the threshold lung mask)")
    parser.add_argument("--metadata-table", metavar="CSV", help="spacing of HiPaS NPZ cases (see hipas_core.io)")
    parser.add_argument("--phantom-seed", type=int, metavar="N", help="prepare the small phantom of this seed instead")
    parser.add_argument("--protocol", choices=("ncct", "ctpa"),
                        help="acquisition protocol (phantoms: default odd seeds ncct, even ctpa; scans: recorded)")
    parser.add_argument("--slice-thickness", type=float, metavar="MM", help="phantom slice thickness (default: the seed's)")
    parser.add_argument("--phantom-size", choices=("small", "full"), default="small",
                        help="phantom size: small (reduced chest, default) or full (adult chest, 512 matrix)")
    parser.add_argument("--case-id", help="case id (default: the CT's file name, or the phantom's cache name)")
    parser.add_argument("--vesselness-sigmas", type=float, nargs="+", default=DEMO_VESSELNESS_SIGMAS_MM,
                        help="vesselness scales (mm)")
    parser.add_argument("--synthetic-ncct", action="store_true",
                        help="a CTPA case also stores its synthetic non-contrast copy (for hipas train --prepared "
                        "--synthetic-ncct P)")
    add_i2sr_option(parser)
    parser.add_argument("--exclude-invalid", action="store_true",
                        help="on an unusable case write an excluded case folder and exit 0 instead of failing")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hipas_core.cli._scan_stage import default_scan_id, run_scan_stage
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.prepared import STAGE, write_excluded_case

    if args.phantom_seed is not None:
        if args.ct or args.labels or args.levels or args.lungs:
            raise InvalidInputError("--phantom-seed prepares a phantom: give no --ct, --labels, --levels or --lungs")
        return _prepare_phantom(args)
    if args.slice_thickness is not None or args.phantom_size != "small":
        raise InvalidInputError("--slice-thickness and --phantom-size apply to --phantom-seed only")
    if not args.ct or not args.labels:
        raise InvalidInputError("give --ct and --labels (or --phantom-seed)")
    case_id = args.case_id or default_scan_id(args.ct)
    inputs = [p for p in (args.ct, args.labels, args.levels, args.lungs) if p]
    return run_scan_stage(
        stage=STAGE, scan_id=case_id, inputs=inputs, outputs=[Path(args.out)],
        exclude_invalid=args.exclude_invalid, work=lambda: _prepare_scan(args, case_id),
        write_exclusion=write_excluded_case,
    )


def _settings(args: argparse.Namespace, i2sr: str | None, **extra) -> dict:
    from hipas_core.conventions import HU_WINDOW, STANDARD_SPACING

    return {"vesselness_sigmas_mm": list(args.vesselness_sigmas), "margin_mm": MARGIN_MM,
            "hu_window": list(HU_WINDOW), "standard_spacing_mm": list(STANDARD_SPACING),
            "synthetic_ncct": bool(args.synthetic_ncct), "i2sr": i2sr_record(i2sr),
            "noise_harmonization": "auto", **extra}  # hipas_core.noise, as hipas segment does it


def _synthetic_ncct_sigmas(args: argparse.Namespace) -> tuple[float, ...] | None:
    return tuple(args.vesselness_sigmas) if args.synthetic_ncct else None


def _prepare_phantom(args: argparse.Namespace) -> int:
    from hipas_core.sts.phantom_cases import phantom_case
    from hipas_core.sts.prepared import write_prepared_case

    protocol = args.protocol or ("ncct" if args.phantom_seed % 2 else "ctpa")
    i2sr = i2sr_model_path(args)
    case = phantom_case(args.phantom_seed, protocol=protocol, slice_thickness_mm=args.slice_thickness,
                        size=args.phantom_size, vesselness_sigmas_mm=tuple(args.vesselness_sigmas), i2sr_model=i2sr)
    if args.case_id:
        case.name = args.case_id
    source = {"kind": "phantom", "seed": args.phantom_seed, "size": args.phantom_size, "protocol": protocol,
              "slice_thickness_mm": case.meta.get("slice_thickness_mm")}
    record = write_prepared_case(case, args.out, source=source,
                                 settings=_settings(args, i2sr, levels="phantom truth", lungs="phantom truth"),
                                 synthetic_ncct_sigmas_mm=_synthetic_ncct_sigmas(args))
    print(f"{args.out}: case {record['case_id']}, {'x'.join(map(str, record['shape']))} voxels")
    return 0


def _prepare_scan(args: argparse.Namespace, case_id: str) -> None:
    import SimpleITK as sitk

    from hipas_core.conventions import META_SOURCE_FORMAT
    from hipas_core.io import read_ct, read_labels
    from hipas_core.sts.data import loaded_i2sr_model, prepare_case
    from hipas_core.sts.prepared import check_labels_on_ct_grid, write_prepared_case

    ct = read_ct(args.ct, metadata_table=args.metadata_table)
    labels = read_labels(args.labels, metadata_table=args.metadata_table)
    check_labels_on_ct_grid(ct, labels, labels_path=args.labels)
    extra = {}
    for name in ("levels", "lungs"):
        path = getattr(args, name)
        if path:
            extra[name] = read_labels(path, metadata_table=args.metadata_table)
            check_labels_on_ct_grid(ct, extra[name], labels_path=path, require_voxels=False)
            extra[name] = sitk.Cast(extra[name], sitk.sitkUInt8)
    meta = {"protocol": args.protocol} if args.protocol else {}
    i2sr = i2sr_model_path(args)
    case = prepare_case(ct, labels, extra.get("levels"), extra.get("lungs"), name=case_id,
                        vesselness_sigmas_mm=tuple(args.vesselness_sigmas), margin_mm=MARGIN_MM, meta=meta,
                        i2sr_model=None if i2sr is None else loaded_i2sr_model(i2sr))
    source = {"kind": ct.GetMetaData(META_SOURCE_FORMAT), "protocol": args.protocol,
              "spacing_mm": list(ct.GetSpacing()[::-1]), "size_zyx": list(ct.GetSize()[::-1])}
    settings = _settings(args, i2sr, levels="given" if args.levels else "derived (hipas_core.levels)",
                         lungs="given" if args.lungs else "threshold")
    record = write_prepared_case(case, args.out, source=source, settings=settings,
                                 synthetic_ncct_sigmas_mm=_synthetic_ncct_sigmas(args))
    print(f"{args.out}: case {record['case_id']}, {'x'.join(map(str, record['shape']))} voxels")
