"""``hipas phantom``: write one synthetic chest-CT phantom with exact ground truth."""

from __future__ import annotations

import argparse

from hipas_core.conventions import DISEASE_FLAGS


def _flag(value: str) -> int:
    if value not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")
    return int(value)


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    """Demographic and acquisition overrides (unset = drawn from the seed)."""
    parser.add_argument("--sex", choices=("M", "F"), help="sex (default: drawn from the seed)")
    parser.add_argument("--age", type=float, help="age in years")
    parser.add_argument("--height-cm", type=float, help="body height in cm (drives lung size)")
    for flag in DISEASE_FLAGS:
        parser.add_argument(f"--{flag}", type=_flag, metavar="0|1", help=f"{flag} flag")
    parser.add_argument("--slice-thickness", type=float, metavar="MM", dest="slice_thickness_mm",
                        help="slice thickness = slice spacing in mm (0.625-5)")
    parser.add_argument("--inplane-spacing", type=float, metavar="MM", dest="inplane_spacing_mm",
                        help="in-plane pixel spacing in mm (0.55-0.85)")
    parser.add_argument("--dose", type=float, metavar="MGY", help="CTDIvol in mGy (noise ~ 1/sqrt(dose))")
    parser.add_argument("--contrast-phase", type=float, help="CTPA venous enhancement 0..1")
    parser.add_argument("--arterial-hu", type=float, help="CTPA arterial enhancement in HU")
    parser.add_argument("--kernel", choices=("smooth", "sharp"),
                        help="reconstruction kernel: smooth (soft tissue) or sharp (lung; edge overshoot, near-white noise)")


def spec_overrides(args: argparse.Namespace) -> dict:
    names = ["sex", "age", "height_cm", *DISEASE_FLAGS, "slice_thickness_mm", "inplane_spacing_mm",
             "dose", "contrast_phase", "arterial_hu", "kernel"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, help="phantom seed (same seed, same bytes); required without --manifest")
    parser.add_argument("--manifest", metavar="TSV",
                        help="take seed, protocol, demographics, disease flags and slice thickness from this phantom "
                        "site manifest's row --scan-id (what the workflow does); options given as well override it")
    parser.add_argument("--scan-id", help="the manifest row to generate (with --manifest)")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="small: reduced chest <= 192^2 x ~160 (tests, demo, training); full: adult 512^2")
    parser.add_argument("--protocol", choices=("ncct", "ctpa"), help="acquisition protocol (default: ncct)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--png", action="store_true", help="also write the QC picture qc.png")
    add_spec_options(parser)


def _manifest_spec(args: argparse.Namespace) -> tuple[int, str, dict]:
    """(seed, protocol, spec overrides) of ``--manifest``'s row ``--scan-id``."""
    from hipas_core.errors import InvalidInputError
    from hipas_core.manifest import ManifestError, find_row
    from hipas_core.phantom.cohort import row_overrides

    if not args.scan_id:
        raise InvalidInputError(f"{args.manifest}: --manifest needs --scan-id (the row to generate)")
    try:
        row = find_row(args.manifest, args.scan_id, required=("scan_id", "seed", "protocol", "sex", "age", "height_cm"))
    except ManifestError as error:
        raise InvalidInputError(str(error)) from None
    where = f"{args.manifest}: line {row.line}"
    try:
        return (int(row.values["seed"]), row.values["protocol"].lower(), row_overrides(row.values))
    except (KeyError, ValueError) as error:
        raise InvalidInputError(f"{where}: not a phantom row ({error})") from None


def run(args: argparse.Namespace) -> int:
    from hipas_core.errors import InvalidInputError
    from hipas_core.phantom import PhantomSpec, generate_phantom

    seed, protocol, overrides = args.seed, args.protocol, {}
    if args.manifest:
        manifest_seed, protocol_of_row, overrides = _manifest_spec(args)
        seed = manifest_seed if seed is None else seed
        protocol = protocol or protocol_of_row
    elif args.scan_id:
        raise InvalidInputError("--scan-id needs --manifest")
    if seed is None:
        raise InvalidInputError("give --seed, or --manifest with --scan-id")
    spec = PhantomSpec.from_seed(seed, size=args.size, protocol=protocol or "ncct", **{**overrides, **spec_overrides(args)})
    generate_phantom(spec).write(args.out, png=args.png)
    return 0
