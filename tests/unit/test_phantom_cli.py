"""``hipas phantom`` and ``hipas phantom-cohort`` on the command line."""

from __future__ import annotations

import json

import SimpleITK as sitk

from hipas_core.phantom.cohort import demo_cohort_rows, phantom_arguments, spec_for_row

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


def test_cohort_rows_map_to_phantom_arguments():
    rows = demo_cohort_rows(sites=3, scans_per_site=4, seed=1)
    assert rows == demo_cohort_rows(sites=3, scans_per_site=4, seed=1)
    assert len(rows) == 12 and len({r["scan_id"] for r in rows}) == 12
    assert {r["site"] for r in rows} == {"harbin", "mudanjiang", "guangzhou"}
    assert all(r["protocol"] == "NCCT" for r in rows if r["site"] == "mudanjiang")
    row = rows[0]
    args = phantom_arguments(row)
    assert args[args.index("--sex") + 1] == row["sex"]
    spec = spec_for_row(row)
    assert (spec.sex, spec.age, spec.height_cm, spec.seed) == (row["sex"], row["age"], row["height_cm"], row["seed"])


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
