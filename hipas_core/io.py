"""Reading CT scans and label maps from every supported input format.

Supported inputs
----------------
* a DICOM series folder (searched recursively; RescaleSlope/Intercept applied; slices ordered by
  ImagePositionPatient along the slice normal), classic single-frame CT files or Enhanced CT
  (SOP class 1.2.840.10008.5.1.4.1.1.2.1: one file, geometry and rescale per frame from the
  functional groups), or a single Enhanced CT file,
* NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``),
* the public HiPaS dataset layout: ``ct_scan/NNN.npz`` (key ``data``, array stored as [x, y, z]),
  ``annotation/artery/NNN.npz`` and ``annotation/vein/NNN.npz`` (binary masks, same layout).

``read_ct`` returns a ``SimpleITK.Image`` of pixel type **float32 in Hounsfield units** (float32 keeps
fractional rescale slopes exact; 512 x 512 x 450 is about 470 MB). Spacing, origin and direction are
those of the scan (LPS physical space, as SimpleITK and DICOM use). Only geometry is carried over:
no header field of the input (DICOM tags, NIfTI descriptions) is copied into the returned image.
The image's metadata dictionary holds a few ``hipas_*`` keys written here (``hipas_source_format``,
``hipas_slice_thickness_mm``, ``hipas_spacing_assumed``, ``hipas_spacing_source``).

DICOM series selection: images are grouped by SeriesInstanceUID, orientation and matrix size;
non-CT modalities and localizers (ImageType or FrameType holding ``LOCALIZER``) are dropped. Of
what is left, the default is the series with the most slices, ties broken by the thinnest
SliceThickness, then by the smallest SeriesInstanceUID (compared component by component as
integers): deterministic, whatever the file names or the order of the files on disk. No kernel
is preferred (kernel names are vendor-specific). When other multi-slice CT series were passed
over, a note on stderr says so; ``read_ct(..., series_uid=UID)`` (``--series-uid``) picks another.
Only a localizer, only single-slice scouts, or only non-CT images: ``InvalidScanError``.

Compressed transfer syntaxes are decoded by pydicom with the pylibjpeg plugins (pinned in
requirements.txt): JPEG baseline/extended/lossless (process 14, SV1) and JPEG-LS through
pylibjpeg-libjpeg, JPEG 2000 through pylibjpeg-openjpeg, RLE through pylibjpeg-rle; a
single-frame file pydicom still cannot decode falls back to SimpleITK's built-in GDCM.

HiPaS NPZ spacing comes from an optional metadata table (CSV) with the columns

=================== =============================================================
``case_id``          the file stem (``001`` for ``ct_scan/001.npz``; compared as text)
``spacing_x_mm``     in-plane spacing along the array's first axis (x), mm
``spacing_y_mm``     in-plane spacing along the array's second axis (y), mm
``spacing_z_mm``     distance between slices (third axis, z), mm
``slice_thickness_mm`` optional; the reconstructed slice thickness (defaults to spacing_z_mm)
=================== =============================================================

When no table is given, or the case is not in it, the spacing of the standardized grid is assumed
(z 1.0 mm as the dataset states, in-plane 334/512 mm), a warning is printed on stderr, and the image
metadata says ``hipas_spacing_assumed = "1"``.

Bad input raises ``InvalidScanError`` with one line naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hipas_core.conventions import (
    META_SLICE_THICKNESS,
    META_SOURCE_FORMAT,
    META_SPACING_ASSUMED,
    META_SPACING_SOURCE,
    MIN_SLICES,
)
from hipas_core.dicom import is_enhanced_dicom_file, read_dicom
from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.hipas_npz import load_npz_zyx, npz_spacing, read_hipas_npz

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_HU_LOWEST_PLAUSIBLE_MIN = -500.0  # a chest CT always holds air (about -1000 HU)


# --------------------------------------------------------------------------------------------
# public API


def read_ct(
    path: str | os.PathLike,
    *,
    metadata_table: str | os.PathLike | None = None,
    series_uid: str | None = None,
) -> sitk.Image:
    """Read a CT scan as a float32 ``SimpleITK.Image`` in HU with its geometry.

    ``path``: a DICOM series folder (or one Enhanced CT file), a NIfTI/NRRD/MHA file, or a HiPaS
    ``ct_scan/NNN.npz``. ``metadata_table``: CSV giving the spacing of HiPaS NPZ cases (see the
    module docstring); ignored for other formats. ``series_uid``: the SeriesInstanceUID to read
    from a DICOM folder holding several series (default: the rule in the module docstring; a
    UID the folder lacks raises ``InvalidInputError``; given for a non-DICOM input, likewise).
    Raises ``InvalidScanError`` for anything that is not a usable CT.
    Slice thickness (mm) is in ``image.GetMetaData("hipas_slice_thickness_mm")``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InvalidScanError(f"{path}: empty folder")
        image, thickness = read_dicom(path, files, series_uid=series_uid)
        fmt = "dicom"
    elif not path.exists():
        raise InvalidScanError(f"{path}: no such file or folder")
    elif is_enhanced_dicom_file(path):
        image, thickness = read_dicom(path, [path], series_uid=series_uid)
        fmt = "dicom"
    elif series_uid is not None:
        raise InvalidInputError(f"{path}: a series UID was given but the input is not a DICOM folder")
    elif path.name.endswith(".npz"):
        image, thickness = read_hipas_npz(path, metadata_table=metadata_table)
        fmt = "hipas_npz"
    elif path.name.lower().endswith(_IMAGE_SUFFIXES):
        image = _read_image_file(path)
        thickness = image.GetSpacing()[2]
        fmt = "nifti" if ".nii" in path.name.lower() else "itk"
    else:
        # a single DICOM file or an unknown extension: let SimpleITK decide, then refuse if not 3D
        image = _read_with_sitk(path)
        thickness = image.GetSpacing()[2] if image.GetDimension() == 3 else 0.0
        fmt = "itk"
    image = _validated_ct(image, path)
    image.SetMetaData(META_SOURCE_FORMAT, fmt)
    image.SetMetaData(META_SLICE_THICKNESS, f"{float(thickness):.6g}")
    if not image.HasMetaDataKey(META_SPACING_ASSUMED):
        image.SetMetaData(META_SPACING_ASSUMED, "0")
        image.SetMetaData(META_SPACING_SOURCE, "header")
    return image


def read_labels(path: str | os.PathLike, *, metadata_table: str | os.PathLike | None = None) -> sitk.Image:
    """Read an artery/vein label map as a uint8 ``SimpleITK.Image`` (0 background, 1 artery, 2 vein).

    ``path``: a NIfTI/NRRD/MHA label map, or either file of a HiPaS annotation pair
    (``annotation/artery/NNN.npz`` or ``annotation/vein/NNN.npz``; both are read and combined,
    artery wins where the two masks overlap). The spacing of NPZ labels comes from
    ``metadata_table`` as for ``read_ct``. Raises ``InvalidScanError`` for unusable files.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidScanError(f"{path}: no such label file")
    if path.name.endswith(".npz"):
        case_id = path.name[: -len(".npz")]
        annotation = path.parent.parent
        artery = load_npz_zyx(annotation / "artery" / f"{case_id}.npz")
        vein = load_npz_zyx(annotation / "vein" / f"{case_id}.npz")
        if artery.shape != vein.shape:
            raise InvalidScanError(f"{path}: artery {artery.shape} and vein {vein.shape} masks differ in shape")
        labels = np.zeros(artery.shape, np.uint8)
        labels[vein > 0] = 2
        labels[artery > 0] = 1
        image = sitk.GetImageFromArray(labels)
        spacing, _, assumed = npz_spacing(path, case_id, metadata_table)
        image.SetSpacing(spacing)
        image.SetMetaData(META_SPACING_ASSUMED, "1" if assumed else "0")
        return image
    source = _read_image_file(path)
    if source.GetDimension() != 3 or source.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidScanError(f"{path}: not a 3D label map")
    values = sitk.GetArrayViewFromImage(source)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise InvalidScanError(f"{path}: label map holds NaN or infinite values")
    if values.min() < 0 or values.max() > 255 or (values.dtype.kind == "f" and np.any(values != np.round(values))):
        raise InvalidScanError(f"{path}: label values must be integers in 0..255")
    image = sitk.GetImageFromArray(values.astype(np.uint8))
    _copy_geometry(source, image)
    return image


def voxel_sha256(image: sitk.Image) -> str:
    """Hex SHA-256 identifying a scan by its content: the size (x, y, z) as text, then the voxels as
    little-endian float32 in (z, y, x) C order (HU, as ``read_ct`` returns them). The same scan
    gives the same hash from every format and transfer syntax; no path or header enters it."""
    values = np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype="<f4")
    digest = hashlib.sha256("x".join(str(v) for v in image.GetSize()).encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# shared checks


def _copy_geometry(source: sitk.Image, target: sitk.Image) -> None:
    target.SetSpacing(source.GetSpacing())
    target.SetOrigin(source.GetOrigin())
    target.SetDirection(source.GetDirection())


def _read_with_sitk(path: Path) -> sitk.Image:
    """Read any image SimpleITK knows; a fresh image holding geometry only (no header fields)."""
    if path.stat().st_size == 0:
        raise InvalidScanError(f"{path}: empty file")
    try:
        source = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InvalidScanError(f"{path}: unreadable or not an image ({_short_reason(error, path)})") from None
    if source.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidScanError(f"{path}: multi-component image, not a CT volume")
    if source.GetDimension() != 3:
        raise InvalidScanError(f"{path}: {source.GetDimension()}D image, a CT volume must be 3D")
    return source


def _read_image_file(path: Path) -> sitk.Image:
    return _read_nifti(path) if ".nii" in path.name.lower() else _read_with_sitk(path)


def _read_nifti(path: Path) -> sitk.Image:
    """NIfTI voxels through nibabel, geometry through SimpleITK.

    ITK's NIfTI reader silently accepts truncated files and turns NaN into 0, so the voxel data
    are decoded by nibabel (which fails on truncation) and only the header geometry by ITK (so the
    RAS-to-LPS handling of qform/sform is ITK's, as for every other image in the pipeline).
    """
    import nibabel

    if path.stat().st_size == 0:
        raise InvalidScanError(f"{path}: empty file")
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    try:
        info.ReadImageInformation()
        nifti = nibabel.load(str(path))
        data = np.asanyarray(nifti.dataobj)
    except Exception as error:  # noqa: BLE001 - every decoding failure means unreadable
        raise InvalidScanError(f"{path}: unreadable or truncated NIfTI ({_short_reason(error, path)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 or info.GetDimension() < 3:
        raise InvalidScanError(f"{path}: {data.ndim}D image, a CT volume must be 3D")
    if data.dtype.kind not in "iufb":
        raise InvalidScanError(f"{path}: voxels of type {data.dtype}, not a scalar image")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))
    image.SetSpacing(info.GetSpacing()[:3])
    image.SetOrigin(info.GetOrigin()[:3])
    direction = np.array(info.GetDirection()).reshape(info.GetDimension(), -1)[:3, :3]
    image.SetDirection(direction.ravel().tolist())
    return image


def _short_reason(error: Exception, path: Path) -> str:
    text = " ".join(str(error).split()).replace(str(path), "").replace('""', "")
    if "ERROR:" in text:
        text = text.split("ERROR:", 1)[1]
    if "Unable to determine ImageIO reader" in text:
        return "not a known image format"
    return (text.strip() or type(error).__name__)[:120]


def _validated_ct(source: sitk.Image, path: Path) -> sitk.Image:
    """Checks shared by every format; returns a float32 copy holding only the geometry."""
    if source.GetDimension() != 3:
        raise InvalidScanError(f"{path}: {source.GetDimension()}D image, a CT volume must be 3D")
    size = source.GetSize()
    if min(size) < 2 or size[2] < MIN_SLICES:
        raise InvalidScanError(f"{path}: only {size[2]} slices of {size[0]}x{size[1]} (need at least {MIN_SLICES})")
    if any(not np.isfinite(s) or s <= 0 for s in source.GetSpacing()):
        raise InvalidScanError(f"{path}: invalid voxel spacing {source.GetSpacing()}")
    values = sitk.GetArrayFromImage(source)
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise InvalidScanError(f"{path}: {int(np.count_nonzero(~np.isfinite(values)))} voxels are NaN or infinite")
    low, high = float(values.min()), float(values.max())
    if low > _HU_LOWEST_PLAUSIBLE_MIN:
        raise InvalidScanError(
            f"{path}: implausible HU range [{low:g}, {high:g}] (no air below {_HU_LOWEST_PLAUSIBLE_MIN:g} HU; "
            "unscaled or normalized data?)"
        )
    image = sitk.GetImageFromArray(values)
    _copy_geometry(source, image)
    for key in (META_SPACING_ASSUMED, META_SPACING_SOURCE):
        if source.HasMetaDataKey(key):
            image.SetMetaData(key, source.GetMetaData(key))
    return image
