"""``hipas phantom-cohort``: a small multi-site demo cohort of phantoms with manifests and config."""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="cohort folder")
    parser.add_argument("--sites", type=int, default=2, help="number of sites (1-6, Table 1 order)")
    parser.add_argument("--scans-per-site", type=int, default=3, help="scans per site")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed")
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--png", action="store_true", help="also write each scan's qc.png")


def run(args: argparse.Namespace) -> int:
    from hipas_core.atomic import write_text
    from hipas_core.conventions import MANIFEST_COLUMNS
    from hipas_core.errors import InvalidInputError
    from hipas_core.phantom import generate_phantom
    from hipas_core.phantom.cohort import demo_cohort_rows, spec_for_row

    if args.scans_per_site < 1:
        raise InvalidInputError(f"phantom-cohort: --scans-per-site must be >= 1, got {args.scans_per_site}")
    out = Path(args.out)
    rows = demo_cohort_rows(sites=args.sites, scans_per_site=args.scans_per_site, seed=args.seed)
    by_site: dict[str, list[dict]] = {}
    for row in rows:
        generate_phantom(spec_for_row(row, size=args.size)).write(out / "scans" / row["scan_id"], png=args.png)
        by_site.setdefault(row["site"], []).append(row)
    for site, site_rows in by_site.items():
        lines = ["\t".join(MANIFEST_COLUMNS)]
        for row in site_rows:
            values = {**row, "path": f"../scans/{row['scan_id']}/ct.nii.gz"}
            lines.append("\t".join(str(values[c]) for c in MANIFEST_COLUMNS))
        write_text(out / "sites" / f"{site}.tsv", "\n".join(lines) + "\n")
    config = ["sites:"] + [f"  {site}:\n    manifest: sites/{site}.tsv" for site in by_site]
    write_text(out / "config.yaml", "\n".join(config) + "\n")
    return 0
