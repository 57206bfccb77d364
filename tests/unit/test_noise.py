"""Input noise estimation and harmonization (``hipas_core.noise``)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from hipas_core.conventions import META_SLICE_THICKNESS
from hipas_core.noise import HARMONIZATION_THRESHOLD_HU, estimate_noise_hu, harmonize_noise
from hipas_core.phantom import PhantomSpec, generate_phantom


def _soft_tissue_block(noise: np.ndarray) -> np.ndarray:
    """(20, 64, 64) HU: air with a 40 HU soft-tissue block holding ``noise``."""
    ct = np.full(noise.shape, -1000.0, np.float32)
    ct[:, 8:56, 8:56] = 40.0 + noise[:, 8:56, 8:56]
    return ct


def test_white_noise_measures_higher_than_correlated_noise_of_the_same_sd():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((20, 64, 64)).astype(np.float32) * 30.0
    correlated = ndimage.gaussian_filter(rng.standard_normal((20, 64, 64)).astype(np.float32), (0, 1.2, 1.2))
    correlated *= 30.0 / correlated.std()
    white_hu = estimate_noise_hu(_soft_tissue_block(white), slice_step=1)
    correlated_hu = estimate_noise_hu(_soft_tissue_block(correlated), slice_step=1)
    assert 0.7 * 30 < white_hu < 30  # the residual to a 3 x 3 median keeps most of white noise
    assert correlated_hu < 0.4 * white_hu
    assert np.isnan(estimate_noise_hu(np.full((8, 64, 64), -1000.0, np.float32)))  # no soft tissue


def test_the_threshold_tells_a_sharp_kernel_phantom_from_a_smooth_one():
    common = dict(slice_thickness_mm=1.0, dose=12.0, nodule=0, embolism=0)  # the quietest sharp scan
    smooth = generate_phantom(PhantomSpec.from_seed(5, kernel="smooth", **{**common, "dose": 1.0}))
    sharp = generate_phantom(PhantomSpec.from_seed(5, kernel="sharp", **common))
    assert estimate_noise_hu(sitk.GetArrayViewFromImage(smooth.ct)) < HARMONIZATION_THRESHOLD_HU
    assert estimate_noise_hu(sitk.GetArrayViewFromImage(sharp.ct)) > HARMONIZATION_THRESHOLD_HU


def test_harmonize_smooths_only_noisy_scans_and_keeps_the_grid():
    rng = np.random.default_rng(1)
    quiet = sitk.GetImageFromArray(_soft_tissue_block(rng.standard_normal((20, 64, 64)).astype(np.float32) * 5))
    out, noise, sigma = harmonize_noise(quiet)
    assert out is quiet and sigma == 0.0 and noise < HARMONIZATION_THRESHOLD_HU

    array = _soft_tissue_block(rng.standard_normal((20, 64, 64)).astype(np.float32) * 60)
    noisy = sitk.GetImageFromArray(array)
    noisy.SetSpacing((0.8, 0.8, 1.5))
    noisy.SetOrigin((-3.0, 4.0, 10.0))
    noisy.SetMetaData(META_SLICE_THICKNESS, "1.5")
    before = sitk.GetArrayFromImage(noisy).copy()
    out, noise, sigma = harmonize_noise(noisy)
    assert noise > HARMONIZATION_THRESHOLD_HU and sigma > 0
    assert np.array_equal(sitk.GetArrayFromImage(noisy), before)  # the input is not modified
    assert out.GetSpacing() == noisy.GetSpacing() and out.GetOrigin() == noisy.GetOrigin()
    assert out.GetMetaData(META_SLICE_THICKNESS) == "1.5"
    smoothed = sitk.GetArrayFromImage(out)
    assert estimate_noise_hu(smoothed, slice_step=1) < HARMONIZATION_THRESHOLD_HU
    # in-plane only: the mean of each slice's block stays, slices are not mixed
    assert smoothed[:, 20:44, 20:44].mean(axis=(1, 2)) == pytest.approx(before[:, 20:44, 20:44].mean(axis=(1, 2)), abs=2.0)


def test_hipas_normalize_smooths_a_sharp_kernel_scan_and_records_it(hipas, tmp_path):
    import json

    for kernel in ("smooth", "sharp"):
        generate_phantom(PhantomSpec.from_seed(5, kernel=kernel, slice_thickness_mm=1.0, nodule=0)).write(tmp_path / kernel)
    records = {}
    for kernel, option in (("smooth", "auto"), ("sharp", "auto"), ("sharp", "off")):
        out = tmp_path / f"{kernel}-{option}.nii.gz"
        hipas("normalize", "-i", tmp_path / kernel / "ct.nii.gz", "-o", out, "--noise-harmonization", option, check=True)
        records[kernel, option] = json.loads(out.with_name(out.name.split(".")[0] + ".json").read_text())
    assert records["smooth", "auto"]["noise_smoothing_sigma_px"] == 0.0
    assert records["smooth", "auto"]["input_noise_hu"] < HARMONIZATION_THRESHOLD_HU
    sharp = records["sharp", "auto"]
    assert sharp["noise_smoothing_sigma_px"] > 0 and sharp["input_noise_hu"] > HARMONIZATION_THRESHOLD_HU
    assert any("sharp kernel" in note for note in sharp["notes"])
    off = records["sharp", "off"]
    assert off["noise_smoothing_sigma_px"] == 0.0 and off["input_noise_hu"] is None
    smoothed = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sharp-auto.nii.gz")))
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sharp-off.nii.gz")))
    assert estimate_noise_hu(smoothed) < estimate_noise_hu(raw) / 2
