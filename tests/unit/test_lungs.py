"""Lung masks: the threshold method on a synthetic chest, lungmask wiring with random weights."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import SimpleITK as sitk

from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.lungs import (
    LEFT,
    R231_FILE,
    RIGHT,
    lung_bounding_box,
    lung_volumes_ml,
    lungmask_lungs,
    resolve_lungmask_weights,
    threshold_lungs,
)


def _capsule_distance(points, p0, p1):
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((points - p0) @ d) / (d @ d), 0, 1)
    return np.linalg.norm(points - (p0 + t[..., None] * d), axis=-1)


@functools.lru_cache(maxsize=8)
def synthetic_chest(spacing=(2.5, 1.0, 1.0), extent_mm=(150.0, 160.0, 200.0), seed=0, fused=False):
    """A chest: body (soft tissue) in air, two ellipsoid lungs (-850 HU) holding vessels (40 HU),
    a trachea (-1000 HU) entering from the top and splitting into two bronchi that reach the
    lungs. Returns (ct image, true lung array (0, 1 right, 2 left), vessel array)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing, strict=True))
    zz, yy, xx = np.meshgrid(
        *[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    points = np.stack([zz, yy, xx], -1)
    cz, cy, cx = (e / 2 for e in extent_mm)
    ct = np.full(shape, -1000.0)
    body = ((yy - cy) / 70) ** 2 + ((xx - cx) / 92) ** 2 <= 1
    ct[body] = 40.0
    truth = np.zeros(shape, np.uint8)
    gap = 2.0 if fused else 9.0
    for value, sign in ((RIGHT, -1), (LEFT, 1)):
        centre_x = cx + sign * (gap + 36)
        lung = ((zz - 65) / 62) ** 2 + ((yy - cy) / 50) ** 2 + ((xx - centre_x) / 36) ** 2 <= 1
        truth[lung] = value
    if fused:  # the two lungs touch over a few anterior slices
        bridge = (
            (np.abs(xx - cx) <= gap + 2) & (np.abs(yy - (cy - 30)) <= 4) & (np.abs(zz - 70) <= 6)
        )
        truth[bridge & (truth == 0)] = RIGHT
    ct[truth > 0] = -850.0
    vessels = np.zeros(shape, bool)
    for sign in (-1, 1):
        x0 = cx + sign * (gap + 36)
        vessels |= _capsule_distance(points, (30, cy, x0), (100, cy + 10, x0 + sign * 8)) <= 2.5
        vessels |= (
            _capsule_distance(points, (60, cy - 25, x0 - sign * 10), (90, cy + 25, x0 + sign * 5))
            <= 1.8
        )
    vessels &= truth > 0
    ct[vessels] = 40.0
    trachea = _capsule_distance(points, (extent_mm[0] + 10, cy, cx), (95, cy, cx)) <= 8
    for sign in (-1, 1):
        trachea |= _capsule_distance(points, (95, cy, cx), (80, cy, cx + sign * (gap + 20))) <= 5.5
    ct[trachea & (truth == 0)] = -1000.0
    ct += rng.normal(0, 15, shape)
    image = sitk.GetImageFromArray(np.round(ct).astype(np.int16))
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin((-100.0, -80.0, -300.0))
    return image, truth, vessels


@pytest.mark.parametrize("spacing", [(2.5, 1.0, 1.0), (5.0, 0.8, 0.8), (1.25, 1.5, 1.5)])
def test_threshold_lungs_matches_truth(spacing):
    image, truth, vessels = synthetic_chest(spacing)
    mask = threshold_lungs(image)
    array = sitk.GetArrayFromImage(mask)
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert mask.GetOrigin() == image.GetOrigin() and array.dtype == np.uint8
    assert set(np.unique(array)) == {0, RIGHT, LEFT}
    # the right lung (low x in LPS) is 1, the left is 2
    for value in (RIGHT, LEFT):
        overlap = np.count_nonzero((array == value) & (truth == value)) / np.count_nonzero(
            truth == value
        )
        assert overlap > 0.97
    volume = np.count_nonzero(array) / np.count_nonzero(truth)
    assert abs(volume - 1) < 0.03
    # vessels inside the lungs are part of the mask; air outside the body and the trachea are not
    assert np.count_nonzero(array[vessels]) / np.count_nonzero(vessels) > 0.97
    ct = sitk.GetArrayFromImage(image)
    outside_air = (ct < -500) & (truth == 0)
    assert np.count_nonzero(array[outside_air]) < 0.005 * np.count_nonzero(truth)
    top = array.shape[0] - 1
    assert not array[top].any()  # the trachea in the top slice


def test_fused_lungs_are_separated():
    image, truth, _ = synthetic_chest((2.5, 1.0, 1.0), fused=True)
    array = sitk.GetArrayFromImage(threshold_lungs(image))
    assert set(np.unique(array)) == {0, RIGHT, LEFT}
    for value in (RIGHT, LEFT):
        inside = np.count_nonzero((array == value) & (truth > 0)) / np.count_nonzero(array == value)
        assert inside > 0.97
    counts = [np.count_nonzero(array == v) for v in (RIGHT, LEFT)]
    assert min(counts) / max(counts) > 0.85


def test_no_lungs_raises_invalid_scan():
    ct = np.full((20, 64, 64), -1000, np.int16)
    ct[:, 8:56, 8:56] = 40
    image = sitk.GetImageFromArray(ct)
    with pytest.raises(InvalidScanError, match="no lungs found"):
        threshold_lungs(image)


def test_bounding_box_contains_the_lungs():
    image, truth, _ = synthetic_chest((2.5, 1.0, 1.0))
    box = lung_bounding_box(image)
    inside = np.zeros(truth.shape, bool)
    inside[box] = True
    assert np.all(inside[truth > 0])
    assert inside.sum() < 0.6 * truth.size


def test_lung_volumes_subtract_vessels():
    image, truth, vessels = synthetic_chest((2.5, 1.0, 1.0))
    lungs = sitk.GetImageFromArray(truth)
    labels = sitk.GetImageFromArray(vessels.astype(np.uint8))
    for img in (lungs, labels):
        img.CopyInformation(image)
    volumes = lung_volumes_ml(lungs, labels)
    voxel_ml = 2.5 * 1.0 * 1.0 / 1000
    assert volumes["lung_total_ml"] == pytest.approx(np.count_nonzero(truth) * voxel_ml)
    assert volumes["lung_volume_ml"] == pytest.approx(
        (np.count_nonzero(truth) - vessels.sum()) * voxel_ml
    )


def test_cli_threshold_writes_mask(tmp_path, hipas):
    image, truth, _ = synthetic_chest((5.0, 0.8, 0.8))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    result = hipas("lungs", "-i", tmp_path / "ct.nii.gz", "-o", tmp_path / "lungs.nii.gz")
    assert result.returncode == 0, result.stderr
    mask = sitk.ReadImage(str(tmp_path / "lungs.nii.gz"))
    assert mask.GetSize() == image.GetSize()
    assert abs(np.count_nonzero(sitk.GetArrayFromImage(mask)) / np.count_nonzero(truth) - 1) < 0.03


def test_cli_lungmask_without_weights_fails_at_once(tmp_path, hipas, monkeypatch):
    image, _, _ = synthetic_chest((5.0, 0.8, 0.8))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    started = time.monotonic()
    result = hipas(
        "lungs", "-i", tmp_path / "ct.nii.gz", "-o", tmp_path / "m.nii.gz", "--method", "lungmask"
    )
    assert time.monotonic() - started < 60  # a download attempt would hang or take far longer
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--weights" in lines[0] and R231_FILE in lines[0]
    assert not (tmp_path / "m.nii.gz").exists()


def test_lungmask_missing_weights_file_is_invalid_input(tmp_path):
    image, _, _ = synthetic_chest((5.0, 0.8, 0.8))
    with pytest.raises(InvalidInputError, match="not found"):
        lungmask_lungs(image, weights=tmp_path / "nope.pth")


def test_lungmask_wiring_with_random_weights(tmp_path, monkeypatch):
    """Random weights in lungmask's own architecture: the network runs end to end and the mask
    comes back in the CT's grid with values in {0, 1, 2} (numbers are meaningless)."""
    import torch
    from lungmask.resunet import UNet

    torch.manual_seed(0)
    model = UNet(
        n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False
    )
    weights = tmp_path / R231_FILE
    torch.save(model.state_dict(), weights)
    image, _, _ = synthetic_chest((10.0, 1.6, 1.6), extent_mm=(30.0, 160.0, 200.0))
    # the torch hub cache is used when no path is given
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub_home"))
    cached = tmp_path / "hub_home" / "hub" / "checkpoints" / R231_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(weights.read_bytes())
    assert resolve_lungmask_weights(None) == cached
    mask = lungmask_lungs(image, device="cpu")
    assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
    assert mask.GetSpacing() == image.GetSpacing() and mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1, 2}


def test_lungmask_rejects_a_file_that_is_not_weights(tmp_path):
    image, _, _ = synthetic_chest((10.0, 1.6, 1.6), extent_mm=(30.0, 160.0, 200.0))
    bad = tmp_path / "bad.pth"
    bad.write_text("garbage")
    with pytest.raises(InvalidInputError, match="not lungmask R231 weights"):
        lungmask_lungs(image, weights=bad)

