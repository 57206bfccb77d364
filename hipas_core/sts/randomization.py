"""Domain randomization of a training patch's CT appearance (the SynthSeg / vesselFM idea).

The STS weights are trained on phantoms, whose tissues have one intensity each, one noise
texture and one resolution. A network trained on them learns those intensities and that
texture, and on real CT it marks the chest wall, fat or bone and breaks trees apart. Here
everything the network should not rely on is randomized per patch, while the vessel geometry
and the labels stay exactly as they are: only the appearance changes.

Input and output: a patch's windowed CT (float32 (Z, Y, X) in [0, 1], the HU window
``HU_WINDOW`` = [-1000, 600] HU of ``hipas_core.normalize.window``) on the standardized grid
(spacing ``STANDARD_SPACING``, mm, (z, y, x)), its vessel labels (uint8 (Z, Y, X): 0 background,
1 artery, 2 vein) and optionally its lung mask. All settings are in HU and mm and converted to
window units (1 HU = 1/1600) and voxels here. The inputs are never modified; the result is
clipped to [0, 1]. The vesselness channel is NOT part of this module: the caller recomputes it
from the randomized CT (``hipas_core.sts.data.network_input``), since a clean vesselness next to a
randomized CT would teach the network to trust a channel that real scans never give it clean.

Transforms, in the order they are applied (each with its own probability, drawn per patch after
``patch_probability`` has decided whether the patch is randomized at all):

1. Tissue remap (non-vessel voxels only). Each voxel belongs softly to five classes by its own
   intensity: air (-1000 HU), lung parenchyma (-850), fat (-100), soft tissue/muscle/unlabelled
   blood (40) and dense (bone, and contrast-filled heart and aorta: 400), with logistic
   memberships around the band limits -950 / -400 / -30 / 150 HU (scale 25 HU). With the lung
   mask, air and lung parenchyma below -400 HU are told apart by the (1 mm smoothed) mask
   instead of the -950 HU limit, so emphysema stays lung and tracheal or outside air stays air.
   Class k gets an offset drawn in +-``tissue_offset_hu[k]`` and a contrast scale about its centre
   drawn log-uniformly in ``tissue_scale_range``; a voxel moves by the membership-weighted sum,
   a smooth function of its intensity, so nothing steps inside a class. Default half-ranges
   (air, lung, fat, soft tissue, dense) 40 / 120 / 60 / 50 / 250 HU: lung -970..-730 covers
   emphysema to expiration, fat -160..-40, soft tissue -10..90, and dense bone down to
   soft-tissue values (osteoporotic cancellous bone, or ribs the network must reject by shape).
   Vessel voxels keep their intensity, so vessel-to-tissue contrast changes as well.
2. Contrast phase (vessel voxels only, exact labels): the artery and vein blood levels are set
   to targets drawn in ``artery_hu`` / ``vein_hu`` (30 HU = non-contrast blood up to CTPA's
   550 HU arteries and 450 HU veins), the same target for both trees unless a coin with
   ``contrast_separate_probability`` says separately (CTPA: arteries bright, veins less so; the
   venous phase: both alike). A tree's blood level B is the 95th percentile of its voxels in the
   patch; each voxel is treated as a mixture ``f B + (1 - f) L`` with the lung parenchyma level
   L = -850 HU, ``f = (v - L) / (B - L)`` clipped to [0, 1], and becomes ``v + f (T - B)``: full
   vessels reach the target T, partial-volume voxels move in proportion, and the noise texture
   stays. Unlabelled contrast-filled structures (heart chambers, aorta) are left to the dense
   class of the tissue remap; partial-volume voxels just outside a label are left as they are.
3. Bias field: ``v * exp(m) + a`` with m and a two smooth fields, natural cubic splines through
   a random grid of control points ``bias_control_spacing_mm`` apart (at least 2 per axis,
   spanning the patch): m with SD ``bias_log_sd`` (0.05: about +-50 HU in soft tissue, little
   in lung, none in air, like beam hardening), a with SD ``bias_additive_sd_hu`` (20 HU: the
   cupping and shading non-uniformity of CT).
4. Blur (resolution): a Gaussian with sigma drawn in ``blur_sigma_inplane_mm`` in-plane and
   independently in ``blur_sigma_z_mm`` along z (up to 1.5 mm: slices of about 3.5 mm FWHM; the
   in-plane range, up to 0.8 mm, covers smooth soft-tissue kernels).
5. Noise: SD drawn in ``noise_sd_hu`` (5..50 HU, on top of the phantom's 22 HU at 1 mm),
   white or spatially correlated: white noise filtered with a Gaussian whose sigma is drawn in
   ``noise_correlation_mm`` (0 = white), rescaled so the SD is the one drawn.
6. Sharp kernel: in-plane unsharp masking, ``v + amount (v - G_sigma v)`` with amount in
   ``sharpen_amount`` and sigma in ``sharpen_sigma_mm`` (in-plane only: a reconstruction kernel
   filters the axial plane). Applied after the noise, so it sharpens the noise too, as a bone or
   lung kernel does.
7. Field of view: a truncated reconstruction circle, the same in every slice. Its radius is
   drawn in ``fov_radius_mm`` (FOVs of 240..500 mm); its edge crosses the patch in a random
   direction, somewhere between the patch centre and the patch's edge in that direction. Everything
   outside is set to 0, the air value: scanners pad outside the circle with -1024, -2048 or
   -3024 HU, which the window maps to 0, so the padding looks exactly like that, with a sharp
   edge and no noise (which is why it comes after noise and kernels). The circle is widened
   where needed so that every vessel voxel lies at least ``fov_vessel_margin_mm`` inside it:
   the crop never covers a vessel.

Random draws: ``draw_randomization`` makes every draw (including the noise field); how many it
makes depends only on the settings, the patch shape and the generator, never on the image or
the labels, so a caller that needs only to advance a generator past a patch (another rank's
patch) calls it alone. With all probabilities 0 (the default settings) nothing is drawn at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from hipas_core.conventions import ARTERY, HU_WINDOW, STANDARD_SPACING, VEIN

TISSUE_CLASSES: tuple[str, ...] = ("air", "lung", "fat", "soft_tissue", "dense")
TISSUE_CENTRES_HU: tuple[float, ...] = (-1000.0, -850.0, -100.0, 40.0, 400.0)
"""The level of each class, about which its contrast scale is applied."""
TISSUE_LIMITS_HU: tuple[float, ...] = (-950.0, -400.0, -30.0, 150.0)
"""Band limits between consecutive classes (air|lung, lung|fat, fat|soft tissue, soft tissue|dense)."""
TISSUE_TRANSITION_HU = 25.0
"""Scale of the logistic memberships around each band limit."""
LUNG_LEVEL_HU = -850.0
"""Lung parenchyma, the surroundings in the partial-volume model of the contrast phase."""
PRESETS: tuple[str, ...] = ("off", "default")

_WINDOW_LOW, _WINDOW_HIGH = HU_WINDOW
_HU_PER_UNIT = _WINDOW_HIGH - _WINDOW_LOW


def _window_units(hu: float) -> float:
    """An intensity in HU -> the windowed [0, 1] scale (may lie outside it)."""
    return (hu - _WINDOW_LOW) / _HU_PER_UNIT


def _check_range(name: str, value: tuple[float, float], *, low: float = 0.0) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) with {low:g} <= low <= high, not {value!r}")


@dataclass(frozen=True, kw_only=True)
class DomainRandomization:
    """Settings of the domain randomization (module docstring); every probability is 0 by
    default, so ``DomainRandomization()`` leaves a patch as it is and draws nothing. The ranges
    are the ones ``preset("default")`` uses. HU for intensities, mm for lengths."""

    patch_probability: float = 0.0  # a patch is randomized at all (then each transform by its own)
    tissue_probability: float = 0.0
    tissue_offset_hu: tuple[float, ...] = (40.0, 120.0, 60.0, 50.0, 250.0)  # +- per TISSUE_CLASSES
    tissue_scale_range: tuple[float, float] = (0.7, 1.4)  # contrast inside a class, log-uniform
    contrast_probability: float = 0.0
    artery_hu: tuple[float, float] = (30.0, 550.0)
    vein_hu: tuple[float, float] = (30.0, 450.0)
    contrast_separate_probability: float = 0.5  # otherwise both trees get the artery target
    bias_probability: float = 0.0
    bias_control_spacing_mm: float = 50.0
    bias_log_sd: float = 0.05
    bias_additive_sd_hu: float = 20.0
    blur_probability: float = 0.0
    blur_sigma_inplane_mm: tuple[float, float] = (0.0, 0.8)
    blur_sigma_z_mm: tuple[float, float] = (0.0, 1.5)
    noise_probability: float = 0.0
    noise_sd_hu: tuple[float, float] = (5.0, 50.0)
    noise_correlation_mm: tuple[float, float] = (0.0, 1.0)
    sharpen_probability: float = 0.0
    sharpen_amount: tuple[float, float] = (0.3, 1.5)
    sharpen_sigma_mm: tuple[float, float] = (0.5, 1.5)
    fov_probability: float = 0.0
    fov_radius_mm: tuple[float, float] = (120.0, 250.0)
    fov_vessel_margin_mm: float = 3.0
    spacing: tuple[float, float, float] = field(default=STANDARD_SPACING)  # (z, y, x) mm of the patch

    def __post_init__(self) -> None:
        for spec in fields(self):  # lists (a config read back from JSON) -> tuples, floats
            value = getattr(self, spec.name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, spec.name, tuple(float(v) for v in value))
            else:
                object.__setattr__(self, spec.name, float(value))
        for name in self._probability_names():
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {getattr(self, name)!r}")
        if not 0.0 <= self.contrast_separate_probability <= 1.0:
            raise ValueError(f"contrast_separate_probability must lie in [0, 1], not {self.contrast_separate_probability!r}")
        if len(self.tissue_offset_hu) != len(TISSUE_CLASSES) or min(self.tissue_offset_hu) < 0:
            raise ValueError(f"tissue_offset_hu must hold {len(TISSUE_CLASSES)} non-negative HU "
                             f"({', '.join(TISSUE_CLASSES)}), not {self.tissue_offset_hu!r}")
        _check_range("tissue_scale_range", self.tissue_scale_range, low=1e-3)
        _check_range("artery_hu", self.artery_hu, low=-math.inf)
        _check_range("vein_hu", self.vein_hu, low=-math.inf)
        for name in ("blur_sigma_inplane_mm", "blur_sigma_z_mm", "noise_sd_hu", "noise_correlation_mm",
                     "sharpen_amount", "sharpen_sigma_mm", "fov_radius_mm"):
            _check_range(name, getattr(self, name))
        if self.sharpen_sigma_mm[0] <= 0:
            raise ValueError(f"sharpen_sigma_mm must be positive, not {self.sharpen_sigma_mm!r}")
        if self.bias_control_spacing_mm <= 0 or self.bias_log_sd < 0 or self.bias_additive_sd_hu < 0:
            raise ValueError("bias_control_spacing_mm must be positive, bias_log_sd and bias_additive_sd_hu >= 0")
        if self.fov_vessel_margin_mm < 0:
            raise ValueError(f"fov_vessel_margin_mm must be >= 0, not {self.fov_vessel_margin_mm!r}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive mm (z, y, x), not {self.spacing!r}")

    @staticmethod
    def _probability_names() -> tuple[str, ...]:
        return ("patch_probability", "tissue_probability", "contrast_probability", "bias_probability",
                "blur_probability", "noise_probability", "sharpen_probability", "fov_probability")

    @property
    def enabled(self) -> bool:
        """Whether a patch can change at all (else ``randomize_ct`` copies it and draws nothing)."""
        return self.patch_probability > 0 and any(getattr(self, name) > 0 for name in self._probability_names()[1:])

    @classmethod
    def preset(cls, name: str, *, patch_probability: float = 0.8) -> DomainRandomization:
        """``"off"``: nothing (the defaults). ``"default"``: every transform on, each with its own
        probability (tissue 0.8, contrast phase 0.5, bias 0.5, blur 0.5, noise 0.6, sharp kernel
        0.25, field of view 0.15), in a patch randomized with ``patch_probability``."""
        if name == "off":
            return cls()
        if name == "default":
            return cls(patch_probability=patch_probability, tissue_probability=0.8, contrast_probability=0.5,
                       bias_probability=0.5, blur_probability=0.5, noise_probability=0.6,
                       sharpen_probability=0.25, fov_probability=0.15)
        raise ValueError(f"domain randomization preset must be one of {', '.join(PRESETS)}, not {name!r}")

    @classmethod
    def from_dict(cls, values: dict | DomainRandomization | None) -> DomainRandomization:
        """The settings from ``dataclasses.asdict`` output (a checkpoint's training config); None
        or a missing key: the defaults (an older checkpoint, which had none)."""
        if isinstance(values, cls):
            return values
        return cls(**(values or {}))


@dataclass(frozen=True)
class RandomizationDraw:
    """Everything ``draw_randomization`` drew for one patch; ``apply`` uses nothing random.
    A transform that was not drawn is None. Intensities in window units, lengths in mm."""

    settings: DomainRandomization
    shape: tuple[int, int, int]
    tissue: tuple[np.ndarray, np.ndarray] | None = None  # (offset, scale) per TISSUE_CLASSES
    contrast: tuple[float, float] | None = None  # artery, vein target (window units)
    bias: tuple[np.ndarray, np.ndarray] | None = None  # log-multiplicative, additive control grids
    blur: tuple[float, float] | None = None  # sigma in-plane, along z (mm)
    noise: tuple[float, float, np.ndarray] | None = None  # SD (window units), correlation sigma (mm), white field
    sharpen: tuple[float, float] | None = None  # amount, sigma (mm)
    fov: tuple[float, float, float] | None = None  # radius (mm), edge direction (rad), edge distance (mm)

    @property
    def applied(self) -> tuple[str, ...]:
        """Names of the transforms drawn for this patch, in the order they are applied."""
        names = ("tissue", "contrast", "bias", "blur", "noise", "sharpen", "fov")
        return tuple(name for name in names if getattr(self, name) is not None)

    def apply(self, ct: np.ndarray, labels: np.ndarray, *, lungs: np.ndarray | None = None) -> np.ndarray:
        """The randomized copy of ``ct`` (see ``randomize_ct``); no random draws."""
        ct = np.asarray(ct)
        labels = np.asarray(labels)
        if ct.shape != self.shape or labels.shape != self.shape or (lungs is not None and np.shape(lungs) != self.shape):
            raise ValueError(f"ct {ct.shape}, labels {labels.shape}"
                             f"{'' if lungs is None else f', lungs {np.shape(lungs)}'} must all be the drawn shape {self.shape}")
        out = np.array(ct, dtype=np.float32, copy=True)
        if not self.applied:
            return out
        vessels = labels > 0
        spacing = self.settings.spacing
        if self.tissue is not None:
            shift = _tissue_shift(out, lungs, *self.tissue, spacing=spacing)
            out[~vessels] += shift[~vessels]
        if self.contrast is not None:  # vessel voxels still hold their input values here
            for tree, target in zip((ARTERY, VEIN), self.contrast, strict=True):
                inside = labels == tree
                if inside.any():
                    out[inside] = _contrast_phase(out[inside], target)
        if self.bias is not None:
            log_gain, additive = (_upsample_spline(grid, self.shape) for grid in self.bias)
            out *= np.exp(log_gain, dtype=np.float32)
            out += additive
        if self.blur is not None:
            inplane, along_z = self.blur
            out = _gaussian(out, (along_z, inplane, inplane), spacing)
        if self.noise is not None:
            sd, correlation_mm, white = self.noise
            out += sd * _correlated_noise(white, correlation_mm, spacing)
        if self.sharpen is not None:
            amount, sigma_mm = self.sharpen
            out += amount * (out - _gaussian(out, (0.0, sigma_mm, sigma_mm), spacing))
        if self.fov is not None:
            out[_outside_field_of_view(self.shape, spacing, *self.fov, vessels=vessels,
                                       margin_mm=self.settings.fov_vessel_margin_mm)] = 0.0
        np.clip(out, 0.0, 1.0, out=out)
        return out


def draw_randomization(settings: DomainRandomization, shape: Sequence[int], rng: np.random.Generator) -> RandomizationDraw:
    """Every random draw for one patch of ``shape`` (Z, Y, X) under ``settings``, from ``rng``.

    How far ``rng`` advances depends only on ``settings``, ``shape`` and the generator's own
    state; with ``settings.enabled`` False it does not advance at all.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), not {shape!r}")
    if not settings.enabled or rng.random() >= settings.patch_probability:
        return RandomizationDraw(settings=settings, shape=shape)
    s = settings
    drawn: dict = {}
    if rng.random() < s.tissue_probability:
        half = np.array(s.tissue_offset_hu) / _HU_PER_UNIT
        offsets = rng.uniform(-half, half)
        scales = np.exp(rng.uniform(*np.log(s.tissue_scale_range), size=len(TISSUE_CLASSES)))
        drawn["tissue"] = (offsets.astype(np.float32), scales.astype(np.float32))
    if rng.random() < s.contrast_probability:
        artery, vein = rng.uniform(*s.artery_hu), rng.uniform(*s.vein_hu)
        separate = rng.random() < s.contrast_separate_probability
        drawn["contrast"] = (_window_units(artery), _window_units(vein if separate else artery))
    if rng.random() < s.bias_probability:
        counts = tuple(max(2, math.ceil((n - 1) * d / s.bias_control_spacing_mm) + 1)
                       for n, d in zip(shape, s.spacing, strict=True))
        log_gain = rng.normal(0.0, s.bias_log_sd, counts)
        additive = rng.normal(0.0, s.bias_additive_sd_hu / _HU_PER_UNIT, counts)
        drawn["bias"] = (log_gain, additive)
    if rng.random() < s.blur_probability:
        drawn["blur"] = (float(rng.uniform(*s.blur_sigma_inplane_mm)), float(rng.uniform(*s.blur_sigma_z_mm)))
    if rng.random() < s.noise_probability:
        sd = float(rng.uniform(*s.noise_sd_hu)) / _HU_PER_UNIT
        correlation = float(rng.uniform(*s.noise_correlation_mm))
        drawn["noise"] = (sd, correlation, rng.standard_normal(shape, dtype=np.float32))
    if rng.random() < s.sharpen_probability:
        drawn["sharpen"] = (float(rng.uniform(*s.sharpen_amount)), float(rng.uniform(*s.sharpen_sigma_mm)))
    if rng.random() < s.fov_probability:
        direction = float(rng.uniform(0.0, 2.0 * math.pi))
        half_y, half_x = ((n - 1) / 2 * d for n, d in zip(shape[1:], s.spacing[1:], strict=True))
        support = abs(math.sin(direction)) * half_y + abs(math.cos(direction)) * half_x
        drawn["fov"] = (float(rng.uniform(*s.fov_radius_mm)), direction, float(rng.uniform(0.0, 1.0)) * support)
    return RandomizationDraw(settings=settings, shape=shape, **drawn)


def randomize_ct(
    ct: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    settings: DomainRandomization,
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """A randomized copy of one patch's windowed CT (module docstring).

    ``ct``: float (Z, Y, X) in [0, 1] (``hipas_core.normalize.window``) on the grid
    ``settings.spacing`` (mm, default ``STANDARD_SPACING``); ``labels``: uint8 (Z, Y, X) 0/1
    artery/2 vein, the patch's exact vessel labels (they decide which voxels are vessel, are not
    modified, and stay the patch's labels); ``lungs``: optional (Z, Y, X) lung mask (non-zero =
    lung), used to tell lung parenchyma from air. Returns float32 (Z, Y, X) in [0, 1], a new
    array (the inputs are never modified); an exact copy when the patch is not randomized.
    The caller recomputes the vesselness channel from it.
    """
    return draw_randomization(settings, np.shape(ct), rng).apply(ct, labels, lungs=lungs)


def _tissue_shift(ct: np.ndarray, lungs: np.ndarray | None, offsets: np.ndarray, scales: np.ndarray,
                  *, spacing: Sequence[float]) -> np.ndarray:
    """Membership-weighted shift of every voxel (window units) for the drawn per-class offsets and scales."""
    from scipy.special import expit

    above = [expit((ct - np.float32(_window_units(limit))) * np.float32(_HU_PER_UNIT / TISSUE_TRANSITION_HU))
             for limit in TISSUE_LIMITS_HU]
    memberships = [1.0 - above[0], *(above[k] - above[k + 1] for k in range(len(above) - 1)), above[-1]]
    if lungs is not None:  # below the lung|fat limit, the lung mask tells parenchyma from air
        in_lung = np.clip(_gaussian(np.asarray(lungs > 0, dtype=np.float32), (1.0, 1.0, 1.0), spacing), 0.0, 1.0)
        low = memberships[0] + memberships[1]
        memberships[0], memberships[1] = low * (1.0 - in_lung), low * in_lung
    shift = np.zeros(ct.shape, dtype=np.float32)
    for membership, centre_hu, offset, scale in zip(memberships, TISSUE_CENTRES_HU, offsets, scales, strict=True):
        shift += membership * (offset + (scale - 1.0) * (ct - np.float32(_window_units(centre_hu))))
    return shift


def _contrast_phase(values: np.ndarray, target: float) -> np.ndarray:
    """One tree's voxel values (window units) with its blood level moved to ``target``."""
    lung = _window_units(LUNG_LEVEL_HU)
    blood = max(float(np.percentile(values, 95)), lung + 100.0 / _HU_PER_UNIT)
    fraction = np.clip((values - lung) / (blood - lung), 0.0, 1.0)
    return (values + fraction * (target - blood)).astype(np.float32)


def _upsample_spline(grid: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A (Z, Y, X) float32 field: natural cubic splines through the control ``grid``, whose first
    and last points lie on the first and last voxel of each axis."""
    from scipy.interpolate import CubicSpline

    weights = []
    for count, size in zip(grid.shape, shape, strict=True):
        knots = np.linspace(0.0, size - 1.0, count) if size > 1 else np.arange(count, dtype=float)
        weights.append(CubicSpline(knots, np.eye(count), bc_type="natural")(np.arange(size, dtype=float)))
    return np.einsum("zi,yj,xk,ijk->zyx", *weights, grid, optimize=True).astype(np.float32)


def _gaussian(volume: np.ndarray, sigmas_mm: Sequence[float], spacing: Sequence[float]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigmas = [s / d for s, d in zip(sigmas_mm, spacing, strict=True)]
    if max(sigmas) <= 0:
        return volume.copy()
    return gaussian_filter(volume, sigma=sigmas, mode="nearest", truncate=4.0).astype(np.float32, copy=False)


def _correlated_noise(white: np.ndarray, correlation_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """``white`` (unit SD) filtered with a Gaussian of ``correlation_mm`` and rescaled to unit SD."""
    from scipy.ndimage import gaussian_filter, gaussian_filter1d

    sigmas = [correlation_mm / d for d in spacing]
    if max(sigmas) <= 0:
        return white
    filtered = gaussian_filter(white, sigma=sigmas, mode="wrap", truncate=4.0)
    # SD of filtered unit white noise = the L2 norm of the (separable) kernel
    norm = 1.0
    for sigma in sigmas:
        if sigma > 0:
            radius = int(4.0 * sigma + 0.5)
            delta = np.zeros(2 * radius + 1)
            delta[radius] = 1.0
            norm *= float(np.sqrt((gaussian_filter1d(delta, sigma, mode="constant", truncate=4.0) ** 2).sum()))
    return (filtered / np.float32(norm)).astype(np.float32, copy=False)


def _outside_field_of_view(shape: Sequence[int], spacing: Sequence[float], radius_mm: float, direction: float,
                           edge_mm: float, *, vessels: np.ndarray, margin_mm: float) -> np.ndarray:
    """bool (Z, Y, X): outside the reconstruction circle whose edge lies ``edge_mm`` from the
    patch centre in ``direction`` (in-plane, mm), widened to keep every vessel voxel at least
    ``margin_mm`` inside."""
    _, rows, cols = shape
    y = (np.arange(rows) - (rows - 1) / 2) * spacing[1]
    x = (np.arange(cols) - (cols - 1) / 2) * spacing[2]
    centre_y = (edge_mm - radius_mm) * math.sin(direction)
    centre_x = (edge_mm - radius_mm) * math.cos(direction)
    distance = np.hypot(y[:, None] - centre_y, x[None, :] - centre_x)  # (Y, X) mm from the circle's centre
    vessel_columns = vessels.any(axis=0)
    if vessel_columns.any():
        radius_mm = max(radius_mm, float(distance[vessel_columns].max()) + margin_mm)
    return np.broadcast_to(distance > radius_mm, tuple(shape))
