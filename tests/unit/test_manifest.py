"""hipas_core.manifest: the one manifest reader of the workflow and the cohort table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hipas_core.manifest import ManifestError, find_row, read_site_manifests, value_checks

MANIFEST_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "manifest.schema.yaml"
HEADER = "scan_id\tpath\tsex\tage\tprotocol\tcopd"


@pytest.fixture
def checks():
    return value_checks(yaml.safe_load(MANIFEST_SCHEMA_PATH.read_text()))


def write(path, *rows):
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_rows_keep_site_line_and_strings(tmp_path, checks):
    a = write(tmp_path / "a.tsv", "a1\tx.nii.gz\tF\t61.5\tCTPA\t1", "", "a2\ty.nii.gz\tM\t40\tNCCT\t")
    b = write(tmp_path / "b.tsv", "b1\tz.nii.gz\tM\t70\tNCCT\t0")
    rows = read_site_manifests({"one": a, "two": b}, required=("scan_id", "path"), checks=checks)
    assert [(r.site, r.line, r.values["scan_id"]) for r in rows] == [("one", 2, "a1"), ("one", 4, "a2"), ("two", 2, "b1")]
    assert rows[0].values["age"] == "61.5" and rows[1].values["copd"] == ""
    assert find_row(b, "b1").line == 2


@pytest.mark.parametrize(("rows", "message"), [
    (("a1\tx\tX\t61\tCTPA\t1",), "line 2, column sex: 'X' is not allowed (expected F or M)"),
    (("a1\tx\tF\tsixty\tCTPA\t1",), "line 2, column age: 'sixty' is not allowed"),
    (("a1\tx\tF\t61\tCTPA",), "line 2: 5 fields, the header has 6"),
    (("a1\tx\tF\t61\tCTPA\t1", "a1\ty\tM\t50\tNCCT\t0"), "line 3, column scan_id: 'a1' already used in"),
])
def test_errors_name_the_file_line_and_column(tmp_path, checks, rows, message):
    path = write(tmp_path / "a.tsv", *rows)
    with pytest.raises(ManifestError) as error:
        read_site_manifests({"one": path}, required=("scan_id",), checks=checks)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_and_columns(tmp_path):
    with pytest.raises(ManifestError, match="manifest of site 'one' not found or not readable"):
        read_site_manifests({"one": tmp_path / "none.tsv"}, required=())
    path = write(tmp_path / "a.tsv", "a1\tx\tF\t61\tCTPA\t1")
    with pytest.raises(ManifestError, match=r"line 1: missing column\(s\) seed, height_cm"):
        read_site_manifests({"one": path}, required=("scan_id",), extra_required={"one": ("seed", "height_cm")})
    with pytest.raises(ManifestError, match="no row with scan_id 'b9'"):
        find_row(path, "b9")
