"""Cohort table assembly from per-scan outputs (analysis.assemble, `hipas cohort-table`)."""

from __future__ import annotations

import pandas as pd

from analysis.assemble import assemble_cohort
from hipas_core.atomic import write_json, write_parquet
from hipas_core.exclusion import Exclusion, write_marker
from hipas_core.morphometry import ROW_COLUMNS

MANIFEST = (
    "scan_id\tpath\tsex\tage\tprotocol\tcardiomegaly\tcalcification\tpah\tnodule\tembolism\tcopd\n"
    "a1\ta1.nii.gz\tM\t61\tNCCT\t0\t1\t0\t0\t0\t\n"
    "a2\ta2.nii.gz\tF\t48\tCTPA\t1\t0\t0\t1\t0\t0\n"
    "a3\ta3.nii.gz\tF\t55\tNCCT\t0\t0\t0\t0\t0\t1\n"
    "a4\ta4.nii.gz\tM\t70\tNCCT\t0\t0\t1\t0\t0\t0\n"
)


def _row(scan_id: str, lung_volume_ml: float) -> pd.DataFrame:
    values = {"scan_id": scan_id, "lung_volume_ml": lung_volume_ml, "lung_total_ml": lung_volume_ml + 300.0}
    row = {name: values.get(name, 7 if dtype == "int64" else 1.5) for name, dtype in ROW_COLUMNS}
    return pd.DataFrame([row]).astype(dict(ROW_COLUMNS))


def _scan(scans, scan_id, *, lung_volume_ml=4200.0, thickness=1.25, excluded=None):
    folder = scans / scan_id
    if excluded:
        write_marker(folder / "std.json", excluded)
        write_marker(folder / "morphometry.parquet", excluded)
        return
    write_json(folder / "std.json", {"slice_thickness_mm": thickness})
    write_parquet(folder / "morphometry.parquet", _row(scan_id, lung_volume_ml))


def test_rows_join_demographics_and_bad_scans_become_exclusions(tmp_path):
    manifest = tmp_path / "site.tsv"
    manifest.write_text(MANIFEST)
    scans = tmp_path / "scans"
    _scan(scans, "a1", thickness=2.5)
    _scan(scans, "a2")
    _scan(scans, "a3", excluded=Exclusion(scan_id="a3", stage="normalize", reason="a3.nii.gz: 2D image"))
    _scan(scans, "a4", lung_volume_ml=3.0)  # a segmentation that swallowed the lungs

    cohort, exclusions = assemble_cohort({"north": manifest}, scans)

    assert cohort["scan_id"].tolist() == ["a1", "a2"]
    assert cohort["slice_thickness_mm"].tolist() == [2.5, 1.25]
    assert cohort["lung_volume_l"].tolist() == [4.2, 4.2]
    assert cohort["SLPA"].tolist() == [7, 7] and "artery_sl_mm" in cohort.columns
    assert cohort["calcification"].tolist() == [1, 0] and pd.isna(cohort["copd"].iloc[0])
    assert exclusions["scan_id"].tolist() == ["a3", "a4"]
    assert exclusions["stage"].tolist() == ["normalize", "qc"]
    assert "2D image" in exclusions["reason"][0] and "lung volume" in exclusions["reason"][1]
