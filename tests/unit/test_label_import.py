"""A user's own labels onto the standardized grid (hipas_core.label_import, hipas import-labels)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from hipas_core.errors import InvalidScanError
from hipas_core.label_import import labels_to_standard_grid
from hipas_core.normalize import normalize_ct


def _scan(spacing_xyz=(0.85, 0.85, 1.25), shape_zyx=(24, 40, 40)):
    ct = sitk.GetImageFromArray(np.full(shape_zyx, -800, np.int16))
    ct.SetSpacing(spacing_xyz)
    ct.SetOrigin((-12.0, 5.0, 30.0))
    return ct


def _diagonal_vessel(ct):
    """A one-voxel-wide vessel running diagonally in-plane (label 2) and a thick one (label 1)."""
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    for k in range(5, 35):
        array[12, k, k] = 2
    array[4:20, 30:36, 4:10] = 1
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(ct)
    return labels


def test_thin_diagonal_vessel_stays_connected_on_the_finer_standard_grid():
    import cc3d

    ct = _scan()
    standard, record = normalize_ct(ct)
    labels = _diagonal_vessel(ct)
    before = sitk.GetArrayFromImage(labels).copy()
    moved = sitk.GetArrayFromImage(labels_to_standard_grid(labels, standard_ct=standard, record=record))
    assert np.array_equal(sitk.GetArrayFromImage(labels), before)  # input untouched
    assert moved.shape == sitk.GetArrayViewFromImage(standard).shape
    vein = moved == 2
    assert cc3d.connected_components(vein, connectivity=26).max() == 1
    volume_ratio = vein.sum() * np.prod(standard.GetSpacing()) / ((before == 2).sum() * np.prod(ct.GetSpacing()))
    assert 0.85 < volume_ratio < 1.15
    artery_ratio = (moved == 1).sum() * np.prod(standard.GetSpacing()) / ((before == 1).sum() * np.prod(ct.GetSpacing()))
    assert 0.9 < artery_ratio < 1.1


def test_labels_on_another_grid_are_refused_with_both_grids_named():
    ct = _scan()
    standard, record = normalize_ct(ct)
    other = _diagonal_vessel(_scan(shape_zyx=(24, 40, 41)))
    with pytest.raises(InvalidScanError, match=r"own\.nii\.gz: label grid .* does not match the scan's"):
        labels_to_standard_grid(other, standard_ct=standard, record=record, name="own.nii.gz")


def test_label_values_other_than_artery_and_vein_are_refused():
    ct = _scan()
    standard, record = normalize_ct(ct)
    labels = _diagonal_vessel(ct)
    array = sitk.GetArrayFromImage(labels)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(ct)
    with pytest.raises(InvalidScanError, match=r"label values \[7\]"):
        labels_to_standard_grid(bad, standard_ct=standard, record=record)


def test_import_labels_cli_writes_the_standard_grid_labels_and_exits_2_on_a_mismatch(tmp_path, hipas):
    ct = _scan()
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(_diagonal_vessel(ct), str(tmp_path / "own.nii.gz"))
    hipas("normalize", "-i", tmp_path / "ct.nii.gz", "-o", tmp_path / "std.nii.gz", check=True)
    hipas("import-labels", "-i", tmp_path / "own.nii.gz", "--ct", tmp_path / "std.nii.gz", "--record",
          tmp_path / "std.json", "-o", tmp_path / "labels.std.nii.gz", check=True)
    standard = sitk.ReadImage(str(tmp_path / "std.nii.gz"))
    moved = sitk.ReadImage(str(tmp_path / "labels.std.nii.gz"))
    assert moved.GetSize() == standard.GetSize() and moved.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(moved))) == {0, 1, 2}

    sitk.WriteImage(_diagonal_vessel(_scan(spacing_xyz=(0.8, 0.8, 1.25))), str(tmp_path / "other.nii.gz"))
    result = hipas("import-labels", "-i", tmp_path / "other.nii.gz", "--ct", tmp_path / "std.nii.gz", "--record",
                   tmp_path / "std.json", "-o", tmp_path / "bad.std.nii.gz")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "other.nii.gz" in result.stderr
    assert not (tmp_path / "bad.std.nii.gz").exists()
