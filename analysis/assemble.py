"""Assemble the cohort table from per-scan workflow outputs and the site manifests.

Per scan the workflow leaves, under ``SCANS_DIR/<scan_id>/``, ``morphometry.parquet`` (one row,
``hipas_core.morphometry``) and ``std.json`` (the normalization record, which holds the slice
thickness of the scan as acquired). Either may be an exclusion marker
(``hipas_core.exclusion``): such a scan becomes a row of the exclusions table instead. So does a
scan whose measured lung volume lies outside the range the analysis accepts
(``analysis.cohort.LUNG_VOLUME_RANGE_L``; stage ``qc``): a failed segmentation or lung mask of one
scan must not stop the Figure 4 analysis of the whole cohort.

The cohort table has the columns of ARCHITECTURE.md "Cohort table": ``scan_id``, ``site``,
``sex``, ``age``, ``protocol``, ``slice_thickness_mm``, ``lung_volume_l`` (= lung_volume_ml /
1000), ``SLPA``/``SLPV`` (artery/vein skeleton length in standardized voxels), ``BCPA``/``BCPV``
(bifurcation counts), the six disease flags (nullable 0/1) and the remaining morphometry columns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from analysis.cohort import LUNG_VOLUME_RANGE_L
from hipas_core.conventions import COHORT_COLUMNS, DISEASE_FLAGS
from hipas_core.conventions import MANIFEST_REQUIRED as _MANIFEST_COLUMNS
from hipas_core.errors import InvalidInputError
from hipas_core.exclusion import read_marker
from hipas_core.manifest import ManifestError, read_site_manifests

# the manifest columns the cohort table takes (the scans' paths are the workflow's business)
MANIFEST_REQUIRED: tuple[str, ...] = tuple(c for c in _MANIFEST_COLUMNS if c != "path")
RENAMED: dict[str, str] = {"artery_sl_vox": "SLPA", "vein_sl_vox": "SLPV", "artery_bc": "BCPA", "vein_bc": "BCPV"}
LEADING_COLUMNS: tuple[str, ...] = COHORT_COLUMNS
EXCLUSION_COLUMNS: tuple[str, ...] = ("scan_id", "site", "stage", "reason")


def read_manifests(sites: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """All manifest rows (strings as written) with a ``site`` column, in site then row order,
    read by the workflow's own manifest reader (``hipas_core.manifest``)."""
    try:
        rows = read_site_manifests(sites, required=MANIFEST_REQUIRED)
    except ManifestError as error:
        raise InvalidInputError(str(error)) from None
    columns = list(dict.fromkeys(c for row in rows for c in row.values))
    return pd.DataFrame([{**row.values, "site": row.site} for row in rows], columns=[*columns, "site"], dtype=str).fillna("")


def assemble_cohort(
    sites: Mapping[str, str | os.PathLike], scans_dir: str | os.PathLike
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cohort table and the exclusions table (``scan_id, site, stage, reason``).

    ``sites`` maps site name -> manifest TSV; ``scans_dir`` holds one folder per scan id.
    Scans keep manifest order. Raises ``InvalidInputError`` when a per-scan file is missing.
    """
    manifests = read_manifests(sites)
    scans_dir = Path(scans_dir)
    rows, exclusions = [], []
    for record in manifests.to_dict("records"):
        scan_id, folder = record["scan_id"], scans_dir / record["scan_id"]
        morphometry, std_record = folder / "morphometry.parquet", folder / "std.json"
        for path in (morphometry, std_record):
            if not path.is_file():
                raise InvalidInputError(f"{path}: missing (has the workflow run for scan {scan_id}?)")
        marker = read_marker(morphometry) or read_marker(std_record)
        if marker is not None:
            exclusions.append({"scan_id": scan_id, "site": record["site"], "stage": marker.stage, "reason": marker.reason})
            continue
        row = pd.read_parquet(morphometry).iloc[0].to_dict()
        implausible = _implausible(row)
        if implausible:
            exclusions.append({"scan_id": scan_id, "site": record["site"], "stage": "qc", "reason": implausible})
            continue
        rows.append({**_demographics(record), "slice_thickness_mm": _slice_thickness(std_record), **row,
                     "scan_id": scan_id})
    excluded = pd.DataFrame(exclusions, columns=list(EXCLUSION_COLUMNS))
    if not rows:
        return pd.DataFrame(columns=list(LEADING_COLUMNS)), excluded
    cohort = pd.DataFrame(rows).rename(columns=RENAMED)
    cohort["lung_volume_l"] = cohort["lung_volume_ml"] / 1000.0
    rest = [c for c in cohort.columns if c not in LEADING_COLUMNS]
    return cohort[[*LEADING_COLUMNS, *rest]], excluded


def _demographics(record: Mapping[str, str]) -> dict:
    def flag(value: str):
        return pd.NA if value == "" else int(value)

    return {
        "site": record["site"],
        "sex": record["sex"] or None,
        "age": float(record["age"]) if record["age"] != "" else float("nan"),
        "protocol": record["protocol"],
        **{f: flag(record.get(f, "")) for f in DISEASE_FLAGS},
    }


def _implausible(row: Mapping) -> str:
    """Why a morphometry row cannot enter the analysis ('' when it can)."""
    low, high = LUNG_VOLUME_RANGE_L
    litres = float(row["lung_volume_ml"]) / 1000.0
    if not low <= litres <= high:
        return (f"lung volume minus vessels {litres:.3g} L outside [{low:g}, {high:g}] L "
                f"(lungs {float(row['lung_total_ml']) / 1000.0:.3g} L): failed segmentation or lung mask")
    return ""


def _slice_thickness(std_record: Path) -> float:
    """Slice thickness as acquired (the normalization record's input thickness)."""
    record = json.loads(std_record.read_text())
    try:
        return float(record["slice_thickness_mm"])
    except (KeyError, TypeError, ValueError):
        raise InvalidInputError(f"{std_record}: no slice_thickness_mm") from None
