"""``hipas phantom`` and ``hipas phantom-cohort`` on the command line."""

from __future__ import annotations

import json

import SimpleITK as sitk

from hipas_core.phantom.cohort import demo_cohort_rows, spec_for_row, workflow_manifest_text

FILES = ("ct.nii.gz", "labels.nii.gz", "levels.nii.gz", "lungs.nii.gz", "truth.json")


def test_cli_writes_five_files_deterministically(hipas, tmp_path):
    args = ("phantom", "--seed", "4", "--size", "small", "--protocol", "ctpa", "--sex", "F", "--age", "61",
            "--copd", "1", "--slice-thickness", "1.25")
    first = hipas(*args, "--out", tmp_path / "a", "--png", check=True)
    assert first.stdout == ""
    hipas(*args, "--out", tmp_path / "b", check=True)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "qc.png").stat().st_size > 10_000
    assert not (tmp_path / "b" / "qc.png").exists()
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    assert truth["spec"]["sex"] == "F" and truth["spec"]["copd"] == 1 and truth["spec"]["protocol"] == "ctpa"
    ct = sitk.ReadImage(str(tmp_path / "a" / "ct.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16
    assert ct.GetSpacing()[2] == 1.25


def test_cli_rejects_bad_values(hipas, tmp_path):
    result = hipas("phantom", "--seed", "1", "--out", tmp_path / "x", "--slice-thickness", "9")
    assert result.returncode == 2
    assert "slice_thickness_mm" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cohort_rows_map_to_phantom_specs():
    rows = demo_cohort_rows(sites=3, scans_per_site=4, seed=1)
    assert rows == demo_cohort_rows(sites=3, scans_per_site=4, seed=1)
    assert len(rows) == 12 and len({r["scan_id"] for r in rows}) == 12
    assert {r["site"] for r in rows} == {"harbin", "mudanjiang", "guangzhou"}
    assert all(r["protocol"] == "NCCT" for r in rows if r["site"] == "mudanjiang")
    row = rows[0]
    spec = spec_for_row(row)
    assert (spec.sex, spec.age, spec.height_cm, spec.seed) == (row["sex"], row["age"], row["height_cm"], row["seed"])


def test_cli_reads_its_row_from_a_manifest(hipas, tmp_path):
    """What the workflow runs: the row's seed, protocol, demographics and thickness, as the manifest
    writes them, give the same phantom as ``spec_for_row`` on the cohort row."""
    rows = demo_cohort_rows(sites=1, scans_per_site=3, seed=5, thick_fraction=0.5)
    row = {**max(rows, key=lambda r: r["slice_thickness_mm"] or 0), "copd": 1}
    manifest = tmp_path / "site.tsv"
    manifest.write_text(workflow_manifest_text([row]))
    hipas("phantom", "--manifest", manifest, "--scan-id", row["scan_id"], "--out", tmp_path / "p", check=True)
    spec = json.loads((tmp_path / "p" / "truth.json").read_text())["spec"]
    expected = spec_for_row(row)
    assert (spec["seed"], spec["sex"], spec["age"], spec["copd"], spec["protocol"]) == (
        expected.seed, expected.sex, expected.age, 1, expected.protocol)
    assert spec["slice_thickness_mm"] == expected.slice_thickness_mm
    missing = hipas("phantom", "--manifest", manifest, "--scan-id", "nobody", "--out", tmp_path / "q")
    assert missing.returncode == 2 and "no row with scan_id 'nobody'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
    alone = hipas("phantom", "--out", tmp_path / "r")
    assert alone.returncode == 2 and "--seed" in alone.stderr


def test_phantom_cohort_cli(hipas, tmp_path):
    hipas("phantom-cohort", "--out", tmp_path, "--sites", "2", "--scans-per-site", "1", "--seed", "3", check=True)
    manifests = sorted((tmp_path / "sites").glob("*.tsv"))
    assert [m.stem for m in manifests] == ["harbin", "mudanjiang"]
    for manifest in manifests:
        lines = manifest.read_text().splitlines()
        header = lines[0].split("\t")
        assert header[:5] == ["scan_id", "path", "sex", "age", "protocol"]
        row = dict(zip(header, lines[1].split("\t"), strict=True))
        assert (manifest.parent / row["path"]).is_file()
        assert row["protocol"] in ("NCCT", "CTPA")
    config = (tmp_path / "config.yaml").read_text()
    assert "harbin:" in config and "manifest: sites/harbin.tsv" in config
