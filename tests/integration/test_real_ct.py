"""The real chest CT in ../shared/data/real-ct/ (no labels) through the per-scan chain with the
shipped model: normalize, lungs, segment --record --std-output, morphometry; figures a reader
accepts without truth (``hipas_core.plausibility``). Skipped where the file is absent."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO.parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx-A0001-5mm.tar.xz"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present (the real CT lives outside the repository)"),
]


@pytest.fixture(scope="module")
def real_ct_run(tmp_path_factory, hipas):
    from hipas_core.plausibility import plausibility_figures

    work = tmp_path_factory.mktemp("real-ct")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(work / "export", filter="data")
    series = next(p.parent for p in sorted((work / "export").rglob("*.dcm")))
    ct, lungs, labels, std = (work / n for n in ("ct.nii.gz", "lungs.nii.gz", "labels.nii.gz", "std.nii.gz"))
    hipas("normalize", "-i", series, "-o", ct, "--scan-id", "real", check=True)
    hipas("lungs", "-i", ct, "-o", lungs, "--scan-id", "real", check=True)
    hipas("segment", "-i", ct, "--record", work / "ct.json", "-o", labels, "--std-output", std,
          "--scan-id", "real", check=True)
    hipas("morphometry", "--labels", std, "--lungs", lungs, "-o", work / "m.parquet", "--scan-id", "real", check=True)
    image = sitk.ReadImage(str(ct))
    figures = plausibility_figures(
        sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(std))),
        spacing=image.GetSpacing()[::-1], lungs=sitk.GetArrayFromImage(sitk.ReadImage(str(lungs))))
    print("real CT plausibility:", figures)
    return {"figures": figures, "row": pd.read_parquet(work / "m.parquet").iloc[0], "labels": labels, "series": series}


def test_real_ct_lungs_have_an_adult_volume_and_morphometry_is_measured(real_ct_run):
    row = real_ct_run["row"]
    assert row["scan_id"] == "real"
    assert 3000 <= row["lung_total_ml"] <= 8000
    assert row["artery_sl_vox"] > 0 and row["vein_sl_vox"] > 0
    labels = sitk.ReadImage(str(real_ct_run["labels"]))
    assert labels.GetSize() == (512, 512, 64)  # back in the export's own grid


def test_real_ct_predictions_stay_inside_the_thoracic_cavity(real_ct_run):
    assert real_ct_run["figures"]["inside_cavity"] >= 0.99


@pytest.mark.xfail(strict=True, reason="issue 12/13: the phantom-trained demo weights fragment real trees "
                   "(three largest components 59 % artery / 38 % vein with the session-10 weights at the "
                   "session-13 thick-slice thresholds, the vein short of the hila; 35 % / 16 % with session 4's)")
def test_real_ct_trees_are_connected_and_reach_the_hila(real_ct_run):
    figures = real_ct_run["figures"]
    assert figures["artery_top3"] >= 0.70 and figures["vein_top3"] >= 0.70
    assert figures["artery_reaches_hila"] and figures["vein_reaches_hila"]


def test_plausibility_figures_on_a_phantom_with_its_true_labels():
    """The figures themselves, on truth: inside the cavity, connected, reaching the hila."""
    from hipas_core.phantom import PhantomSpec, generate_phantom
    from hipas_core.plausibility import plausibility_figures

    phantom = generate_phantom(PhantomSpec.from_seed(2, size="small"))
    labels = sitk.GetArrayFromImage(phantom.labels)
    figures = plausibility_figures(sitk.GetArrayFromImage(phantom.ct), labels,
                                   spacing=phantom.ct.GetSpacing()[::-1], lungs=sitk.GetArrayFromImage(phantom.lungs))
    assert figures["inside_cavity"] == 1.0
    assert figures["artery_top3"] > 0.95 and figures["vein_top3"] > 0.95
    assert figures["artery_reaches_hila"] and figures["vein_reaches_hila"]
    scattered = labels.copy()
    rng = np.random.default_rng(0)
    scattered[labels > 0] = 0
    spots = rng.integers(0, labels.size, 4000)
    scattered.ravel()[spots] = 1 + (spots % 2)  # confetti all over the volume
    confetti = plausibility_figures(sitk.GetArrayFromImage(phantom.ct), scattered,
                                    spacing=phantom.ct.GetSpacing()[::-1], lungs=sitk.GetArrayFromImage(phantom.lungs))
    assert confetti["inside_cavity"] < 0.5 and confetti["artery_top3"] < 0.01
