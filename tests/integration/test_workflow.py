"""The real workflow on a tiny phantom cohort, in a temporary working copy.

One module-scoped run serves several tests: it is SIGKILLed half-way and rerun (nothing finished
is recomputed, nothing partial remains); its cohort includes an unreadable scan (it must land in
exclusions.csv while the others make the cohort table and the figures); then a site is added
(a dry run plans only the new scans plus the cohort steps).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import (
    REPO,
    VENV_BIN,
    job_counts,
    make_working_copy,
    snakemake,
    snakemake_env,
    tiny_sts_model,
    write_config,
)

from hipas_core.phantom.cohort import demo_cohort_rows, workflow_manifest_text
from hipas_core.phantom.spec import DISEASE_FLAGS

pytestmark = pytest.mark.integration
PER_SCAN_OUTPUTS = ("std.json", "lungs.nii.gz", "morphometry.parquet")


def test_committed_demo_manifests_equal_demo_cohort_rows():
    """The demo cohort (config/config.yaml): 4 sites x 10 phantoms, a quarter thick-slice,
    cohort seed 13, whose phantom seeds (13xxxx) no training, validation or test set uses."""
    rows = demo_cohort_rows(sites=4, scans_per_site=10, seed=13, thick_fraction=0.25)
    for site in ("harbin", "mudanjiang", "guangzhou", "beijing"):
        expected = workflow_manifest_text([r for r in rows if r["site"] == site])
        assert (REPO / f"config/sites/demo_{site}.tsv").read_text() == expected
    for flag in DISEASE_FLAGS:  # every Figure 4e-f term estimable
        assert sum(r[flag] for r in rows) >= 3


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("workflow")
    return make_working_copy(base / "wc", sts_model=tiny_sts_model(base / "tiny-sts.pt"))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("sex", "X", "line 2, column sex: 'X' is not allowed"),
     ("protocol", "MRI", "line 2, column protocol"),
     ("cardiomegaly", "2", "line 2, column cardiomegaly")],
)
def test_manifest_errors_name_file_line_and_column(copy, column, value, message):
    manifest = copy / "config/sites/demo_harbin.tsv"
    original = manifest.read_text()
    header, first, *rest = original.splitlines()
    cells = first.split("\t")
    cells[header.split("\t").index(column)] = value
    try:
        manifest.write_text("\n".join([header, "\t".join(cells), *rest]) + "\n")
        result = snakemake(copy, "-n", "--quiet", check=False)
    finally:
        manifest.write_text(original)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config/sites/demo_harbin.tsv" in output and message in output


def test_duplicate_scan_id_and_missing_path_are_rejected(copy, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("scan_id\tpath\tsex\tage\tprotocol\nharbin_001\tnowhere.nii.gz\tM\t50\tNCCT\n")
    write_config(copy, {"harbin": {"manifest": "config/sites/demo_harbin.tsv", "phantom": True},
                        "other": {"manifest": str(bad)}})
    try:
        result = snakemake(copy, "-n", "--quiet", check=False)
        assert result.returncode != 0
        assert f"{bad}: line 2, column scan_id: 'harbin_001' already used" in result.stdout + result.stderr
        bad.write_text("scan_id\tpath\tsex\tage\tprotocol\nother_001\tnowhere.nii.gz\tM\t50\tNCCT\n")
        result = snakemake(copy, "-n", "--quiet", check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and f"{bad}: line 2, column path: " in output
        assert "nowhere.nii.gz not found or not readable" in output
    finally:
        write_config(copy, {"harbin": {"manifest": "config/sites/demo_harbin.tsv", "phantom": True}})


def incomplete_outputs(root: Path) -> set[str]:
    """Outputs Snakemake marked as incomplete (``.snakemake/incomplete/<base64 path>``)."""
    names = set()
    folder = root / ".snakemake/incomplete"
    if folder.is_dir():
        for marker in folder.iterdir():
            with contextlib.suppress(ValueError):
                names.add(base64.urlsafe_b64decode(marker.name).decode())
    return names


@pytest.fixture(scope="module")
def killed_and_rerun(copy):
    """Cohort: site harbin (2 phantoms) + site broken (1 unreadable file). Kill, then rerun."""
    broken = copy / "data/broken"
    broken.mkdir(parents=True)
    (broken / "broken_001.nii.gz").write_bytes(b"this is not a NIfTI file\n" * 10)
    (broken / "broken.tsv").write_text(
        "scan_id\tpath\tsex\tage\tprotocol\tcardiomegaly\tcalcification\tpah\tnodule\tembolism\tcopd\n"
        "broken_001\tbroken_001.nii.gz\tF\t61\tNCCT\t0\t0\t0\t0\t0\t\n"
    )
    write_config(copy, {"harbin": {"manifest": "config/sites/demo_harbin.tsv", "phantom": True},
                        "broken": {"manifest": "data/broken/broken.tsv"}})
    command = ["timeout", "-k", "10", "900", str(VENV_BIN / "snakemake"), "--cores", "2", "--directory", str(copy),
               "--snakefile", str(copy / "Snakefile")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=snakemake_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        # kill once the first scan is measured, while the others are still on their way
        while not list(copy.glob("results/scans/*/lungs.nii.gz")) and process.poll() is None:
            assert time.monotonic() < deadline, "the workflow made no progress"
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # snakemake and every job it started
        process.wait()
    incomplete = incomplete_outputs(copy)
    finished = {
        path: path.stat().st_mtime_ns
        for name in (*PER_SCAN_OUTPUTS, "ct.nii.gz")
        for path in copy.glob(f"results/*/*/{name}")
        if str(path.relative_to(copy)) not in incomplete
    }
    snakemake(copy, "--unlock")  # a killed snakemake leaves its lock, as after a power loss
    rerun = snakemake(copy, "--cores", "2")
    return {"finished_before": finished, "rerun": rerun}


def test_kill_and_rerun_recomputes_nothing_finished_and_leaves_no_partial_file(copy, killed_and_rerun):
    finished = killed_and_rerun["finished_before"]
    assert finished, "the kill came before any output was finished"
    recomputed = [str(p) for p, mtime in finished.items() if p.stat().st_mtime_ns != mtime]
    assert recomputed == []
    partial = [str(p) for p in copy.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]
    assert partial == []
    assert not incomplete_outputs(copy)
    assert (copy / "results/figure4/report.html").is_file()


def test_unreadable_scan_is_excluded_and_the_cohort_completes(copy, killed_and_rerun):
    exclusions = pd.read_csv(copy / "results/cohort/exclusions.csv")
    assert list(exclusions.columns) == ["scan_id", "site", "stage", "reason"]
    assert exclusions["scan_id"].tolist() == ["broken_001"]
    assert exclusions["site"].tolist() == ["broken"] and exclusions["stage"].tolist() == ["normalize"]
    assert exclusions["reason"][0].startswith("<scan broken_001>: ")  # the scan's id, never its path
    assert "broken_001.nii.gz" not in exclusions["reason"][0]
    cohort = pd.read_parquet(copy / "results/cohort/metrics.parquet")
    assert cohort["scan_id"].tolist() == ["harbin_001", "harbin_002"]
    for column in ("site", "sex", "age", "protocol", "slice_thickness_mm", "lung_volume_l", "SLPA", "SLPV",
                   "BCPA", "BCPV", "cardiomegaly", "copd", "artery_sl_mm", "lung_volume_ml"):
        assert column in cohort.columns
    assert (cohort["lung_volume_l"] * 1000 == cohort["lung_volume_ml"]).all()
    for panel in ("fig4a_sex", "fig4b_age", "fig4c_lung_volume", "fig4d_diseases", "fig4ef_regression"):
        assert (copy / f"results/figure4/{panel}.png").stat().st_size > 0
    for scan in ("harbin_001", "broken_001"):  # the excluded scan's picture states the reason
        assert (copy / f"results/qc/{scan}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (copy / "results/scans/harbin_001/std.nii.gz").exists()  # temp() images are removed


def test_adding_a_site_plans_only_its_scans_and_the_cohort_steps(copy, killed_and_rerun):
    new = copy / "config/sites/demo_mudanjiang.tsv"
    write_config(copy, {"harbin": {"manifest": "config/sites/demo_harbin.tsv", "phantom": True},
                        "broken": {"manifest": "data/broken/broken.tsv"},
                        "mudanjiang": {"manifest": str(new.relative_to(copy)), "phantom": True}})
    counts = job_counts(snakemake(copy, "-n").stdout)
    per_scan = {"demo_phantom", "normalize", "lungs", "morphometry"}
    assert {rule: counts.get(rule) for rule in per_scan} == dict.fromkeys(per_scan, 2)
    assert counts["segment"] == 1 and counts["cohort_table"] == 1 and counts["figure4"] == 1
    assert counts["phantom_truth"] == 1  # 4 phantom scans now: measured vs truth joins the cohort steps
    assert counts["total"] == 2 * len(per_scan) + 1 + 4 + counts.get("qc_report_sample", 0)
