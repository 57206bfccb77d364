"""Reading CT and label maps (hipas_core.io) and writing every input format (hipas_core.writers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from hipas_core.errors import InvalidScanError
from hipas_core.io import read_ct, read_labels
from hipas_core.writers import write_dicom_series, write_hipas_npz, write_image

SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN = (-12.5, 30.0, -210.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)  # flipped y and z: not identity


def ct_volume(slices: int = 20, rows: int = 14, cols: int = 12, seed: int = 0) -> sitk.Image:
    """A small HU volume (air, tissue and bone values) with non-trivial geometry."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 1600, size=(slices, rows, cols)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def assert_same_scan(read: sitk.Image, written: sitk.Image, *, atol_mm: float = 1e-4) -> None:
    assert read.GetPixelID() == sitk.sitkFloat32
    assert read.GetSize() == written.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), written.GetSpacing(), atol=atol_mm)
    np.testing.assert_allclose(read.GetOrigin(), written.GetOrigin(), atol=atol_mm)
    np.testing.assert_allclose(read.GetDirection(), written.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(written))


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (0.5, -2048.0), (1.0, 0.0)])
def test_dicom_round_trip_keeps_hu_and_geometry(tmp_path, rescale):
    image = ct_volume()
    written = write_dicom_series(image, tmp_path / "series", rescale=rescale)
    assert len(written) == 20 and all(p.is_file() for p in written)
    assert_same_scan(read_ct(tmp_path / "series"), image)


def test_dicom_reader_orders_slices_by_position_not_file_name(tmp_path):
    image = ct_volume()
    files = write_dicom_series(image, tmp_path / "series")
    for index, file in enumerate(files):  # scramble names
        file.rename(file.with_name(f"x{(index * 7) % 20:03d}_{index}.dcm"))
    assert_same_scan(read_ct(tmp_path / "series"), image)


def test_dicom_folder_with_several_series_reads_the_largest_ct(tmp_path):
    image = ct_volume(slices=20)
    small = ct_volume(slices=17, seed=3)
    write_dicom_series(image, tmp_path / "study" / "a", series_description="main")
    write_dicom_series(small, tmp_path / "study" / "b", series_description="scout")
    write_dicom_series(ct_volume(slices=30, seed=4), tmp_path / "study" / "c", modality="MR")
    assert_same_scan(read_ct(tmp_path / "study"), image)


def test_dicom_localizer_in_the_series_is_ignored(tmp_path):
    image = ct_volume()
    files = write_dicom_series(image, tmp_path / "series")
    localizer = pydicom.dcmread(files[0])
    localizer.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    localizer.SOPInstanceUID = localizer.SOPInstanceUID + ".9"
    localizer.save_as(tmp_path / "series" / "localizer.dcm")
    assert_same_scan(read_ct(tmp_path / "series"), image)


def test_dicom_reader_copies_no_header_fields(tmp_path):
    write_dicom_series(ct_volume(), tmp_path / "series")
    read = read_ct(tmp_path / "series")
    assert all(key.startswith("hipas_") for key in read.GetMetaDataKeys())
    assert read.GetMetaData("hipas_slice_thickness_mm") == "2.5"


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii", "scan.nrrd", "scan.mha"])
def test_image_file_round_trip(tmp_path, name):
    image = ct_volume()
    write_image(tmp_path / name, image)
    assert_same_scan(read_ct(tmp_path / name), image)


def test_int16_nifti_is_read_as_float32_hu(tmp_path):
    image = sitk.Cast(ct_volume(), sitk.sitkInt16)
    write_image(tmp_path / "ct.nii.gz", image)
    read = read_ct(tmp_path / "ct.nii.gz")
    assert read.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_hipas_npz_round_trip_with_metadata_table(tmp_path):
    image = ct_volume()
    hu = sitk.GetArrayFromImage(image)
    artery, vein = hu > 1000, hu < -900
    paths = write_hipas_npz(image, tmp_path / "hipas", "007", artery=artery, vein=vein)
    with np.load(paths["ct"]) as archive:
        assert archive["data"].shape == (12, 14, 20)  # stored [x, y, z]
    table = tmp_path / "meta.csv"
    table.write_text("case_id,spacing_x_mm,spacing_y_mm,spacing_z_mm\n007,0.7,0.8,2.5\n")
    read = read_ct(paths["ct"], metadata_table=table)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), hu)
    np.testing.assert_allclose(read.GetSpacing(), SPACING_XYZ)
    assert read.GetMetaData("hipas_spacing_assumed") == "0"
    labels = sitk.GetArrayFromImage(read_labels(paths["vein"], metadata_table=table))
    expected = np.where(artery, 1, np.where(vein, 2, 0))
    np.testing.assert_array_equal(labels, expected)


def test_hipas_npz_without_table_assumes_spacing_and_says_so(tmp_path, capfd):
    paths = write_hipas_npz(ct_volume(), tmp_path / "hipas", "001")
    read = read_ct(paths["ct"])
    assert "assuming spacing" in capfd.readouterr().err
    assert read.GetMetaData("hipas_spacing_assumed") == "1"
    np.testing.assert_allclose(read.GetSpacing(), (334 / 512, 334 / 512, 1.0))


def test_read_labels_from_nifti(tmp_path):
    labels = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 3, (20, 8, 8)).astype(np.int32))
    labels.SetSpacing(SPACING_XYZ)
    write_image(tmp_path / "labels.nii.gz", labels)
    read = read_labels(tmp_path / "labels.nii.gz")
    assert read.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(labels))


# ----------------------------------------------------------------------------- malformed inputs


def _nifti(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    write_image(path, image)
    return path


def _dicom(tmp_path: Path, **kwargs) -> tuple[Path, list[Path]]:
    folder = tmp_path / "series"
    return folder, write_dicom_series(ct_volume(), folder, **kwargs)


def make_truncated(tmp_path):
    path = _nifti(tmp_path / "scan.nii.gz", sitk.GetArrayFromImage(ct_volume()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_garbage(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000).astype(np.uint8).tobytes())
    return path


def make_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def make_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a CT scan\n")
    return path


def make_text_folder(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images here\n")
    return tmp_path / "docs"


def make_2d(tmp_path):
    return _nifti(tmp_path / "slice.nii.gz", np.full((32, 32), -500, np.int16))


def make_few_slices(tmp_path):
    return _nifti(tmp_path / "thin.nii.gz", sitk.GetArrayFromImage(ct_volume(slices=5)))


def make_nan(tmp_path):
    array = sitk.GetArrayFromImage(ct_volume())
    array[3, 4, 5] = np.nan
    return _nifti(tmp_path / "nan.nii.gz", array)


def make_unscaled(tmp_path):
    array = np.random.default_rng(0).integers(0, 4096, (20, 12, 12)).astype(np.uint16)
    return _nifti(tmp_path / "raw.nii.gz", array)


def make_missing_slice(tmp_path):
    folder, files = _dicom(tmp_path)
    files[9].unlink()
    return folder


def make_uneven_spacing(tmp_path):
    folder, files = _dicom(tmp_path)
    dataset = pydicom.dcmread(files[6])
    position = [float(v) for v in dataset.ImagePositionPatient]
    position[2] += 0.8  # 2.5 mm slices: one slice moved by a third of a gap
    dataset.ImagePositionPatient = [f"{v:.6f}" for v in position]
    dataset.save_as(files[6])
    return folder


def make_mr(tmp_path):
    return _dicom(tmp_path, modality="MR")[0]


def make_tilted(tmp_path):
    folder, files = _dicom(tmp_path)
    for index, file in enumerate(files):  # each slice shifted along y: a sheared (tilted) stack
        dataset = pydicom.dcmread(file)
        position = [float(v) for v in dataset.ImagePositionPatient]
        position[1] += 0.5 * index
        dataset.ImagePositionPatient = [f"{v:.6f}" for v in position]
        dataset.save_as(file)
    return folder


def make_tilt_tag(tmp_path):
    folder, files = _dicom(tmp_path)
    for file in files:
        dataset = pydicom.dcmread(file)
        dataset.GantryDetectorTilt = "12"
        dataset.save_as(file)
    return folder


MALFORMED = {
    "truncated": (make_truncated, "truncated"),
    "garbage": (make_garbage, "unreadable"),
    "empty_folder": (make_empty_folder, "empty folder"),
    "text_file": (make_text_file, "not an image"),
    "folder_without_dicom": (make_text_folder, "no DICOM"),
    "2d": (make_2d, "2D"),
    "few_slices": (make_few_slices, "slices"),
    "nan": (make_nan, "NaN"),
    "unscaled_unsigned": (make_unscaled, "implausible HU"),
    "missing_slice": (make_missing_slice, "missing slices"),
    "uneven_spacing": (make_uneven_spacing, "non-uniform slice spacing"),
    "mr_modality": (make_mr, "not CT"),
    "gantry_tilt": (make_tilted, "tilt"),
    "gantry_tilt_tag": (make_tilt_tag, "tilt"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_input_raises_invalid_scan(tmp_path, kind):
    factory, phrase = MALFORMED[kind]
    path = factory(tmp_path)
    with pytest.raises(InvalidScanError) as caught:
        read_ct(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert phrase in message


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_input_cli_exits_2_with_one_line_and_no_output(tmp_path, kind, hipas):
    factory, phrase = MALFORMED[kind]
    path = factory(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = hipas("normalize", "-i", path, "-o", out_dir / "ct.nii.gz")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and phrase in lines[0]
    assert list(out_dir.iterdir()) == []


def test_cli_exclude_invalid_writes_markers(tmp_path, hipas):
    path = make_nan(tmp_path)
    out = tmp_path / "out" / "ct.nii.gz"
    result = hipas("normalize", "-i", path, "-o", out, "--exclude-invalid", "--scan-id", "s1")
    assert result.returncode == 0, result.stderr
    from hipas_core.exclusion import read_marker

    for target in (out, out.with_name("ct.json")):
        marker = read_marker(target)
        assert marker is not None and marker.scan_id == "s1" and marker.stage == "normalize"
