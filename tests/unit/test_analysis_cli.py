"""Cohort validation (one-line errors, exit 2), the synth-cohort and figure4 commands end to end,
byte-identical reruns, and the HTML report rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.cohort import REQUIRED_COLUMNS, load_cohort, validate_cohort
from analysis.report import write_figure4
from analysis.synthetic import synthesize_cohort
from hipas_core.cli import main as hipas_main
from hipas_core.errors import InvalidInputError

FIGURE4_FILES = [f"{name}.{ext}" for name in ("fig4a_sex", "fig4b_age", "fig4c_lung_volume", "fig4d_diseases",
                                               "fig4ef_regression") for ext in ("csv", "png", "pdf")] + [
    "table1_sites.csv", "sensitivity_hc3_site.csv", "chi_square_tertiles.csv", "vif.csv", "fdr_bh.csv",
    "provenance.json", "report.html"]


@pytest.fixture(scope="module")
def small_cohort_csv(tmp_path_factory) -> Path:
    frame, _ = synthesize_cohort(n=200, seed=5, missing_rate=0.02)
    path = tmp_path_factory.mktemp("cohort") / "cohort.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def figure4_run(tmp_path_factory, hipas):
    """synth-cohort then figure4 through the console script (as a user runs them)."""
    root = tmp_path_factory.mktemp("figure4")
    cohort = root / "cohort.parquet"
    hipas("synth-cohort", "--n", "1500", "--seed", "3", "--missing-rate", "0.01", "--out", cohort, check=True)
    hipas("figure4", "--cohort", cohort, "--out", root / "out", check=True)
    return cohort, root / "out"


def _broken(source: Path, tmp_path: Path, change) -> Path:
    frame = pd.read_csv(source, dtype={"scan_id": str})
    change(frame)
    path = tmp_path / "broken.csv"
    frame.to_csv(path, index=False)
    return path


def _set(column, row, value):
    def change(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.pop("copd"), r"missing required column\(s\) copd"),
    (_set("sex", 4, "X"), r"row 5, column sex: 'X' is not one of M/F"),
    (_set("cardiomegaly", 9, 2), r"row 10, column cardiomegaly: disease flag must be 0 or 1, got 2"),
    (_set("age", 0, 250), r"row 1, column age: 250 years is outside the plausible range \[0, 120\]"),
    (_set("age", 2, "fifty"), r"row 3, column age: 'fifty' is not a number"),
    (_set("lung_volume_l", 7, 4500.0), r"row 8, column lung_volume_l: .*millilitres"),
    (_set("protocol", 3, "MRI"), r"row 4, column protocol: 'MRI' is not one of NCCT/CTPA"),
    (_set("SLPA", 6, None), r"row 7, column SLPA: missing value"),
], ids=["missing-column", "bad-sex", "flag-not-0-1", "implausible-age", "age-not-number", "lung-volume-ml",
        "bad-protocol", "missing-index"])
def test_malformed_cohort_gives_one_line_and_exit_2(small_cohort_csv, tmp_path, capsys, change, expected):
    """Through the ``hipas`` dispatcher in-process (the console script's own code path)."""
    path = _broken(small_cohort_csv, tmp_path, change)
    out = tmp_path / "out"
    status = hipas_main(["figure4", "--cohort", str(path), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], stderr
    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("content", [None, b"PAR1 this is not parquet", b"\x00\x01garbage"],
                         ids=["absent", "corrupt-parquet", "garbage"])
def test_unreadable_cohort_file_gives_one_line_and_exit_2(tmp_path, capsys, content):
    path = tmp_path / "cohort.parquet"
    if content is not None:
        path.write_bytes(content)
    status = hipas_main(["figure4", "--cohort", str(path), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and str(path) in lines[0], lines


def test_console_script_exit_status_and_single_line(small_cohort_csv, tmp_path, hipas):
    """The same check through the installed console script in a subprocess, once."""
    path = _broken(small_cohort_csv, tmp_path, _set("sex", 0, "male"))
    result = hipas("figure4", "--cohort", path, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == f"hipas figure4: error: {path}: row 1, column sex: 'male' is not one of M/F"


def test_validation_keeps_missing_covariates_and_never_modifies_the_input(small_cohort_csv):
    raw = pd.read_csv(small_cohort_csv, dtype={"scan_id": str})
    before = raw.copy()
    cohort = validate_cohort(raw, source="t")
    pd.testing.assert_frame_equal(raw, before)
    assert len(cohort) == len(raw) and cohort[["age", "sex", "copd"]].isna().any().all()
    assert set(cohort["sex"].dropna()) == {"M", "F"}
    assert cohort["cardiomegaly"].dtype == np.float64
    demo_phantom = raw.assign(lung_volume_l=raw["lung_volume_l"].where(raw.index != 0, 0.3))
    assert validate_cohort(demo_phantom, source="t")["lung_volume_l"][0] == 0.3  # reduced demo chests
    duplicate = raw.copy()
    duplicate.loc[3, "scan_id"] = duplicate.loc[2, "scan_id"]
    with pytest.raises(InvalidInputError, match="row 4, column scan_id: duplicate"):
        validate_cohort(duplicate, source="t")


def test_synth_cohort_writes_every_column_and_the_truth(figure4_run):
    cohort_path, _ = figure4_run
    cohort = load_cohort(cohort_path)
    assert len(cohort) == 1500 and set(REQUIRED_COLUMNS) <= set(cohort.columns)
    for column in ("artery_sl_mm", "vein_sl_mm", "artery_endpoints", "vein_endpoints", "artery_volume_ml",
                   "vein_volume_ml", "lung_volume_ml", "lung_total_ml"):
        assert column in cohort.columns
    truth = json.loads(cohort_path.with_suffix(".json").read_text())
    assert truth["model"] == "paper" and truth["seed"] == 3 and truth["n"] == 1500
    assert truth["planted"]["SLPA"]["lung_volume_l"] == {"M": 3004, "F": 3368}
    assert truth["expected"]["n_complete_full"] == cohort[["sex", "age", "lung_volume_l", "cardiomegaly", "calcification",
                                                           "pah", "nodule", "embolism", "copd"]].notna().all(axis=1).sum()
    site_sizes = cohort["site"].value_counts()
    assert site_sizes["Harbin"] == round(1500 * 5740 / 11784) and (cohort.loc[cohort["site"] == "Mudanjiang", "protocol"] == "NCCT").all()


def test_synth_cohort_csv_round_trips_and_is_deterministic(tmp_path, hipas):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path in (a, b):
        hipas("synth-cohort", "--n", "300", "--seed", "9", "--model", "alternative", "--out", path, check=True)
    assert a.read_bytes() == b.read_bytes() and a.with_suffix(".json").read_bytes() == b.with_suffix(".json").read_bytes()
    cohort = load_cohort(a)
    assert cohort["scan_id"].str.match(r"^[A-Z]{3}-\d{5}$").all()


def test_figure4_writes_every_output_with_the_contract_columns(figure4_run):
    _, out = figure4_run
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURE4_FILES)
    table8 = pd.read_csv(out / "fig4ef_regression.csv")
    assert list(table8.columns) == ["index", "term", "coef", "se", "t", "p", "ci_low", "ci_high", "n", "n_dropped"]
    assert list(table8["term"].unique()) == ["Intercept", "lung_volume_l", "sex", "age", "cardiomegaly",
                                             "calcification", "pah", "nodule", "embolism", "copd"]
    fig4a = pd.read_csv(out / "fig4a_sex.csv")
    assert {"n_M", "mean_M", "sd_M", "median_M", "q1_M", "q3_M", "U_M", "p", "rank_biserial"} <= set(fig4a.columns)
    fig4c = pd.read_csv(out / "fig4c_lung_volume.csv")
    assert set(fig4c["group"]) == {"M", "F", "all"} and {"coef", "se", "p", "r2", "n"} <= set(fig4c.columns)
    for name in ("fig4a_sex", "fig4ef_regression"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    report = (out / "report.html").read_text()
    assert report.count('src="data:image/png;base64,') == 5
    assert report.count("<table") == 10 and "Mann-Whitney" in report


def test_figure4_outputs_are_byte_identical_on_rerun(figure4_run, tmp_path):
    cohort, out = figure4_run
    write_figure4(cohort, tmp_path / "again", cohort=load_cohort(cohort))
    for name in FIGURE4_FILES:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install chromium) - report rendering not checked")
def test_report_renders_every_figure_in_headless_chromium(figure4_run, tmp_path):
    import matplotlib.image

    _, out = figure4_run
    shot = tmp_path / "report.png"
    profile = tempfile.mkdtemp(dir=tmp_path)
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,3000",
                    (out / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)
    assert pixels.shape[:2] == (3000, 1200)

    def near(rgb):
        return int((np.abs(pixels - np.array(rgb)).max(axis=-1) < 40).sum())

    # the plots' artery blue and vein red only appear if the embedded images were decoded and drawn
    assert near((0x1F, 0x5F, 0xA8)) > 5000 and near((0xC0, 0x28, 0x2D)) > 5000
    # all five figures sit in the first screen: the blue of 4a and the heat map's colours are far apart
    rows_with_blue = np.flatnonzero((np.abs(pixels - np.array((0x1F, 0x5F, 0xA8))).max(axis=-1) < 40).any(axis=1))
    assert rows_with_blue.max() - rows_with_blue.min() > 1000


def test_tiny_demo_sized_cohort_reports_non_estimable_terms_as_empty(tmp_path):
    """The embedded demo cohort is a handful of scans: nobody has most diseases there."""
    frame, _ = synthesize_cohort(n=60, seed=2)
    tiny = frame.iloc[::7].reset_index(drop=True)  # 9 rows, both sexes
    for disease in ("cardiomegaly", "calcification", "pah", "nodule", "embolism", "copd"):
        tiny[disease] = 0.0
    path = tmp_path / "tiny.csv"
    tiny.to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero or rank-deficiency warnings either
        write_figure4(path, tmp_path / "out")
    table8 = pd.read_csv(tmp_path / "out" / "fig4ef_regression.csv")
    diseases = table8[table8["term"].isin(["cardiomegaly", "copd"])]
    assert diseases[["coef", "se", "p"]].isna().all().all() and (diseases["n"] == 9).all()
    assert table8.loc[table8["term"] == "lung_volume_l", "coef"].notna().all()
    vif = pd.read_csv(tmp_path / "out" / "vif.csv").set_index("term")["vif"]
    diseases = ["cardiomegaly", "calcification", "pah", "nodule", "embolism", "copd"]
    assert vif[diseases].isna().all()  # a constant has no VIF: the cell is empty, not 0 or inf
    covariates = vif[["lung_volume_l", "sex", "age"]]
    assert np.isfinite(covariates).all() and (covariates >= 1).all()  # 1 / (1 - R^2)
