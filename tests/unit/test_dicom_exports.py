"""DICOM exports as scanners and archives write them (issue 11, items 3 and 4): several series in one
folder, compressed transfer syntaxes, Enhanced (multi-frame) CT, localizer-only and non-CT folders,
scans without lungs, and the real export in ../shared/data/real-ct/. Arrays are (z, y, x), mm."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.io import read_ct, voxel_sha256
from hipas_core.writers import write_dicom_series

REPO = Path(__file__).resolve().parents[2]
REAL_CT = REPO.parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx-A0001-5mm.tar.xz"
SHAPE = (32, 48, 48)
SPACING_ZYX = (2.5, 1.5, 1.5)


def chest_phantom(*, seed: int = 0, shape=SHAPE, spacing_zyx=SPACING_ZYX) -> sitk.Image:
    """A tiny chest (HU, whole numbers): soft-tissue body, two air-filled lungs with a vessel in
    each, a little noise so that compression has work to do. About 50 ml per lung."""
    z, y, x = np.indices(shape)
    cy, cx = shape[1] / 2, shape[2] / 2
    ct = np.full(shape, -1000.0)
    ct[((y - cy) / (shape[1] * 0.48)) ** 2 + ((x - cx) / (shape[2] * 0.48)) ** 2 <= 1] = 40
    for side in (-1, 1):
        lx = cx + side * shape[2] * 0.22
        lung = (((y - cy) / (shape[1] * 0.3)) ** 2 + ((x - lx) / (shape[2] * 0.17)) ** 2 <= 1)
        lung &= (z > 2) & (z < shape[0] - 3)
        ct[lung] = -850
        ct[lung & ((y - cy) ** 2 + (x - lx) ** 2 <= 2)] = 60
    ct += np.random.default_rng(seed).normal(0, 12, shape)
    image = sitk.GetImageFromArray(np.clip(np.round(ct), -1024, 3000).astype(np.float32))
    image.SetSpacing(spacing_zyx[::-1])
    image.SetOrigin((-36.0, -40.5, -120.0))
    return image


def head_phantom(shape=SHAPE, spacing_zyx=SPACING_ZYX) -> sitk.Image:
    """A head-like volume: skull around brain tissue, air only outside the body (no lungs)."""
    z, y, x = np.indices(shape)
    cy, cx = shape[1] / 2, shape[2] / 2
    r = np.sqrt(((y - cy) / (shape[1] * 0.45)) ** 2 + ((x - cx) / (shape[2] * 0.45)) ** 2)
    ct = np.where(r <= 1, 1000.0, -1000.0)
    ct[r <= 0.88] = 35
    image = sitk.GetImageFromArray(ct.astype(np.float32))
    image.SetSpacing(spacing_zyx[::-1])
    return image


def assert_same_image(read: sitk.Image, expected: sitk.Image, *, atol_mm: float = 1e-4) -> None:
    assert read.GetSize() == expected.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), expected.GetSpacing(), atol=atol_mm)
    np.testing.assert_allclose(read.GetOrigin(), expected.GetOrigin(), atol=atol_mm)
    np.testing.assert_allclose(read.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(expected))


def edit_series(files, **fields) -> None:
    for file in files:
        dataset = pydicom.dcmread(file)
        for keyword, value in fields.items():
            setattr(dataset, keyword, value)
        dataset.save_as(file)


def series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(iter(sorted(folder.glob("*.dcm")))), stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def phantom() -> sitk.Image:
    return chest_phantom()


@pytest.fixture(scope="module")
def plain_series(phantom, tmp_path_factory) -> tuple[Path, sitk.Image]:
    """The phantom as an uncompressed single-frame series, and what read_ct makes of it."""
    folder = tmp_path_factory.mktemp("plain") / "series"
    write_dicom_series(phantom, folder)
    return folder, read_ct(folder)


# ----------------------------------------------------------------------------- series selection


def two_reconstructions(tmp_path: Path, phantom: sitk.Image) -> dict[str, Path]:
    """One study, two series of the same size and slice thickness: soft and sharp kernel."""
    sharp = sitk.GetImageFromArray(sitk.GetArrayFromImage(chest_phantom(seed=1)))
    sharp.CopyInformation(phantom)
    folders = {"soft": tmp_path / "study" / "soft", "sharp": tmp_path / "study" / "sharp"}
    edit_series(write_dicom_series(phantom, folders["soft"], series_description="soft"), ConvolutionKernel="B30f")
    edit_series(write_dicom_series(sharp, folders["sharp"], series_description="sharp"), ConvolutionKernel="B70f")
    return folders


def _uid_key(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


def test_several_series_default_is_the_smallest_uid_on_a_tie_and_the_choice_is_noted(tmp_path, phantom, capfd):
    folders = two_reconstructions(tmp_path, phantom)
    uids = {name: series_uid(folder) for name, folder in folders.items()}
    first = min(uids, key=lambda name: _uid_key(uids[name]))
    read = read_ct(tmp_path / "study")
    assert_same_image(read, read_ct(folders[first]))
    note = capfd.readouterr().err
    assert "2 CT series" in note and uids[first] in note and "--series-uid" in note


def test_series_uid_picks_the_other_reconstruction(tmp_path, phantom):
    folders = two_reconstructions(tmp_path, phantom)
    for folder in folders.values():
        assert_same_image(read_ct(tmp_path / "study", series_uid=series_uid(folder)), read_ct(folder))


def test_thinner_slices_win_a_tie_in_slice_count(tmp_path, phantom):
    thin = sitk.GetImageFromArray(sitk.GetArrayFromImage(chest_phantom(seed=2)))
    thin.CopyInformation(phantom)
    write_dicom_series(phantom, tmp_path / "study" / "a", slice_thickness_mm=3.0, series_description="a")
    write_dicom_series(thin, tmp_path / "study" / "b", slice_thickness_mm=2.0, series_description="b")
    read = read_ct(tmp_path / "study")
    assert read.GetMetaData("hipas_slice_thickness_mm") == "2"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(thin))


def test_unknown_series_uid_raises_naming_the_folder_and_the_choices(tmp_path, phantom):
    two_reconstructions(tmp_path, phantom)
    with pytest.raises(InvalidInputError) as caught:
        read_ct(tmp_path / "study", series_uid="1.2.3.4")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "study") in message
    assert "1.2.3.4" in message and "2 available" in message


def test_series_uid_for_a_nifti_is_refused(tmp_path, phantom):
    sitk.WriteImage(phantom, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InvalidInputError, match="not a DICOM folder"):
        read_ct(tmp_path / "ct.nii.gz", series_uid="1.2.3")


@pytest.mark.parametrize("command", ["normalize", "lungs"])
def test_cli_series_uid_unknown_exits_2_and_known_reads_that_series(tmp_path, phantom, hipas, command):
    folders = two_reconstructions(tmp_path, phantom)
    out = tmp_path / "out"
    out.mkdir()
    bad = hipas(command, "-i", tmp_path / "study", "-o", out / "x.nii.gz", "--series-uid", "1.2.3.4")
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "study") in lines[0] and "2 available" in lines[0]
    assert list(out.iterdir()) == []
    good = hipas(command, "-i", tmp_path / "study", "-o", out / "x.nii.gz", "--series-uid", series_uid(folders["sharp"]))
    assert good.returncode == 0, good.stderr
    written = sitk.ReadImage(str(out / "x.nii.gz"))
    if command == "lungs":
        assert written.GetSize() == phantom.GetSize()
        assert set(np.unique(sitk.GetArrayViewFromImage(written)).tolist()) == {0, 1, 2}


# ----------------------------------------------------------------------------- compression


def _jpeg_lossless_sv1(dataset: pydicom.Dataset) -> None:
    """JPEG lossless process 14 SV1 by the GDCM inside SimpleITK: pydicom 3 has no encoder for it
    (only decoders), and neither has any pylibjpeg plugin; GDCM's is a maintained encoder."""
    import tempfile

    stored = dataset.pixel_array
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "slice.dcm"
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(str(target))
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(stored))
        encoded = pydicom.dcmread(target)
    assert encoded.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    dataset.PixelData = encoded.PixelData
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def _encoder(syntax: str):
    """(encode one dataset in place, or None with the reason it cannot be done here)."""
    from pydicom.pixels import get_encoder

    if syntax == JPEGLosslessSV1:
        writer = sitk.ImageFileWriter()
        try:
            writer.SetImageIO("GDCMImageIO")
        except RuntimeError:
            return None, "SimpleITK was built without GDCM: no pip-installable JPEG lossless SV1 encoder here"
        return _jpeg_lossless_sv1, ""
    plugin = {RLELossless: "pydicom", JPEGLSLossless: "pyjpegls", JPEG2000Lossless: "pylibjpeg"}[syntax]
    encoder = get_encoder(syntax)
    if plugin not in encoder.available_plugins:
        return None, f"pydicom's {plugin} encoder for {syntax.name} is not installed (see requirements.txt)"
    return (lambda dataset: dataset.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)), ""


def compressed_copy(source: Path, target: Path, syntax: str) -> list[Path]:
    encode, reason = _encoder(syntax)
    if encode is None:
        pytest.skip(reason)
    target.mkdir(parents=True)
    written = []
    for file in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(file)
        encode(dataset)
        dataset.save_as(target / file.name, enforce_file_format=True)
        written.append(target / file.name)
    return written


SYNTAXES = {"rle": RLELossless, "jpeg-ls-lossless": JPEGLSLossless, "jpeg2000-lossless": JPEG2000Lossless,
            "jpeg-lossless-sv1": JPEGLosslessSV1}


@pytest.mark.parametrize("name", sorted(SYNTAXES))
def test_compressed_series_reads_like_the_uncompressed_one(tmp_path, plain_series, name):
    folder, expected = plain_series
    syntax = SYNTAXES[name]
    files = compressed_copy(folder, tmp_path / name, syntax)
    first = pydicom.dcmread(files[0])
    assert first.file_meta.TransferSyntaxUID == syntax
    assert len(first.PixelData) < 0.9 * 48 * 48 * 2  # really compressed
    # the pinned pylibjpeg plugins decode it (not only the GDCM fallback of hipas_core.io)
    from pydicom.pixels import pixel_array

    decoded = pixel_array(files[0], decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(decoded, pydicom.dcmread(folder / files[0].name).pixel_array)
    read = read_ct(tmp_path / name)
    assert_same_image(read, expected)
    assert voxel_sha256(read) == voxel_sha256(expected)


# ----------------------------------------------------------------------------- Enhanced CT


def enhanced_ct(source: Path, target: Path, *, per_frame_rescale: bool = True) -> Path:
    """One Enhanced CT Image Storage file holding the single-frame series in ``source``: geometry
    in PlanePosition/PlaneOrientation/PixelMeasures functional groups, the frames stored in reverse
    order, and (``per_frame_rescale``) a RescaleIntercept that differs between frames."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    slices = [pydicom.dcmread(f) for f in sorted(source.glob("*.dcm"))][::-1]
    first = slices[0]
    frames, per_frame = [], []
    for index, item in enumerate(slices):
        hu = item.pixel_array.astype(np.int32) * float(item.RescaleSlope) + float(item.RescaleIntercept)
        intercept = -1000.0 - 24.0 * (index % 2) if per_frame_rescale else -1024.0
        frames.append((hu - intercept).astype(np.int16))
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = item.ImagePositionPatient
        group.PlanePositionSequence = Sequence([position])
        content = Dataset()
        content.InStackPositionNumber = len(slices) - index
        group.FrameContentSequence = Sequence([content])
        frame_type = Dataset()
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        group.CTImageFrameTypeSequence = Sequence([frame_type])
        if per_frame_rescale:
            rescale = Dataset()
            rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = "1", f"{intercept:g}", "HU"
            group.PixelValueTransformationSequence = Sequence([rescale])
        per_frame.append(group)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([orientation])
    if not per_frame_rescale:
        rescale = Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = "1", "-1024", "HU"
        shared.PixelValueTransformationSequence = Sequence([rescale])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = first.SeriesInstanceUID + ".99"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality", "PatientName", "PatientID"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = first.Rows, first.Columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).tobytes()
    target.mkdir(parents=True)
    path = target / "enhanced.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize("per_frame_rescale", [True, False], ids=["per-frame-rescale", "shared-rescale"])
def test_enhanced_ct_reads_into_the_same_image_as_the_single_frame_series(tmp_path, plain_series, per_frame_rescale):
    folder, expected = plain_series
    path = enhanced_ct(folder, tmp_path / "enhanced", per_frame_rescale=per_frame_rescale)
    assert_same_image(read_ct(path.parent), expected)  # the folder
    assert_same_image(read_ct(path), expected)  # the file itself
    assert read_ct(path).GetMetaData("hipas_slice_thickness_mm") == expected.GetMetaData("hipas_slice_thickness_mm")


def test_compressed_enhanced_ct_reads_like_the_series(tmp_path, plain_series):
    folder, expected = plain_series
    path = enhanced_ct(folder, tmp_path / "enhanced")
    encode, reason = _encoder(JPEG2000Lossless)
    if encode is None:
        pytest.skip(reason)
    dataset = pydicom.dcmread(path)
    encode(dataset)
    dataset.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert_same_image(read_ct(path), expected)


def test_enhanced_ct_localizer_frames_are_not_a_volume(tmp_path, plain_series):
    folder, _ = plain_series
    path = enhanced_ct(folder, tmp_path / "enhanced")
    dataset = pydicom.dcmread(path)
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    dataset.save_as(path)
    with pytest.raises(InvalidScanError, match="localizer"):
        read_ct(path.parent)


# ----------------------------------------------------------------------------- what is not a CT volume


def make_mr(tmp_path: Path) -> Path:
    write_dicom_series(chest_phantom(), tmp_path / "mr", modality="MR")
    return tmp_path / "mr"


def make_localizer_only(tmp_path: Path) -> Path:
    """Three localizer images (ImageType LOCALIZER), two orientations."""
    scout = chest_phantom(shape=(3, 48, 48))
    files = write_dicom_series(scout, tmp_path / "scouts" / "a")
    edit_series(files, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    edit_series(files[2:], ImageOrientationPatient=["0", "1", "0", "0", "0", "-1"])
    return tmp_path / "scouts"


def make_single_slice_scouts(tmp_path: Path) -> Path:
    """Two single-slice series (no LOCALIZER flag), as some exports label their scouts."""
    for seed in (0, 1):
        write_dicom_series(chest_phantom(seed=seed, shape=(1, 48, 48)), tmp_path / "scouts" / f"s{seed}",
                           series_description=f"scout {seed}")
    return tmp_path / "scouts"


NOT_A_CT_VOLUME = {
    "mr": (make_mr, "not CT"),
    "localizer_only": (make_localizer_only, "localizer"),
    "single_slice_scouts": (make_single_slice_scouts, "localizer"),
}


@pytest.mark.parametrize("kind", sorted(NOT_A_CT_VOLUME))
def test_not_a_ct_volume_raises_one_line_naming_the_folder(tmp_path, kind):
    factory, phrase = NOT_A_CT_VOLUME[kind]
    folder = factory(tmp_path)
    with pytest.raises(InvalidScanError) as caught:
        read_ct(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message and phrase in message


@pytest.mark.parametrize("command", ["normalize", "lungs"])
@pytest.mark.parametrize("kind", sorted(NOT_A_CT_VOLUME))
def test_cli_not_a_ct_volume_exits_2_with_one_line_and_no_output(tmp_path, kind, command, hipas):
    factory, phrase = NOT_A_CT_VOLUME[kind]
    folder = factory(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = hipas(command, "-i", folder, "-o", out / "x.nii.gz")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0] and phrase in lines[0], result.stderr
    assert list(out.iterdir()) == []


def test_lungs_on_a_scan_without_lungs_exits_2_naming_the_file(tmp_path, hipas):
    folder = tmp_path / "head"
    write_dicom_series(head_phantom(), folder)
    out = tmp_path / "out"
    out.mkdir()
    result = hipas("lungs", "-i", folder, "-o", out / "lungs.nii.gz")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0] and "no lungs found" in lines[0], result.stderr
    assert list(out.iterdir()) == []
    marked = hipas("lungs", "-i", folder, "-o", out / "lungs.nii.gz", "--exclude-invalid", "--scan-id", "h1")
    assert marked.returncode == 0, marked.stderr
    from hipas_core.exclusion import read_marker

    marker = read_marker(out / "lungs.nii.gz")
    assert marker is not None and marker.stage == "lungs" and "no lungs found" in marker.reason


def test_lungs_with_an_implausibly_small_mask_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    """Whatever the method (lungmask here, faked), a mask of a few voxels is no lungs."""
    import hipas_core.lungs
    from hipas_core.cli import main

    image = chest_phantom()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))

    def few_voxels(ct_image, **_):
        mask = np.zeros(ct_image.GetSize()[::-1], np.uint8)
        mask[16, 20:23, 20:23] = 1
        out = sitk.GetImageFromArray(mask)
        out.CopyInformation(ct_image)
        return out

    monkeypatch.setattr(hipas_core.lungs, "lung_masks", few_voxels)
    monkeypatch.setattr(hipas_core.lungs, "resolve_lungmask_weights", lambda weights: Path("fake.pth"))
    status = main(["lungs", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "lungs.nii.gz"),
                   "--method", "lungmask"])
    assert status == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and str(tmp_path / "ct.nii.gz") in line and "no lungs found" in line
    assert not (tmp_path / "lungs.nii.gz").exists()


# ----------------------------------------------------------------------------- the real export


@pytest.mark.skipif(not REAL_CT.is_file(), reason=f"{REAL_CT} not present (the real CT lives outside the repository)")
def test_real_ct_export_reads_with_its_geometry_and_a_plausible_hu_range(tmp_path):
    with tarfile.open(REAL_CT) as archive:
        archive.extractall(tmp_path / "export", filter="data")
    series = next(p.parent for p in sorted((tmp_path / "export").rglob("*.dcm")))
    image = read_ct(series)
    assert image.GetSize() == (512, 512, 64)
    np.testing.assert_allclose(image.GetSpacing(), (0.842, 0.842, 5.0), atol=1e-3)
    assert float(image.GetMetaData("hipas_slice_thickness_mm")) == pytest.approx(5.0)
    hu = sitk.GetArrayViewFromImage(image)
    low, high = float(hu.min()), float(hu.max())
    assert -3100 <= low <= -900 and 500 <= high <= 4000, (low, high)
    assert -1100 <= float(np.median(hu[:, 200:312, 100:200])) <= 0  # lung and mediastinum, not padding
