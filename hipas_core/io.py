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

import csv
import hashlib
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hipas_core.conventions import (
    META_SLICE_THICKNESS,
    META_SOURCE_FORMAT,
    META_SPACING_ASSUMED,
    META_SPACING_SOURCE,
    STANDARD_SPACING,
)
from hipas_core.errors import InvalidInputError, InvalidScanError

MIN_SLICES = 16
"""Fewer slices than this is not a chest CT volume."""

SLICE_SPACING_TOLERANCE = 0.02
"""Relative deviation of one slice gap from the median gap that is still called uniform."""

GANTRY_TILT_TOLERANCE_DEG = 0.5

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
        image, thickness = _read_dicom(path, files, series_uid=series_uid)
        fmt = "dicom"
    elif not path.exists():
        raise InvalidScanError(f"{path}: no such file or folder")
    elif _is_enhanced_dicom_file(path):
        image, thickness = _read_dicom(path, [path], series_uid=series_uid)
        fmt = "dicom"
    elif series_uid is not None:
        raise InvalidInputError(f"{path}: a series UID was given but the input is not a DICOM folder")
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


# --------------------------------------------------------------------------------------------
# DICOM


def _is_enhanced_dicom_file(path: Path) -> bool:
    """A single file that is an Enhanced (multi-frame) DICOM image; read by ``_read_dicom``."""
    import pydicom

    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:] != b"DICM":
                return False
        return _is_multi_frame(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:  # noqa: BLE001 - anything unreadable here is left to SimpleITK's error
        return False


def _read_dicom(source: Path, files: list[Path], *, series_uid: str | None) -> tuple[sitk.Image, float]:
    """Pick one CT series out of ``files`` (see ``read_ct``) and read it; ``source`` names the input."""
    frames, unreadable = _dicom_frames_of(files)
    if not frames:
        raise InvalidScanError(f"{source}: no DICOM image files ({unreadable} unreadable or non-image files)")
    # a series may mix in localizer images: group by orientation and matrix size as well
    series: dict[tuple, list[_Frame]] = defaultdict(list)
    for frame in frames:
        key = (frame.series_uid, tuple(round(v, 3) for v in frame.orientation), frame.rows, frame.cols)
        series[key].append(frame)
    ct_series = {key: items for key, items in series.items() if items[0].modality == "CT"}
    if not ct_series:
        modalities = sorted({items[0].modality or "unknown" for items in series.values()})
        raise InvalidScanError(f"{source}: modality {'/'.join(modalities)}, not CT")
    volumes = {key: [f for f in items if not f.localizer] for key, items in ct_series.items()}
    volumes = {key: items for key, items in volumes.items() if items}
    if not volumes:
        count = sum(len(items) for items in ct_series.values())
        raise InvalidScanError(f"{source}: {count} localizer (scout) images only, no CT volume")
    if series_uid is not None:
        chosen = {key: items for key, items in volumes.items() if key[0] == series_uid}
        if not chosen:
            uids = sorted({key[0] for key in volumes}, key=_uid_order)
            listed = ", ".join(uids[:5]) + (", ..." if len(uids) > 5 else "")
            raise InvalidInputError(
                f"{source}: no CT series with SeriesInstanceUID {series_uid} ({len(uids)} available: {listed})"
            )
        volumes = chosen
    if all(len(items) == 1 for items in volumes.values()):
        raise InvalidScanError(
            f"{source}: {len(volumes)} single-slice image(s) only (localizers or scouts), no CT volume"
        )
    ranked = sorted(volumes.values(), key=_series_rank)
    items = ranked[0]
    others = {other[0].series_uid for other in ranked[1:] if len(other) > 1} - {items[0].series_uid}
    if others and series_uid is None:
        print(
            f"hipas: note: {source}: {len(others) + 1} CT series; reading {items[0].series_uid} "
            f"({len(items)} slices; most slices, then thinnest, then smallest UID); "
            "choose another with --series-uid",
            file=sys.stderr,
        )
    return _dicom_frames_to_image(source, items)


@dataclass(frozen=True)
class _Frame:
    """One slice of a DICOM series: a single-frame file, or one frame of an Enhanced CT file.

    ``position`` is ImagePositionPatient (LPS, mm); ``orientation`` ImageOrientationPatient (row
    then column direction cosines); ``pixel_spacing`` (row spacing = y, column spacing = x) in mm;
    ``thickness`` SliceThickness in mm (0 when absent); ``slope``/``intercept`` the rescale to HU.
    """

    file: Path
    frame: int | None  # 0-based frame of a multi-frame file; None for a single-frame file
    series_uid: str
    modality: str
    localizer: bool
    position: tuple[float, ...]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, ...]
    thickness: float
    rows: int
    cols: int
    slope: float
    intercept: float
    tilt: float


def _dicom_frames_of(files: list[Path]) -> tuple[list[_Frame], int]:
    """The image frames of every readable DICOM file in ``files``, and how many files were not."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    frames: list[_Frame] = []
    unreadable = 0
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            unreadable += 1
            continue
        try:
            if _is_multi_frame(header):
                frames.extend(_enhanced_frames(file, header))
            elif all(tag in header for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows")):
                frames.append(_single_frame(file, header))
            else:
                unreadable += 1
        except (ValueError, TypeError, IndexError, KeyError):  # malformed geometry or rescale values
            unreadable += 1
    return frames, unreadable


def _is_multi_frame(header) -> bool:
    """An Enhanced (multi-frame) image: its geometry is in per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in header


def _is_localizer(image_type) -> bool:
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    return any("LOCALIZER" in str(value).upper() for value in values)


def _floats(values, count: int) -> tuple[float, ...]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise ValueError(f"expected {count} finite numbers")
    return numbers


def _number(value, default: float) -> float:
    """A numeric DICOM value; ``default`` when absent, empty or zero."""
    return float(value) if value not in (None, "") and float(value) != 0 else default


def _single_frame(file: Path, header) -> _Frame:
    return _Frame(
        file=file,
        frame=None,
        series_uid=str(header.get("SeriesInstanceUID", "")),
        modality=str(header.get("Modality", "")),
        localizer=_is_localizer(header.get("ImageType")),
        position=_floats(header.ImagePositionPatient, 3),
        orientation=_floats(header.ImageOrientationPatient, 6),
        pixel_spacing=_floats(header.PixelSpacing, 2),
        thickness=_number(header.get("SliceThickness"), 0.0),
        rows=int(header.Rows),
        cols=int(header.get("Columns", 0) or 0),
        slope=_number(header.get("RescaleSlope"), 1.0),
        intercept=_number(header.get("RescaleIntercept"), 0.0),
        tilt=_number(header.get("GantryDetectorTilt"), 0.0),
    )


def _enhanced_frames(file: Path, header) -> list[_Frame]:
    """The frames of an Enhanced (multi-frame) CT file from its functional groups.

    Each attribute is taken from the frame's item of PerFrameFunctionalGroupsSequence, else from
    SharedFunctionalGroupsSequence: PlanePositionSequence (ImagePositionPatient),
    PlaneOrientationSequence (ImageOrientationPatient), PixelMeasuresSequence (PixelSpacing,
    SliceThickness), PixelValueTransformationSequence (RescaleSlope/Intercept),
    CTImageFrameTypeSequence (FrameType, for localizers), CTAcquisitionDetailsSequence (tilt).
    """
    count = int(header.get("NumberOfFrames", 1) or 1)
    per_frame = list(header.PerFrameFunctionalGroupsSequence)
    shared = (header.get("SharedFunctionalGroupsSequence") or [None])[0]
    if len(per_frame) != count:
        raise InvalidScanError(f"{file}: {len(per_frame)} per-frame functional groups for {count} frames")

    def attribute(index: int, sequence: str, keyword: str):
        for groups in (per_frame[index], shared):
            if groups is not None and groups.get(sequence):
                value = groups.get(sequence)[0].get(keyword)
                if value not in (None, ""):
                    return value
        return None

    top_localizer = _is_localizer(header.get("ImageType"))
    frames = []
    for index in range(count):
        position = attribute(index, "PlanePositionSequence", "ImagePositionPatient")
        orientation = attribute(index, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = attribute(index, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise InvalidScanError(f"{file}: frame {index + 1} lacks its plane position, orientation or pixel spacing")
        frames.append(_Frame(
            file=file,
            frame=index,
            series_uid=str(header.get("SeriesInstanceUID", "")),
            modality=str(header.get("Modality", "")),
            localizer=top_localizer or _is_localizer(attribute(index, "CTImageFrameTypeSequence", "FrameType")),
            position=_floats(position, 3),
            orientation=_floats(orientation, 6),
            pixel_spacing=_floats(spacing, 2),
            thickness=_number(attribute(index, "PixelMeasuresSequence", "SliceThickness"), 0.0),
            rows=int(header.Rows),
            cols=int(header.Columns),
            slope=_number(attribute(index, "PixelValueTransformationSequence", "RescaleSlope"), 1.0),
            intercept=_number(attribute(index, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0),
            tilt=_number(attribute(index, "CTAcquisitionDetailsSequence", "GantryDetectorTilt")
                         or header.get("GantryDetectorTilt"), 0.0),
        ))
    return frames


def _uid_order(uid: str) -> tuple:
    """UIDs compared component by component as integers (text order for malformed UIDs)."""
    try:
        return (0, tuple(int(part) for part in uid.split(".")), uid)
    except ValueError:
        return (1, (), uid)


def _series_rank(frames: list[_Frame]) -> tuple:
    """Sort key of the default series choice: most slices, then thinnest slices, then smallest UID."""
    thickness = frames[0].thickness if frames[0].thickness > 0 else float("inf")
    return (-len(frames), thickness, _uid_order(frames[0].series_uid))


def _dicom_frames_to_image(folder: Path, items: list[_Frame]) -> tuple[sitk.Image, float]:
    first = items[0]
    if len(items) < MIN_SLICES:
        raise InvalidScanError(f"{folder}: only {len(items)} slices (need at least {MIN_SLICES})")
    orientation = np.array(first.orientation, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if abs(first.tilt) > GANTRY_TILT_TOLERANCE_DEG:
        raise InvalidScanError(f"{folder}: gantry tilt {first.tilt:g} degrees (tilted acquisitions are not supported)")
    positions = np.array([frame.position for frame in items])
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
    rows, cols = first.rows, first.cols
    volume = np.empty((len(items), rows, cols), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}  # the stored frames of each multi-frame file, decoded once
    for index, frame in enumerate(items):
        if frame.frame is None:
            volume[index] = _dicom_slice_hu(frame.file, rows, cols)
            continue
        if frame.file not in decoded:
            decoded[frame.file] = _dicom_multi_frame_pixels(frame.file, rows, cols)
        volume[index] = decoded[frame.file][frame.frame] * np.float32(frame.slope) + np.float32(frame.intercept)
    pixel_spacing = first.pixel_spacing  # (row spacing = y, column spacing = x)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], median_gap))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    thickness = first.thickness or median_gap
    return image, thickness


def _decode_failure(file: Path, dataset, error: Exception) -> InvalidScanError:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
    reason = " ".join(str(error).split())[:120] or type(error).__name__
    return InvalidScanError(f"{file}: cannot decode pixel data ({name}: {reason})")


def _dicom_multi_frame_pixels(file: Path, rows: int, cols: int) -> np.ndarray:
    """Stored values of every frame of a multi-frame file, (frames, rows, cols), through pydicom."""
    import pydicom

    dataset = None
    try:
        dataset = pydicom.dcmread(file)
        pixels = np.asarray(dataset.pixel_array)
    except Exception as error:  # noqa: BLE001 - any decoding failure means unreadable
        raise _decode_failure(file, dataset, error) from None
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or pixels.shape[1:] != (rows, cols):
        raise InvalidScanError(f"{file}: frames of {pixels.shape[1:]} pixels where the header says {rows}x{cols}")
    return pixels


def _dicom_slice_hu(file: Path, rows: int, cols: int) -> np.ndarray:
    """One slice in HU; pydicom first (compressed transfer syntaxes through the pylibjpeg
    plugins), SimpleITK's GDCM reader for encodings pydicom cannot decode."""
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
    image.SetMetaData(META_SPACING_SOURCE, "assumed" if assumed else "metadata table")
    return image, thickness
