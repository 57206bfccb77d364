"""Reading CT scans and label maps from every supported input format.

Supported inputs
----------------
* a DICOM series folder (the CT series with the most slices is read when the folder holds several;
  RescaleSlope/Intercept applied; slices ordered by ImagePositionPatient along the slice normal),
* NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``),
* the public HiPaS dataset layout: ``ct_scan/NNN.npz`` (key ``data``, array stored as [x, y, z]),
  ``annotation/artery/NNN.npz`` and ``annotation/vein/NNN.npz`` (binary masks, same layout).

``read_ct`` returns a ``SimpleITK.Image`` of pixel type **float32 in Hounsfield units** (float32 keeps
fractional rescale slopes exact; 512 x 512 x 450 is about 470 MB). Spacing, origin and direction are
those of the scan (LPS physical space, as SimpleITK and DICOM use). Only geometry is carried over:
no header field of the input (DICOM tags, NIfTI descriptions) is copied into the returned image.
The image's metadata dictionary holds a few ``hipas_*`` keys written here (``hipas_source_format``,
``hipas_slice_thickness_mm``, ``hipas_spacing_assumed``, ``hipas_spacing_source``).

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

import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.grid import STANDARD_SPACING

MIN_SLICES = 16
"""Fewer slices than this is not a chest CT volume."""

SLICE_SPACING_TOLERANCE = 0.02
"""Relative deviation of one slice gap from the median gap that is still called uniform."""

GANTRY_TILT_TOLERANCE_DEG = 0.5

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_HU_LOWEST_PLAUSIBLE_MIN = -500.0  # a chest CT always holds air (about -1000 HU)

META_SOURCE_FORMAT = "hipas_source_format"
META_SLICE_THICKNESS = "hipas_slice_thickness_mm"
META_SPACING_ASSUMED = "hipas_spacing_assumed"
META_SPACING_SOURCE = "hipas_spacing_source"


# --------------------------------------------------------------------------------------------
# public API


def read_ct(path: str | os.PathLike, *, metadata_table: str | os.PathLike | None = None) -> sitk.Image:
    """Read a CT scan as a float32 ``SimpleITK.Image`` in HU with its geometry.

    ``path``: a DICOM series folder, a NIfTI/NRRD/MHA file, or a HiPaS ``ct_scan/NNN.npz``.
    ``metadata_table``: CSV giving the spacing of HiPaS NPZ cases (see the module docstring);
    ignored for other formats. Raises ``InvalidScanError`` for anything that is not a usable CT.
    Slice thickness (mm) is in ``image.GetMetaData("hipas_slice_thickness_mm")``.
    """
    path = Path(path)
    if path.is_dir():
        image, thickness = _read_dicom_folder(path)
        fmt = "dicom"
    elif not path.exists():
        raise InvalidScanError(f"{path}: no such file or folder")
    elif path.name.endswith(".npz"):
        image, thickness = _read_hipas_npz(path, metadata_table=metadata_table)
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
        artery = _load_npz_zyx(annotation / "artery" / f"{case_id}.npz")
        vein = _load_npz_zyx(annotation / "vein" / f"{case_id}.npz")
        if artery.shape != vein.shape:
            raise InvalidScanError(f"{path}: artery {artery.shape} and vein {vein.shape} masks differ in shape")
        labels = np.zeros(artery.shape, np.uint8)
        labels[vein > 0] = 2
        labels[artery > 0] = 1
        image = sitk.GetImageFromArray(labels)
        spacing, _, assumed = _npz_spacing(path, case_id, metadata_table)
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


# --------------------------------------------------------------------------------------------
# DICOM


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, float]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InvalidScanError(f"{folder}: empty folder")
    series: dict[tuple, list[tuple[Path, object]]] = defaultdict(list)
    unreadable = 0
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            unreadable += 1
            continue
        if any(tag not in header for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows")):
            unreadable += 1
            continue
        # a series may mix in localizer images: group by orientation and matrix size as well
        orientation = tuple(round(float(v), 3) for v in header.get("ImageOrientationPatient", []) or [])
        key = (str(header.get("SeriesInstanceUID", "")), orientation, header.get("Rows"), header.get("Columns"))
        series[key].append((file, header))
    if not series:
        raise InvalidScanError(f"{folder}: no DICOM image files ({unreadable} unreadable or non-image files)")
    ct_series = {uid: items for uid, items in series.items() if str(items[0][1].get("Modality", "")) == "CT"}
    if not ct_series:
        modalities = sorted({str(items[0][1].get("Modality", "unknown")) for items in series.values()})
        raise InvalidScanError(f"{folder}: modality {'/'.join(modalities)}, not CT")
    items = max(ct_series.values(), key=len)
    return _dicom_series_to_image(folder, items)


def _dicom_series_to_image(folder: Path, items: list) -> tuple[sitk.Image, float]:
    first = items[0][1]
    if len(items) < MIN_SLICES:
        raise InvalidScanError(f"{folder}: only {len(items)} slices (need at least {MIN_SLICES})")
    orientation = np.array([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    tilt = float(first.get("GantryDetectorTilt", 0) or 0)
    if abs(tilt) > GANTRY_TILT_TOLERANCE_DEG:
        raise InvalidScanError(f"{folder}: gantry tilt {tilt:g} degrees (tilted acquisitions are not supported)")
    positions = np.array([[float(v) for v in header.ImagePositionPatient] for _, header in items])
    offsets = positions @ normal
    order = np.argsort(offsets, kind="stable")
    positions, offsets = positions[order], offsets[order]
    items = [items[i] for i in order]
    gaps = np.diff(offsets)
    if np.any(gaps < 1e-3):
        raise InvalidScanError(f"{folder}: two or more slices share a position (duplicate slices)")
    steps = np.diff(positions, axis=0)
    cosines = (steps @ normal) / np.linalg.norm(steps, axis=1)
    worst = float(np.degrees(np.arccos(np.clip(cosines.min(), -1, 1))))
    if worst > GANTRY_TILT_TOLERANCE_DEG:
        raise InvalidScanError(
            f"{folder}: slices are offset {worst:.1f} degrees from the slice normal (gantry tilt; not supported)"
        )
    median_gap = float(np.median(gaps))
    deviation = np.abs(gaps - median_gap) / median_gap
    if deviation.max() > SLICE_SPACING_TOLERANCE:
        worst_gap = float(gaps[int(np.argmax(deviation))])
        ratio = worst_gap / median_gap
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            raise InvalidScanError(
                f"{folder}: missing slices (a gap of {worst_gap:.3g} mm where slices are {median_gap:.3g} mm apart)"
            )
        raise InvalidScanError(
            f"{folder}: non-uniform slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm)"
        )
    rows, cols = int(first.Rows), int(first.Columns)
    volume = np.empty((len(items), rows, cols), dtype=np.float32)
    for index, (file, _) in enumerate(items):
        volume[index] = _dicom_slice_hu(file, rows, cols)
    pixel_spacing = [float(v) for v in first.PixelSpacing]  # (row spacing = y, column spacing = x)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], median_gap))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    thickness = float(first.get("SliceThickness", 0) or 0) or median_gap
    return image, thickness


def _dicom_slice_hu(file: Path, rows: int, cols: int) -> np.ndarray:
    """One slice in HU; pydicom first, SimpleITK's GDCM reader for encodings pydicom cannot decode."""
    import pydicom

    try:
        dataset = pydicom.dcmread(file)
        if str(dataset.get("Modality", "")) != "CT":
            raise InvalidScanError(f"{file}: modality {dataset.get('Modality', 'unknown')} inside a CT series")
        pixels = dataset.pixel_array.astype(np.float32)
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        pixels = pixels * slope + intercept
    except InvalidScanError:
        raise
    except Exception:  # noqa: BLE001 - any decoding failure falls back to GDCM
        try:
            pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(file))).astype(np.float32)  # rescaled by GDCM
        except RuntimeError:
            raise InvalidScanError(f"{file}: unreadable or truncated DICOM pixel data") from None
        pixels = pixels.reshape(pixels.shape[-2:]) if pixels.size == rows * cols else pixels
    if pixels.shape != (rows, cols):
        raise InvalidScanError(f"{file}: slice of {pixels.shape} pixels in a series of {rows}x{cols}")
    return pixels


# --------------------------------------------------------------------------------------------
# HiPaS public dataset (NPZ)


def _load_npz_zyx(path: Path) -> np.ndarray:
    """The ``data`` array of a HiPaS NPZ, transposed from [x, y, z] to (z, y, x)."""
    if not path.is_file():
        raise InvalidScanError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "data" not in archive.files:
                raise InvalidScanError(f"{path}: no 'data' array (keys: {', '.join(archive.files) or 'none'})")
            data = archive["data"]
    except InvalidScanError:
        raise
    except Exception as error:  # noqa: BLE001 - zip/format errors of every kind mean unreadable
        raise InvalidScanError(f"{path}: unreadable NPZ ({type(error).__name__})") from None
    if data.ndim != 3:
        raise InvalidScanError(f"{path}: {data.ndim}D array, a CT volume must be 3D")
    if data.dtype.kind not in "iufb":
        raise InvalidScanError(f"{path}: array of {data.dtype}, not numbers")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def _npz_spacing(
    path: Path, case_id: str, metadata_table: str | os.PathLike | None
) -> tuple[tuple[float, float, float], float, bool]:
    """(spacing in SimpleITK (x, y, z) order, slice thickness, assumed?) for one NPZ case."""
    if metadata_table is not None:
        row = _metadata_row(Path(metadata_table), case_id)
        if row is not None:
            spacing = (row["spacing_x_mm"], row["spacing_y_mm"], row["spacing_z_mm"])
            return spacing, row.get("slice_thickness_mm") or row["spacing_z_mm"], False
    assumed = (STANDARD_SPACING[2], STANDARD_SPACING[1], STANDARD_SPACING[0])
    where = "no metadata table" if metadata_table is None else f"case {case_id} not in {metadata_table}"
    print(
        f"hipas: warning: {path}: {where}; assuming spacing x={assumed[0]:.4g} y={assumed[1]:.4g} "
        f"z={assumed[2]:.4g} mm (HiPaS dataset: 1 mm slices, standardized in-plane grid)",
        file=sys.stderr,
    )
    return assumed, assumed[2], True


def _metadata_row(table: Path, case_id: str) -> dict[str, float] | None:
    required = ("case_id", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm")
    try:
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidInputError(f"{table}: metadata table lacks column(s) {', '.join(missing)}")
            for record in reader:
                if str(record["case_id"]).strip() != case_id:
                    continue
                try:
                    values = {k: float(record[k]) for k in required[1:]}
                    if record.get("slice_thickness_mm"):
                        values["slice_thickness_mm"] = float(record["slice_thickness_mm"])
                except (TypeError, ValueError):
                    raise InvalidInputError(f"{table}: case {case_id}: spacing is not a number") from None
                if any(not np.isfinite(v) or v <= 0 for v in values.values()):
                    raise InvalidInputError(f"{table}: case {case_id}: spacing must be positive")
                return values
    except OSError as error:
        raise InvalidInputError(f"{table}: cannot read metadata table ({error.strerror})") from None
    return None


def _read_hipas_npz(path: Path, *, metadata_table) -> tuple[sitk.Image, float]:
    case_id = path.name[: -len(".npz")]
    volume = _load_npz_zyx(path)
    image = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    spacing, thickness, assumed = _npz_spacing(path, case_id, metadata_table)
    image.SetSpacing(spacing)
    image.SetMetaData(META_SPACING_ASSUMED, "1" if assumed else "0")
    image.SetMetaData(META_SPACING_SOURCE, "assumed" if assumed else str(metadata_table))
    return image, thickness
