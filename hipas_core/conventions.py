"""The project's conventions, defined once: every other module imports them from here.

Grid: the standardized grid of the paper. Spacing is in mm in (z, y, x) order: 1.00 mm slices,
334/512 mm in-plane (Methods, Problem formalization). Normalized images are stored in LPS
orientation with an identity direction matrix (x grows to the patient's left, y to the posterior,
z to the head), which is what SimpleITK and DICOM call "LPS"; arrays read from them are
(z, y, x) = (inferior->superior, anterior->posterior, right->left). ``hipas_core.grid`` holds the
grid names under their old module name.

Label maps: 0 background, 1 artery, 2 vein (uint8). Level maps: 0 background, 1..4 = the paper's
levels A0/V0 .. A3/V3 (value = level + ``LEVEL_OFFSET``).

Cohort: the six disease flags, the site manifest's columns and the cohort table's leading
columns. The workflow (``workflow/rules/common.smk``, ``workflow/schemas/manifest.schema.yaml``)
keeps its own copies, because the DAG is planned without this package;
``tests/unit/test_conventions.py`` checks that they agree with these.

This module imports nothing heavy at import time (numpy and torch only inside functions), so the
analysis package and the command line can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence

# ---- grid ---------------------------------------------------------------------------------------
STANDARD_SPACING: tuple[float, float, float] = (1.0, 334.0 / 512.0, 334.0 / 512.0)
STANDARD_ORIENTATION: str = "LPS"

HU_WINDOW: tuple[float, float] = (-1000.0, 600.0)
"""CT intensities are clipped to this window and mapped to [0, 1] for the networks."""

I2SR_THICKNESS_MM: float = 2.0
"""Slices thicker than this are super-resolved (I2SR) instead of interpolated in z."""


def needs_super_resolution(thickness_mm: float, threshold_mm: float = I2SR_THICKNESS_MM) -> bool:
    """Whether slices of ``thickness_mm`` are super-resolved (I2SR): thicker than
    ``threshold_mm`` by more than 1e-6 mm (a recorded 2.0000001 mm is still 2 mm)."""
    return thickness_mm > threshold_mm + 1e-6


def is_standard_spacing(spacing_zyx: Sequence[float], *, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether a (z, y, x) spacing in mm is ``STANDARD_SPACING`` (``numpy.allclose``)."""
    import numpy as np

    return bool(np.allclose(spacing_zyx, STANDARD_SPACING, rtol=rtol, atol=atol))


def is_standard_grid(image, *, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether a ``SimpleITK.Image``'s spacing is ``STANDARD_SPACING`` (``is_standard_spacing``)."""
    return is_standard_spacing(image.GetSpacing()[::-1], rtol=rtol, atol=atol)


def same_grid(
    a,
    b,
    *,
    spacing_rtol: float = 1e-5,
    spacing_atol: float = 1e-8,
    origin_atol: float | None = 1e-3,
    direction_atol: float | None = 1e-5,
) -> bool:
    """Whether two ``SimpleITK.Image`` lie on one grid: equal sizes, spacings ``numpy.allclose``
    with ``spacing_rtol``/``spacing_atol``, origins (mm) within ``origin_atol`` and direction
    matrices within ``direction_atol`` (``numpy.allclose``'s default rtol). ``None`` leaves the
    origin or the direction out; zero tolerances ask for exact equality."""
    import numpy as np

    if a.GetSize() != b.GetSize():
        return False
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=spacing_rtol, atol=spacing_atol):
        return False
    if origin_atol is not None and not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=origin_atol):
        return False
    return direction_atol is None or bool(
        np.allclose(a.GetDirection(), b.GetDirection(), atol=direction_atol)
    )


def bounding_box(mask, *, pad: int = 0) -> tuple[list[int], list[int]]:
    """``(lo, hi)`` per axis of a non-empty 3-D mask's nonzero voxels, widened by ``pad`` voxels
    and clipped to the array (``hi`` exclusive)."""
    import numpy as np

    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(max(int(hits[0]) - pad, 0))
        hi.append(min(int(hits[-1]) + 1 + pad, mask.shape[axis]))
    return lo, hi


def bounding_slices(mask, *, pad: int = 0) -> tuple[slice, slice, slice]:
    """``bounding_box`` as a tuple of slices that crops the mask's array."""
    lo, hi = bounding_box(mask, pad=pad)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


# ---- label and level maps -----------------------------------------------------------------------
BACKGROUND: int = 0
ARTERY: int = 1
VEIN: int = 2
TREES: dict[str, int] = {"artery": ARTERY, "vein": VEIN}
"""Tree name -> label value, artery first."""
LABEL_VALUES: tuple[int, ...] = (BACKGROUND, ARTERY, VEIN)

LEVELS: tuple[int, ...] = (0, 1, 2, 3)
"""The paper's branch levels A0/V0 .. A3/V3."""
LEVEL_OFFSET: int = 1
"""Level-map value = level + ``LEVEL_OFFSET`` (0 stays background)."""
LEVEL_VALUES: tuple[int, ...] = tuple(level + LEVEL_OFFSET for level in LEVELS)
LEVEL_LAST_GENERATION: tuple[int, ...] = (0, 2, 5)
"""Last branch generation of levels 0, 1 and 2 (0 mediastinal, 1-2 hilum, 3-5); level 3 beyond."""


def generation_to_level(generation):
    """Paper level (0..3, uint8 array) of branch generations (0 mediastinal, 1-2 hilum, 3-5, rest)."""
    import numpy as np

    g = np.asarray(generation)
    zero, one, two = LEVEL_LAST_GENERATION
    return np.where(g <= zero, 0, np.where(g <= one, 1, np.where(g <= two, 2, 3))).astype(np.uint8)


# ---- cohort: disease flags, manifests, cohort table ---------------------------------------------
DISEASE_FLAGS: tuple[str, ...] = ("cardiomegaly", "calcification", "pah", "nodule", "embolism", "copd")
SEXES: tuple[str, ...] = ("M", "F")
PROTOCOLS: tuple[str, ...] = ("NCCT", "CTPA")
"""Protocol as written in manifests and the cohort table (the phantom's options are lower case)."""
FLAG_VALUES: tuple[str, ...] = ("0", "1", "")
"""A disease flag as written in a manifest: 0, 1, or empty (missing)."""

MANIFEST_REQUIRED: tuple[str, ...] = ("scan_id", "path", "sex", "age", "protocol")
"""Columns every site manifest has (the manifest schema's ``required``)."""
MANIFEST_COLUMNS: tuple[str, ...] = (*MANIFEST_REQUIRED, *DISEASE_FLAGS)
"""A site manifest's columns: the required ones, then the disease flags."""

INDICES: tuple[str, ...] = ("SLPA", "SLPV", "BCPA", "BCPV")
"""The abundance indices: artery/vein skeleton length (standardized voxels), bifurcation count."""
COHORT_COLUMNS: tuple[str, ...] = (
    "scan_id", "site", "sex", "age", "protocol", "slice_thickness_mm", "lung_volume_l",
    *INDICES, *DISEASE_FLAGS,
)
"""The cohort table's required (leading) columns, in order."""

# ---- image metadata (SimpleITK metadata keys set by hipas_core.io.read_ct) -------------------------
META_SOURCE_FORMAT = "hipas_source_format"
META_SLICE_THICKNESS = "hipas_slice_thickness_mm"
META_SPACING_ASSUMED = "hipas_spacing_assumed"
META_SPACING_SOURCE = "hipas_spacing_source"
MIN_SLICES = 16
"""Fewer slices than this is not a chest CT volume (every reader refuses it)."""

# ---- networks ------------------------------------------------------------------------------------
DEMO_VESSELNESS_SIGMAS_MM: tuple[float, ...] = (0.7, 1.5)
"""Vesselness scales (mm) of the STS input channel: the demo model's, the training default."""


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when CUDA is available, else ``"cpu"``; other names unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
