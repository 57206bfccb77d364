"""Input noise: how noisy a CT is, and bringing a sharp-kernel scan's noise to what the network knows.

A lung (sharp) reconstruction kernel gives near-white noise several times the SD of a soft-tissue
kernel at the same dose (a real 5 mm lung-kernel chest CT: about 50 HU in soft tissue; the
phantoms' smooth kernel: 3-16 HU on this measure). The network was trained mostly on smooth
phantoms, and on a sharp-kernel phantom it loses a tenth of the vein Dice; a light in-plane
Gaussian (``HARMONIZATION_SIGMA_PX``) before normalization wins it back (``benchmarks/
RESULTS.md``, session 10). ``estimate_noise_hu`` measures the noise the way
``benchmarks/phantom_vs_real.py`` does, and ``harmonize_noise`` smooths a scan only when that
estimate is above ``HARMONIZATION_THRESHOLD_HU``; smooth-kernel scans pass unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["HARMONIZATION_SIGMA_PX", "HARMONIZATION_THRESHOLD_HU", "estimate_noise_hu", "harmonize_noise",
           "residual_noise_sd", "soft_tissue_mask"]

# the phantoms' smooth kernel measures 3-16 HU (doses 1-12 mGy, 0.8-3 mm), their sharp kernel
# 56-123 HU and the real lung-kernel scan in ../shared/data/real-ct/ 50 HU
HARMONIZATION_THRESHOLD_HU = 25.0
HARMONIZATION_SIGMA_PX = 0.7  # in-plane Gaussian, pixels of the input grid
SOFT_TISSUE_HU = (-100.0, 100.0)
MIN_SOFT_TISSUE_VOXELS = 2000  # fewer: no estimate (nan), and the scan is left as it is
MAX_SAMPLED_SLICES = 16  # the estimate's cost is bounded: about 2 s for 512 x 512 slices


def soft_tissue_mask(ct_hu: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool of a CT array in HU: voxels whose 5 x 5 in-plane median lies in
    ``SOFT_TISSUE_HU`` (decided on the median, so that the noise does not punch holes in it),
    eroded by 2 pixels in-plane."""
    median5 = ndimage.median_filter(np.asarray(ct_hu, dtype=np.float32), size=(1, 5, 5))
    low, high = SOFT_TISSUE_HU
    return ndimage.binary_erosion((median5 > low) & (median5 < high), structure=np.ones((1, 5, 5), bool))


def residual_noise_sd(ct_hu: np.ndarray, region: np.ndarray) -> float:
    """Robust SD (HU): 1.4826 x the median absolute deviation, over ``region`` (bool, the shape of
    ``ct_hu``), of the CT minus its 3 x 3 in-plane median."""
    ct = np.asarray(ct_hu, dtype=np.float32)
    residual = (ct - ndimage.median_filter(ct, size=(1, 3, 3)))[region]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def estimate_noise_hu(ct_hu: np.ndarray, *, slice_step: int | None = None) -> float:
    """Robust noise SD (HU) of a CT array (Z, Y, X) in HU: ``residual_noise_sd`` over its
    ``soft_tissue_mask``, on every ``slice_step``-th slice (default: at most ``MAX_SAMPLED_SLICES``
    slices, so the cost does not grow with the scan's length). Correlated (smooth-kernel) noise
    measures lower than white noise of the same SD, which is what tells the kernels apart.
    Returns nan when the scan has too little soft tissue."""
    if slice_step is None:
        slice_step = math.ceil(len(ct_hu) / MAX_SAMPLED_SLICES)
    sample = np.asarray(ct_hu[::max(1, int(slice_step))], dtype=np.float32)
    soft = soft_tissue_mask(sample)
    if int(soft.sum()) < MIN_SOFT_TISSUE_VOXELS:
        return float("nan")
    return residual_noise_sd(sample, soft)


def harmonize_noise(image: sitk.Image, *, threshold_hu: float = HARMONIZATION_THRESHOLD_HU,
                    sigma_px: float = HARMONIZATION_SIGMA_PX) -> tuple[sitk.Image, float, float]:
    """``(image, noise_hu, sigma_px)``: a CT (SimpleITK, HU) smoothed in-plane by a Gaussian of
    ``sigma_px`` pixels when its ``estimate_noise_hu`` exceeds ``threshold_hu`` (a new float32
    image, same grid and metadata), else the input image itself and sigma 0. The input is never
    modified."""
    noise = estimate_noise_hu(sitk.GetArrayViewFromImage(image))
    if not noise > threshold_hu:  # nan (no soft tissue) counts as quiet
        return image, noise, 0.0
    array = ndimage.gaussian_filter(np.asarray(sitk.GetArrayViewFromImage(image), dtype=np.float32),
                                    sigma=(0.0, float(sigma_px), float(sigma_px)), mode="nearest")
    smoothed = sitk.GetImageFromArray(array)
    smoothed.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        smoothed.SetMetaData(key, image.GetMetaData(key))
    return smoothed, noise, float(sigma_px)
