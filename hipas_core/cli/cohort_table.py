"""``hipas cohort-table``: join per-scan morphometry rows with the site manifests.

    hipas cohort-table --site NAME=MANIFEST.tsv [--site ...] --scans-dir results/scans \
        -o metrics.parquet --exclusions exclusions.csv

Reads ``SCANS_DIR/<scan_id>/morphometry.parquet`` and ``std.json`` for every manifest row;
scans whose outputs are exclusion markers go to the exclusions CSV (scan_id, site, stage,
reason) and the table is built from the rest. Both files are written atomically.
"""

from __future__ import annotations

import argparse


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", action="append", required=True, metavar="NAME=MANIFEST",
                        help="a site and its manifest TSV (repeat per site)")
    parser.add_argument("--scans-dir", required=True, help="folder with one subfolder per scan id")
    parser.add_argument("-o", "--output", required=True, help="cohort table (.parquet)")
    parser.add_argument("--exclusions", required=True, help="exclusions table (.csv)")


def run(args: argparse.Namespace) -> int:
    from analysis.assemble import assemble_cohort
    from hipas_core.atomic import write_parquet, write_text
    from hipas_core.errors import InvalidInputError
    from hipas_core.provenance import provenance

    sites = {}
    for item in args.site:
        name, sep, manifest = item.partition("=")
        if not sep or not name or not manifest:
            raise InvalidInputError(f"--site {item!r}: expected NAME=MANIFEST")
        sites[name] = manifest
    cohort, exclusions = assemble_cohort(sites, args.scans_dir)
    write_parquet(args.output, cohort, provenance(sites=sites, scans_dir=args.scans_dir,
                                                 excluded=len(exclusions)))
    write_text(args.exclusions, exclusions.to_csv(index=False))
    print(f"cohort table: {len(cohort)} scans, {len(exclusions)} excluded")
    return 0
