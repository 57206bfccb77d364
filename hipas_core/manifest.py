"""Site manifests: one tab-separated file per site, a header row, one scan per row.

One reader serves the workflow, which validates every manifest while it plans the DAG, and
``hipas cohort-table``, which takes the demographics from them. The workflow loads this file by
its path, so a controller environment without the installed package (or numpy, torch) still
plans; the module therefore imports nothing but the standard library. Values stay the strings
written in the file. Every error is one line naming the manifest, its line and its column.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class ManifestError(ValueError):
    """A manifest that breaks the rules; the message is one line naming file, line and column."""


@dataclass(frozen=True)
class ManifestRow:
    """One scan of a manifest: its ``site``, the manifest file, the line number (the header is
    line 1) and the values by column name, as written."""

    site: str
    manifest: str
    line: int
    values: dict


def value_checks(schema: Mapping) -> dict:
    """column -> (``"enum"``, set of allowed strings) or (``"pattern"``, compiled regex), from a
    JSON schema of one row (``workflow/schemas/manifest.schema.yaml``)."""
    checks = {}
    for column, spec in schema.get("properties", {}).items():
        if "enum" in spec:
            checks[column] = ("enum", frozenset(spec["enum"]))
        elif "pattern" in spec:
            checks[column] = ("pattern", re.compile(spec["pattern"]))
    return checks


def read_site_manifests(
    sites: Mapping[str, str | os.PathLike],
    *,
    required: Iterable[str],
    checks: Mapping | None = None,
    extra_required: Mapping[str, Iterable[str]] | None = None,
) -> list[ManifestRow]:
    """Read and check the manifests of ``sites`` (site name -> manifest path), in site then row
    order. Checked: the file is readable, the header holds ``required`` (and, per site,
    ``extra_required[site]``), each row has as many fields as the header, each value passes
    ``checks`` (``value_checks``), and scan_id is unique across all sites. Blank lines are
    skipped. Raises ``ManifestError``."""
    checks = checks or {}
    extra_required = extra_required or {}
    required = tuple(required)
    rows: list[ManifestRow] = []
    first_seen: dict[str, str] = {}
    for site, manifest in sites.items():
        manifest = os.fspath(manifest)
        try:
            with open(manifest, newline="") as handle:
                lines = list(csv.reader(handle, delimiter="\t"))
        except OSError:
            of_site = f" of site {site!r}" if site else ""
            raise ManifestError(f"{manifest}: manifest{of_site} not found or not readable") from None
        reader = iter(lines)
        header = next(reader, None) or []
        missing = [c for c in (*required, *extra_required.get(site, ())) if c not in header]
        if missing:
            raise ManifestError(f"{manifest}: line 1: missing column(s) {', '.join(missing)}")
        column_checks = [(header.index(c), c, kind, allowed) for c, (kind, allowed) in checks.items() if c in header]
        for line, fields in enumerate(reader, start=2):
            if not fields or fields == [""]:
                continue
            if len(fields) != len(header):
                raise ManifestError(f"{manifest}: line {line}: {len(fields)} fields, the header has {len(header)}")
            for index, column, kind, allowed in column_checks:
                value = fields[index]
                ok = value in allowed if kind == "enum" else allowed.fullmatch(value) is not None
                if not ok:
                    want = " or ".join(sorted(allowed)) if kind == "enum" else allowed.pattern
                    raise ManifestError(f"{manifest}: line {line}, column {column}: {value!r} is not allowed "
                                        f"(expected {want})")
            values = dict(zip(header, fields, strict=True))
            scan_id = values.get("scan_id", "")
            if scan_id in first_seen:
                raise ManifestError(f"{manifest}: line {line}, column scan_id: {scan_id!r} already used in "
                                    f"{first_seen[scan_id]}")
            first_seen[scan_id] = f"{manifest} line {line}"
            rows.append(ManifestRow(site=site, manifest=manifest, line=line, values=values))
    return rows


def find_row(manifest: str | os.PathLike, scan_id: str, *, required: Iterable[str] = ("scan_id",)) -> ManifestRow:
    """The row of ``scan_id`` in one manifest; ``ManifestError`` when it is not there."""
    for row in read_site_manifests({"": manifest}, required=required):
        if row.values["scan_id"] == scan_id:
            return row
    raise ManifestError(f"{os.fspath(manifest)}: no row with scan_id {scan_id!r}")


__all__ = ["ManifestError", "ManifestRow", "find_row", "read_site_manifests", "value_checks"]
