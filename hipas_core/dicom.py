"""Reading one CT series out of DICOM files (``hipas_core.io.read_ct`` calls it for a folder or an
Enhanced CT file; the selection rule, rescaling and geometry checks are described in
``hipas_core.io``'s module docstring).

Classic single-frame CT files and Enhanced CT (one file, geometry and rescale per frame from the
functional groups) are read through pydicom; slices are ordered by ImagePositionPatient along the
slice normal. Bad input raises ``InvalidScanError`` with one line naming the file and the problem.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hipas_core.conventions import MIN_SLICES
from hipas_core.errors import InvalidInputError, InvalidScanError

SLICE_SPACING_TOLERANCE = 0.02
"""Relative deviation of one slice gap from the median gap that is still called uniform."""

GANTRY_TILT_TOLERANCE_DEG = 0.5

__all__ = ["is_enhanced_dicom_file", "read_dicom"]



def is_enhanced_dicom_file(path: Path) -> bool:
    """A single file that is an Enhanced (multi-frame) DICOM image; read by ``read_dicom``."""
    import pydicom

    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:] != b"DICM":
                return False
        return _is_multi_frame(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:  # noqa: BLE001 - anything unreadable here is left to SimpleITK's error
        return False


def read_dicom(source: Path, files: list[Path], *, series_uid: str | None) -> tuple[sitk.Image, float]:
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
