"""The shipped demo model runs end to end: `hipas segment` on an unseen small phantom."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from hipas_core.resources import shipped_model


@pytest.mark.slow
def test_shipped_model_segments_unseen_phantom_in_its_grid(tmp_path, hipas, monkeypatch):
    from hipas_core.phantom import PhantomSpec, generate_phantom

    # the model ships with the package: absent, this test fails (it was skipped); `hipas segment`
    # gets no --model and no $HIPAS_MODEL, so it is the shipped one that runs
    assert shipped_model("sts-demo.pt").is_file()
    monkeypatch.delenv("HIPAS_MODEL", raising=False)
    phantom = generate_phantom(PhantomSpec.from_seed(1001, size="small", protocol="ncct"))
    paths = phantom.write(tmp_path / "phantom")
    out = tmp_path / "labels.nii.gz"
    result = hipas("segment", "-i", paths["ct"], "-o", out, "--device", "cpu", "--threads", "2")
    assert result.returncode == 0, result.stderr
    labels = sitk.ReadImage(str(out))
    assert labels.GetSize() == phantom.ct.GetSize()
    assert np.allclose(labels.GetSpacing(), phantom.ct.GetSpacing())
    values = np.unique(sitk.GetArrayViewFromImage(labels))
    assert set(values.tolist()) <= {0, 1, 2} and 1 in values and 2 in values
    # sanity floor, far below the 0.85 target: the shipped demo weights score DSC artery 0.555,
    # vein 0.429 on this phantom (models/sts-demo.md); an untrained or collapsed model scores ~0
    predicted = sitk.GetArrayViewFromImage(labels)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["labels"])))  # a copy: the image is temporary
    for tree in (1, 2):
        overlap = np.count_nonzero((predicted == tree) & (truth == tree))
        dice = 2 * overlap / (np.count_nonzero(predicted == tree) + np.count_nonzero(truth == tree))
        assert dice >= 0.40, f"tree {tree}: DSC {dice:.3f}"
