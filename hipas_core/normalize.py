"""Spatial normalization: any CT to the standardized grid and masks back to the input grid.

The standardized grid (``hipas_core.grid``): spacing (z, y, x) = (1.0, 334/512, 334/512) mm,
identity direction in LPS (array axes (z, y, x) = inferior->superior, anterior->posterior,
right->left). It covers the same physical box as the input: the input's voxel-edge bounding box
in LPS, with the number of standard voxels per axis rounded to the nearest integer and the grid
centred in that box (so the extent agrees to within half a standard voxel per side).

Resampling uses SimpleITK's multi-threaded resampler in a single pass (reorientation and spacing
change together): CT linear, label maps nearest neighbour or, with ``interpolation="label"``,
per-label linear interpolation of one-hot maps followed by an argmax (keeps thin vessels that
nearest neighbour drops when the target grid is coarser than the source).

A ``NormalizationRecord`` (JSON-serialisable) keeps the input grid so that any mask in the
standard grid can be mapped back exactly onto the input grid with ``to_input_grid``.

Before resampling, a scan whose noise says it was reconstructed with a sharp (lung) kernel is
smoothed in-plane (``hipas_core.noise.harmonize_noise``; ``noise_harmonization=False`` turns it
off); the record keeps the measured noise and the smoothing applied.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from hipas_core.conventions import (
    HU_WINDOW,
    I2SR_THICKNESS_MM,
    META_SLICE_THICKNESS,
    META_SPACING_ASSUMED,
    STANDARD_ORIENTATION,
    STANDARD_SPACING,
    needs_super_resolution,
)

Interpolation = Literal["linear", "nearest", "label", "auto"]

CT_OUTSIDE_HU = -1024.0
"""Value given to standard-grid voxels outside the input field of view (air)."""


@dataclass
class NormalizationRecord:
    """The input grid of a normalized scan; enough to map any standard-grid mask back exactly.

    Sizes and spacings are in (z, y, x) order (voxels, mm); ``input_origin`` is the physical LPS
    position (x, y, z) of the first voxel's centre and ``input_direction`` the 3x3 direction
    matrix row-major, both as SimpleITK reports them. ``z_method`` is how z was resampled:
    ``"linear"`` (trilinear) or ``"i2sr"`` (I2SR super-resolution to 1 mm first).
    """

    input_size: tuple[int, int, int]
    input_spacing: tuple[float, float, float]
    input_origin: tuple[float, float, float]
    input_direction: tuple[float, ...]
    slice_thickness_mm: float
    needs_i2sr: bool
    z_method: str
    standard_size: tuple[int, int, int]
    standard_spacing: tuple[float, float, float] = STANDARD_SPACING
    standard_origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: str = STANDARD_ORIENTATION
    spacing_assumed: bool = False
    notes: list[str] = field(default_factory=list)
    input_noise_hu: float | None = None  # hipas_core.noise.estimate_noise_hu of the input (None: not measured)
    noise_smoothing_sigma_px: float = 0.0  # in-plane Gaussian applied before resampling (0: none)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> NormalizationRecord:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("input_size", "input_spacing", "input_origin", "input_direction", "standard_size",
                    "standard_spacing", "standard_origin"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> NormalizationRecord:
        return cls.from_dict(json.loads(text))

    def input_reference(self) -> sitk.Image:
        """An empty image with the input grid (for resampling onto it)."""
        reference = sitk.Image([int(v) for v in self.input_size[::-1]], sitk.sitkUInt8)
        reference.SetSpacing([float(v) for v in self.input_spacing[::-1]])
        reference.SetOrigin([float(v) for v in self.input_origin])
        reference.SetDirection([float(v) for v in self.input_direction])
        return reference


def slice_thickness_mm(image: sitk.Image) -> float:
    """Slice thickness recorded by ``hipas_core.io.read_ct``, else the spacing along the slice axis."""
    if image.HasMetaDataKey(META_SLICE_THICKNESS):
        try:
            value = float(image.GetMetaData(META_SLICE_THICKNESS))
            if value > 0:
                return value
        except ValueError:
            pass
    return float(image.GetSpacing()[2])


def standard_reference(image: sitk.Image) -> sitk.Image:
    """An empty image with the standardized grid covering ``image``'s physical box (see module doc)."""
    size_xyz = np.array(image.GetSize(), dtype=np.float64)
    corners_index = np.array(
        [[i, j, k] for i in (-0.5, size_xyz[0] - 0.5) for j in (-0.5, size_xyz[1] - 0.5) for k in (-0.5, size_xyz[2] - 0.5)]
    )
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners_index])
    low, high = corners.min(axis=0), corners.max(axis=0)
    spacing_xyz = np.array(STANDARD_SPACING[::-1])
    extent = high - low
    size = np.maximum(1, np.round(extent / spacing_xyz - 1e-6)).astype(int)
    origin = low + (extent - size * spacing_xyz) / 2 + spacing_xyz / 2
    reference = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    reference.SetSpacing(spacing_xyz.tolist())
    reference.SetOrigin(origin.tolist())
    reference.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return reference


def to_standard_grid(image: sitk.Image, *, interpolation: Interpolation = "linear") -> sitk.Image:
    """Resample ``image`` onto the standardized grid covering it (see module docstring).

    ``"linear"``: float32 output (CT: voxels outside the field of view get -1024 HU).
    ``"nearest"`` / ``"label"``: label maps, output uint8 (``"label"`` = one-hot linear + argmax).
    ``"auto"``: float images linearly; label maps nearest where the standard grid is at least as
    fine as the input along every axis, else ``"label"``.
    """
    if interpolation == "auto":
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            interpolation = "linear"
        else:
            finer = any(s < t - 1e-6 for s, t in zip(image.GetSpacing()[::-1], STANDARD_SPACING, strict=True))
            interpolation = "label" if finer else "nearest"
    return _resample(image, standard_reference(image), interpolation, outside=_outside_value(image, interpolation))


def to_input_grid(
    standard_mask: sitk.Image, record: NormalizationRecord, *, interpolation: Interpolation = "auto"
) -> sitk.Image:
    """Map an image in the standardized grid back onto the input grid stored in ``record``.

    Output has exactly the input's size, spacing, origin and direction. ``"nearest"`` and
    ``"label"`` give uint8 label maps; ``"linear"`` gives float32 (probabilities: map them back
    linearly and threshold, the most faithful way back for a network's output).
    ``"auto"`` (default): float images linearly; label maps by nearest neighbour when the input
    grid is nowhere finer than the standard grid (then the round trip is exact), else ``"label"``
    (one-hot linear + argmax), which keeps more of thin vessels.
    """
    if interpolation == "auto":
        if standard_mask.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            interpolation = "linear"
        else:
            finer = any(i < s - 1e-6 for i, s in zip(record.input_spacing, record.standard_spacing, strict=True))
            interpolation = "label" if finer else "nearest"
    return _resample(standard_mask, record.input_reference(), interpolation, outside=0.0)


def normalize_ct(
    image: sitk.Image,
    *,
    i2sr_model=None,
    device: str = "cpu",
    i2sr_threshold_mm: float = I2SR_THICKNESS_MM,
    noise_harmonization: bool = True,
) -> tuple[sitk.Image, NormalizationRecord]:
    """Resample a CT (HU) onto the standardized grid; returns (float32 HU image, record).

    Slices thicker than ``i2sr_threshold_mm`` (the paper's 2 mm) set ``record.needs_i2sr``. They are super-resolved to
    1 mm with I2SR first when ``i2sr_model`` (a model from ``hipas_core.i2sr.load_model``) is given,
    otherwise interpolated trilinearly like thin slices; ``record.z_method`` says which. With
    ``noise_harmonization`` (default) a sharp-kernel scan is smoothed in-plane first
    (``hipas_core.noise.harmonize_noise``; ``record.input_noise_hu``, ``record.noise_smoothing_sigma_px``).
    The input image is not modified.
    """
    thickness = slice_thickness_mm(image)
    needs_i2sr = needs_super_resolution(thickness, i2sr_threshold_mm)
    notes = []
    noise_hu, smoothing = None, 0.0
    if noise_harmonization:
        from hipas_core.noise import HARMONIZATION_THRESHOLD_HU, harmonize_noise

        harmonized, measured, smoothing = harmonize_noise(image)
        noise_hu = None if math.isnan(measured) else round(measured, 2)
        if smoothing:
            notes.append(f"input noise {measured:.0f} HU > {HARMONIZATION_THRESHOLD_HU:g} HU (a sharp kernel): "
                         f"smoothed in-plane, Gaussian sigma {smoothing:g} px")
    else:
        harmonized = image
    source, z_method = harmonized, "linear"
    if needs_i2sr and i2sr_model is not None:
        from hipas_core.i2sr import super_resolve

        source = super_resolve(harmonized, model=i2sr_model, device=device)
        # I2SR output spans first-to-last input slice centre; repeat its end slices so the
        # standard grid (which covers the input's voxel-edge box) is filled as linear resampling
        # would fill it (edge values), not with outside air
        source = _pad_slices_with_edges(source, math.ceil(thickness / 2 / source.GetSpacing()[2]) + 1)
        z_method = "i2sr"
    elif needs_i2sr:
        notes.append(f"slice thickness {thickness:g} mm > {i2sr_threshold_mm:g} mm; no I2SR model given, z resampled trilinearly")
    reference = standard_reference(image)
    standard = _resample(source, reference, "linear", outside=CT_OUTSIDE_HU)
    assumed = image.HasMetaDataKey(META_SPACING_ASSUMED) and image.GetMetaData(META_SPACING_ASSUMED) == "1"
    if assumed:
        notes.append("input voxel spacing was assumed (not in the file or a metadata table)")
    record = NormalizationRecord(
        input_size=tuple(int(v) for v in image.GetSize()[::-1]),
        input_spacing=tuple(float(v) for v in image.GetSpacing()[::-1]),
        input_origin=tuple(float(v) for v in image.GetOrigin()),
        input_direction=tuple(float(v) for v in image.GetDirection()),
        slice_thickness_mm=float(thickness),
        needs_i2sr=bool(needs_i2sr),
        z_method=z_method,
        standard_size=tuple(int(v) for v in standard.GetSize()[::-1]),
        standard_origin=tuple(float(v) for v in standard.GetOrigin()),
        spacing_assumed=bool(assumed),
        notes=notes,
        input_noise_hu=noise_hu,
        noise_smoothing_sigma_px=float(smoothing),
    )
    return standard, record


def _pad_slices_with_edges(image: sitk.Image, count: int) -> sitk.Image:
    """``image`` with ``count`` copies of its first and last slice added beyond each end (index axis z)."""
    array = np.pad(sitk.GetArrayViewFromImage(image), ((count, count), (0, 0), (0, 0)), mode="edge")
    padded = sitk.GetImageFromArray(array)
    padded.SetSpacing(image.GetSpacing())
    padded.SetDirection(image.GetDirection())
    padded.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, -float(count))))
    return padded


def window(hu_array: np.ndarray) -> np.ndarray:
    """HU clipped to ``HU_WINDOW`` and mapped linearly to float32 in [0, 1] (any array shape)."""
    low, high = HU_WINDOW
    out = np.clip(np.asarray(hu_array, dtype=np.float32), low, high)
    out -= low
    out /= high - low
    return out


def _outside_value(image: sitk.Image, interpolation: str) -> float:
    return CT_OUTSIDE_HU if interpolation == "linear" else 0.0


def _resample(image: sitk.Image, reference: sitk.Image, interpolation: str, *, outside: float) -> sitk.Image:
    if interpolation == "linear":
        source = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
        return sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)
    if interpolation == "nearest":
        source = image if image.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(image, sitk.sitkUInt8)
        return sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, outside, sitk.sitkUInt8)
    if interpolation == "label":
        return _resample_labels_linear(image, reference)
    raise ValueError(f"interpolation must be 'linear', 'nearest' or 'label', not {interpolation!r}")


def _resample_labels_linear(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Per-label linear interpolation of one-hot maps, then argmax (background included)."""
    array = sitk.GetArrayViewFromImage(labels)
    values = [int(v) for v in np.unique(array) if v != 0]
    best = np.full(reference.GetSize()[::-1], 0.5, dtype=np.float32)  # background wins below 0.5
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    for value in values:
        onehot = sitk.GetImageFromArray((array == value).astype(np.float32))
        onehot.CopyInformation(labels)
        fraction = sitk.GetArrayFromImage(
            sitk.Resample(onehot, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
        wins = fraction > best
        out[wins] = value
        best[wins] = fraction[wins]
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(reference)
    return result
