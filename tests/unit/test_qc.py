"""The QC picture: library function and ``hipas qc``."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from hipas_core.exclusion import Exclusion, read_marker, write_marker
from hipas_core.qc import render_exclusion_png, render_qc_png


def _scan(tmp_path):
    ct = np.full((24, 40, 48), -850, np.int16)
    labels = np.zeros(ct.shape, np.uint8)
    labels[4:20, 18:22, 10:14] = 1
    labels[4:20, 18:22, 30:34] = 2
    ct[labels > 0] = 40
    images = []
    for name, array in (("ct", ct), ("labels", labels)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.7, 0.7, 1.5))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
        images.append(image)
    return images


def test_render_qc_png_is_deterministic_and_coloured(tmp_path):
    ct, labels = _scan(tmp_path)
    render_qc_png(ct, labels, tmp_path / "a.png", title="t")
    render_qc_png(ct, labels, tmp_path / "b.png", title="t")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    import matplotlib.image as mpimg

    rgb = mpimg.imread(tmp_path / "a.png")[..., :3]
    blue = (rgb[..., 2] > 0.5) & (rgb[..., 2] > rgb[..., 0] + 0.3)
    red = (rgb[..., 0] > 0.5) & (rgb[..., 0] > rgb[..., 2] + 0.3)
    assert blue.sum() > 50 and red.sum() > 50


def test_hipas_qc_cli_and_exclusion(hipas, tmp_path):
    _scan(tmp_path)
    hipas("qc", "-i", tmp_path / "ct.nii.gz", "--labels", tmp_path / "labels.nii.gz", "-o", tmp_path / "qc.png",
          "--scan-id", "s1", check=True)
    assert (tmp_path / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = hipas("qc", "-i", tmp_path / "nope.nii.gz", "--labels", tmp_path / "labels.nii.gz", "-o",
                    tmp_path / "x.png")
    assert missing.returncode == 2 and "nope.nii.gz" in missing.stderr
    excluded = hipas("qc", "-i", tmp_path / "nope.nii.gz", "--labels", tmp_path / "labels.nii.gz", "-o",
                     tmp_path / "x.png", "--scan-id", "s2", "--exclude-invalid")
    assert excluded.returncode == 0
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a picture naming the reason
    marker = tmp_path / "labels_marker.nii.gz"
    write_marker(marker, Exclusion(scan_id="s3", stage="segment", reason="no lungs found"))
    upstream = hipas("qc", "-i", tmp_path / "ct.nii.gz", "--labels", marker, "-o", tmp_path / "y.png",
                     "--scan-id", "s3", "--exclude-invalid")
    assert upstream.returncode == 0
    assert (tmp_path / "y.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_marker(tmp_path / "y.png") is None


def test_render_exclusion_png_is_deterministic(tmp_path):
    exclusion = Exclusion(scan_id="s9", stage="normalize", reason="x.nii.gz: slices missing " * 20)
    render_exclusion_png(exclusion, tmp_path / "a.png")
    render_exclusion_png(exclusion, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    import matplotlib.image as mpimg

    assert mpimg.imread(tmp_path / "a.png").shape[:2] == (460, 1600)
