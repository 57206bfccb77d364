"""The workflow measured against truth: phantoms with their true labels skip segmentation.

A manifest may give each scan's own labels (column ``labels``); those scans go through
``import_labels`` instead of ``segment``. Here three demo phantoms bring their true labels and a
fourth goes through the shipped model, in one real workflow run: the labelled scans' SL and BC
in ``metrics.parquet`` must match the generator's truth, so a mistake in what the workflow feeds
to morphometry (grid, lungs, labels) fails this test; ``phantom_truth`` reports all four.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from workflow_copy import REPO, make_working_copy, snakemake, write_config

pytestmark = pytest.mark.integration
LABELLED = ("harbin_002", "harbin_003", "harbin_004")
SEGMENTED = "harbin_005"
# The bound. A wrong input to morphometry (labels of another scan or grid, the own-grid
# labels of a thick scan, lungs missing) moves SL/BC by 20-100 %.
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def truth_run(tmp_path_factory):
    copy = make_working_copy(tmp_path_factory.mktemp("truth") / "wc", demo_scans_per_site=None)
    lines = (REPO / "config/sites/demo_harbin.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    chosen = [r for r in rows if r["scan_id"] in (*LABELLED, SEGMENTED)]
    assert all(r["slice_thickness_mm"] == "" for r in chosen)  # thin slices: the truth check's setting
    out = ["\t".join([*header, "labels"])]
    for row in chosen:
        labels = f"../../results/phantoms/{row['scan_id']}/labels.nii.gz" if row["scan_id"] in LABELLED else ""
        out.append("\t".join([*(row[c] for c in header), labels]))
    (copy / "config/sites/truth.tsv").write_text("\n".join(out) + "\n")
    write_config(copy, {"truth": {"manifest": "config/sites/truth.tsv", "phantom": True}})
    dry = snakemake(copy, "-n").stdout
    snakemake(copy, "--cores", "2", timeout=1500)
    return copy, dry


def test_labelled_scans_skip_segmentation(truth_run):
    copy, dry = truth_run
    assert "rule import_labels" in dry
    assert (copy / "results/scans/harbin_002/labels.std.nii.gz").is_file()
    segmented = list((copy / "results/segment/truth").glob("batch*/*.std.nii.gz"))
    assert [p.name for p in segmented] == [f"{SEGMENTED}.std.nii.gz"]


def test_workflow_measures_true_labels_close_to_the_generator_truth(truth_run):
    copy, _ = truth_run
    cohort = pd.read_parquet(copy / "results/cohort/metrics.parquet").set_index("scan_id")
    assert sorted(cohort.index) == sorted((*LABELLED, SEGMENTED))
    for scan in LABELLED:
        truth = json.loads((copy / f"results/phantoms/{scan}/truth.json").read_text())
        measured = {
            "artery SL": (cohort.loc[scan, "artery_sl_mm"], truth["artery"]["intrapulmonary_centerline_length_mm"]),
            "vein SL": (cohort.loc[scan, "vein_sl_mm"], truth["vein"]["intrapulmonary_centerline_length_mm"]),
            "artery BC": (cohort.loc[scan, "BCPA"], truth["artery"]["intrapulmonary_bifurcations"]),
            "vein BC": (cohort.loc[scan, "BCPV"], truth["vein"]["intrapulmonary_bifurcations"]),
        }
        for name, (value, true) in measured.items():
            assert abs(value / true - 1) <= TOLERANCE, f"{scan} {name}: {value:.1f} vs truth {true:.1f}"
    assert cohort.loc[SEGMENTED, "artery_sl_mm"] > 0 and cohort.loc[SEGMENTED, "vein_sl_mm"] > 0


def test_phantom_truth_reports_every_scan(truth_run):
    copy, _ = truth_run
    errors = pd.read_csv(copy / "results/figure4/measured_vs_truth.csv")
    assert sorted(errors["scan_id"].unique()) == sorted((*LABELLED, SEGMENTED))
    agreement = pd.read_csv(copy / "results/figure4/agreement.csv")
    assert set(agreement["index"]) == {"SLPA", "SLPV", "BCPA", "BCPV", "lung_volume_l"}
    assert (copy / "results/figure4/measured_vs_truth.png").stat().st_size > 0
