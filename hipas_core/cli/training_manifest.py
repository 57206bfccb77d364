"""``hipas training-manifest``: the manifest of a prepared training set.

    hipas training-manifest --cases DIR [DIR ...] -o MANIFEST.tsv [--val ID,ID,...]

Each DIR is a prepared case folder (``hipas prepare-training``) or a folder of them. The manifest
(``hipas_core.sts.training_set``) lists every case with its id, folder, split (``train``;
``val`` for the ids given with ``--val``; ``excluded`` for an excluded case, with the reason),
shape, spacing and protocol; ``hipas train --prepared MANIFEST.tsv`` trains on the train split
and validates on the val split.
"""

from __future__ import annotations

import argparse


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", nargs="+", required=True, metavar="DIR",
                        help="prepared case folders, or folders holding them")
    parser.add_argument("-o", "--out", required=True, metavar="TSV", help="the manifest to write")
    parser.add_argument("--val", default="", metavar="IDS",
                        help="comma-separated case ids held out for validation (default: none)")


def run(args: argparse.Namespace) -> int:
    from hipas_core.sts.training_set import build_manifest, case_folders

    val_ids = [v.strip() for v in args.val.split(",") if v.strip()]
    result = build_manifest(case_folders(args.cases), val_ids=val_ids, destination=args.out)
    print(f"{args.out}: {len(result.train)} train, {len(result.val)} val, {len(result.excluded)} excluded case(s)")
    return 0
