"""Writing CT volumes in every input format the pipeline reads (DICOM series, HiPaS NPZ, NIfTI).

All writers are atomic: a DICOM series is written into a temporary folder beside the destination
and renamed into place; single files go through ``hipas_core.atomic``. Plain NIfTI is
``hipas_core.atomic.write_image``. Nothing patient-identifying is written: DICOM files carry only
geometry, rescale values, generated UIDs and the fields a CT Image Storage object requires.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hipas_core.atomic import atomic_path, write_image

__all__ = ["write_dicom_series", "write_hipas_npz", "write_image"]

_UID_ROOT = "1.2.826.0.1.3680043.10.1448."  # fixed prefix; the rest is derived from the content


def write_dicom_series(
    image: sitk.Image,
    folder: str | os.PathLike,
    *,
    series_description: str = "HiPaS synthetic CT",
    rescale: tuple[float, float] = (1.0, -1024.0),
    modality: str = "CT",
    slice_thickness_mm: float | None = None,
) -> list[Path]:
    """Write a 3D HU image as a DICOM series (one file per slice, ``IM00001.dcm`` ...) in ``folder``.

    ``rescale`` = (RescaleSlope, RescaleIntercept): stored value = round((HU - intercept) / slope),
    as uint16 when every stored value is >= 0, else int16. ``modality`` is written as given (tests
    use ``"MR"``). ``slice_thickness_mm`` defaults to the z spacing. Geometry (ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing) follows the image's origin, direction and spacing. UIDs
    are derived from the voxel data (deterministic). ``folder`` must not exist or be empty; it
    appears complete or not at all. Returns the written file paths in slice order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    if image.GetDimension() != 3:
        raise ValueError("write_dicom_series needs a 3D image")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: destination folder is not empty")
    slope, intercept = (float(rescale[0]), float(rescale[1]))
    hu = sitk.GetArrayFromImage(image).astype(np.float64)
    stored = np.round((hu - intercept) / slope)
    dtype = np.uint16 if stored.min() >= 0 else np.int16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)

    spacing_key = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    digest = hashlib.sha256(stored.tobytes() + f"{series_description}|{modality}|{spacing_key}".encode()).hexdigest()
    number = str(int(digest[:12], 16))
    study_uid = f"{_UID_ROOT}1.{number}"
    series_uid = f"{_UID_ROOT}2.{number}"
    for_uid = f"{_UID_ROOT}3.{number}"
    direction = np.array(image.GetDirection()).reshape(3, 3)
    row_cosine, col_cosine = direction[:, 0], direction[:, 1]
    spacing = image.GetSpacing()
    thickness = float(slice_thickness_mm if slice_thickness_mm is not None else spacing[2])
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    written: list[Path] = []
    try:
        for index in range(stored.shape[0]):
            position = image.TransformIndexToPhysicalPoint((0, 0, index))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = f"{series_uid}.{index + 1}"
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.Modality = modality
            ds.SeriesDescription = series_description
            ds.PatientName = "Anonymous"
            ds.PatientID = "ANON"
            ds.SeriesNumber = 1
            ds.InstanceNumber = index + 1
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cosine, *col_cosine)]
            ds.PixelSpacing = [f"{spacing[1]:.8g}", f"{spacing[0]:.8g}"]  # row spacing (y), column spacing (x)
            ds.SliceThickness = f"{thickness:.6g}"
            ds.SliceLocation = f"{float(np.dot(position, np.cross(row_cosine, col_cosine))):.6f}"
            ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0 if dtype == np.uint16 else 1
            ds.RescaleSlope = f"{slope:.8g}"
            ds.RescaleIntercept = f"{intercept:.8g}"
            ds.RescaleType = "HU"
            ds.PixelData = np.ascontiguousarray(stored[index]).tobytes()
            target = staging / f"IM{index + 1:05d}.dcm"
            pydicom.dcmwrite(target, ds, enforce_file_format=True)
            written.append(folder / target.name)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def write_hipas_npz(
    ct_image: sitk.Image,
    folder: str | os.PathLike,
    case_id: str,
    *,
    artery: sitk.Image | np.ndarray | None = None,
    vein: sitk.Image | np.ndarray | None = None,
) -> dict[str, Path]:
    """Write one case in the public HiPaS dataset layout under ``folder``.

    ``folder/ct_scan/<case_id>.npz`` holds key ``data``: the CT in HU as int16, array order
    [x, y, z] (the dataset's order; arrays here are (z, y, x), so they are transposed).
    ``artery``/``vein`` (binary masks, images or (z, y, x) arrays, same grid) go to
    ``folder/annotation/artery/<case_id>.npz`` and ``folder/annotation/vein/<case_id>.npz`` as uint8.
    The format stores no spacing: keep it in a metadata table (see ``hipas_core.io``).
    Returns the written paths by kind ("ct", "artery", "vein").
    """
    folder = Path(folder)
    hu = sitk.GetArrayFromImage(ct_image)
    ct = np.clip(np.round(hu), -32768, 32767).astype(np.int16)
    written = {"ct": folder / "ct_scan" / f"{case_id}.npz"}
    _save_npz(written["ct"], np.transpose(ct, (2, 1, 0)))
    for kind, mask in (("artery", artery), ("vein", vein)):
        if mask is None:
            continue
        array = sitk.GetArrayFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
        if array.shape != ct.shape:
            raise ValueError(f"{kind} mask shape {array.shape} differs from the CT {ct.shape}")
        written[kind] = folder / "annotation" / kind / f"{case_id}.npz"
        _save_npz(written[kind], np.transpose((array > 0).astype(np.uint8), (2, 1, 0)))
    return written


def _save_npz(destination: Path, data: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, data=data)
    with atomic_path(destination) as tmp:
        tmp.write_bytes(buffer.getvalue())
