"""Training data for STS: cases in the standardized grid, patch sampling and augmentation.

A ``TrainingCase`` holds, cropped to the lung bounding box of the normalized CT (arrays
(z, y, x), spacing ``STANDARD_SPACING``): ``image`` (2, Z, Y, X) float16 = windowed CT and its
vesselness, ``labels`` (0/1 artery/2 vein), ``levels`` (0 bg, 1..4 = level 0..3), ``lungs``,
``territory`` (3, Z, Y, X): for stages 1..3 the level (0..s) of the nearest annotated vessel
voxel among levels <= s (stage 0's territory is all level 0), and ``weights`` (2, 4): w^i of
eq. 15 per tree. Cases are cached as ``.npz`` so a phantom is generated and filtered once; a
prepared training set keeps them on disk as memory-mappable arrays instead
(``hipas_core.sts.prepared``). Vessel-biased sampling picks its centre from an index of the vessel
voxels by level (``TrainingCase.vessel_voxels``: built once per case, or read from a prepared
case), the same draws a scan of the level map would give.

Augmentation (``Augmentation``): intensity scale/shift and gaussian noise on the CT channel,
thick-slice simulation (both channels averaged along z over 2-4 slices, as a thick slice
interpolated back to 1 mm looks), and optional flips. Flips are off by default: left-right
swaps the heart side and the two- and three-lobed lungs, superior-inferior and anterior-posterior
put the heart where no heart is; each breaks the anatomy that tells arteries from veins.
With ``synthetic_ncct_probability`` a CTPA case (``meta["protocol"] == "ctpa"``) is replaced,
for that patch, by its synthetic non-contrast copy (``synthetic_ncct_case``: contrast-filled
blood lowered to ~50 HU, vesselness recomputed), made once per case and kept in memory.
``domain_randomization`` (``hipas_core.sts.randomization``, off by default) randomizes the
appearance of the augmented patch's CT (tissue intensities, contrast phase, bias field, blur,
noise, sharp kernel, field of view) with its labels exact, and the vesselness channel is then
recomputed from the randomized CT (``Augmentation.randomize_domain``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hipas_core.conventions import DEMO_VESSELNESS_SIGMAS_MM
from hipas_core.grid import STANDARD_SPACING
from hipas_core.sts.randomization import DomainRandomization, draw_randomization


@dataclass
class TrainingCase:
    name: str
    image: np.ndarray
    labels: np.ndarray
    levels: np.ndarray
    lungs: np.ndarray
    territory: np.ndarray
    weights: np.ndarray
    meta: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict, repr=False, compare=False)  # in memory only (not saved)
    skeleton: np.ndarray | None = field(default=None, repr=False, compare=False)  # see centrelines()
    # (flat indices, offsets): see vessel_voxels(); computed on first use, or read from disk
    level_voxels: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)

    def vessel_voxels(self, level: int) -> np.ndarray:
        """Flat (C-order, (Z, Y, X)) indices of the voxels of ``levels == level`` (1..4), ascending
        (what ``np.flatnonzero(levels.ravel() == level)`` gives), from an index of all vessel
        voxels built once (``level_voxel_index``), so a patch never scans the whole volume."""
        if self.level_voxels is None:
            self.level_voxels = level_voxel_index(self.levels)
        flat, offsets = self.level_voxels
        return flat[int(offsets[level - 1]):int(offsets[level])]

    def centrelines(self) -> np.ndarray:
        """(Z, Y, X) uint8 tubed centrelines of the labels (0, 1 artery, 2 vein), the targets of
        the Skeleton Recall loss; computed on first use and kept (and saved with the case)."""
        if self.skeleton is None:
            self.skeleton = tubed_skeleton(self.labels)
        return self.skeleton

    def save(self, path: str | os.PathLike) -> None:
        from hipas_core.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, image=self.image, labels=self.labels, levels=self.levels, lungs=self.lungs,
                territory=self.territory, weights=self.weights, name=np.array(self.name),
                meta=np.array(repr(self.meta)), **({} if self.skeleton is None else {"skeleton": self.skeleton}),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingCase:
        import ast

        with np.load(path) as data:
            return cls(
                name=str(data["name"]), image=data["image"], labels=data["labels"], levels=data["levels"],
                lungs=data["lungs"], territory=data["territory"], weights=data["weights"],
                meta=ast.literal_eval(str(data["meta"])),
                skeleton=data["skeleton"] if "skeleton" in data.files else None,
            )


def tubed_skeleton(labels: np.ndarray) -> np.ndarray:
    """Centrelines of each tree of ``labels`` ((Z, Y, X) 0/1 artery/2 vein), thickened by one voxel
    along each axis (6-neighbourhood), as the Skeleton Recall loss uses them ("tubed" skeletons:
    a one-voxel line is too thin a target once patches are resampled or augmented).
    Returns (Z, Y, X) uint8 with the tree's label on its tube, which stays inside the tree."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    out = np.zeros(labels.shape, dtype=np.uint8)
    cross = ndimage.generate_binary_structure(3, 1)
    for tree in (1, 2):
        mask = labels == tree
        if not mask.any():
            continue
        tube = ndimage.binary_dilation(skeletonize(mask), structure=cross) & mask
        out[tube] = tree
    return out


def level_voxel_index(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat, offsets) of a (Z, Y, X) level map (0 background, 1..4): ``flat`` int64 the C-order
    indices of every voxel of levels 1..4, grouped by level and ascending within each, and
    ``offsets`` (5,) int64 with level ``lv``'s voxels at ``flat[offsets[lv - 1]:offsets[lv]]``."""
    ravel = np.asarray(levels).ravel()
    vessel = np.flatnonzero((ravel >= 1) & (ravel <= 4))
    order = np.argsort(ravel[vessel], kind="stable")
    flat = vessel[order].astype(np.int64)
    counts = np.bincount(ravel[vessel], minlength=5)[1:5]
    return flat, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def level_territories(levels: np.ndarray, *, spacing: Sequence[float] = STANDARD_SPACING) -> np.ndarray:
    """(3, Z, Y, X) uint8: for stage s = 1..3, the level (0..s) of the nearest vessel voxel of level <= s.

    ``levels`` (Z, Y, X) 0 background, 1..4 = level 0..3 (both trees together). Voxels with no
    vessel of levels <= s anywhere get level 0.
    """
    from scipy import ndimage

    out = np.zeros((3, *levels.shape), dtype=np.uint8)
    for stage in range(1, 4):
        present = (levels >= 1) & (levels <= stage + 1)
        if not present.any():
            continue
        indices = ndimage.distance_transform_edt(~present, sampling=spacing, return_distances=False, return_indices=True)
        nearest = levels[tuple(indices)]
        out[stage - 1] = (nearest - 1).astype(np.uint8)
    return out


def network_input(
    ct_window: np.ndarray,
    *,
    vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM,
    chunk_voxels: int | None = None,
) -> np.ndarray:
    """The two input channels of a stage: (Z, Y, X) windowed CT on the standardized grid ->
    (2, Z, Y, X) float16 (the CT and its vesselness at ``vesselness_sigmas_mm``).
    ``chunk_voxels``: the vesselness z-slab size (``hipas_core.vesselness.vesselness``; the
    result does not depend on it, only the speed and memory do); None: its default."""
    from hipas_core.vesselness import vesselness

    slabs = {} if chunk_voxels is None else {"chunk_voxels": int(chunk_voxels)}
    enhanced = vesselness(ct_window, spacing=STANDARD_SPACING, sigmas_mm=vesselness_sigmas_mm, **slabs)
    return np.stack([ct_window, enhanced]).astype(np.float16)


PATCH_VESSELNESS_CHUNK_VOXELS = 100_000
"""Vesselness slab size for a training patch: slabs of ~10 slices stay in the CPU caches; on a
54 x 106 x 106 patch this takes half the CPU time of one slab, with identical values."""


def prepare_case(
    ct,
    labels,
    levels=None,
    lungs=None,
    *,
    name: str,
    vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM,
    margin_mm: float = 10.0,
    meta: dict | None = None,
    i2sr_model=None,
) -> TrainingCase:
    """Bring one annotated CT (SimpleITK images in one grid, HU / labels / levels / lungs) into
    the standardized grid, crop to the lungs and compute vesselness, territories and weights.

    Without ``levels`` they are derived with ``hipas_core.levels``; without ``lungs`` the lung
    channel is the threshold lung mask. ``i2sr_model`` (a loaded I2SR network): slices thicker
    than 2 mm are super-resolved through it, as ``hipas segment`` normalizes them, so the network
    trains on the input it will see; None: trilinear z. ``meta["z_method"]`` says which. A
    sharp-kernel CT is noise-harmonized as ``hipas segment`` does it (``hipas_core.noise``);
    ``meta["input_noise_hu"]`` and ``meta["noise_smoothing_sigma_px"]`` record it.
    """
    import SimpleITK as sitk

    from hipas_core.lungs import lung_bounding_box
    from hipas_core.normalize import normalize_ct, to_standard_grid, window
    from hipas_core.sts.losses import level_weights

    standard, record = normalize_ct(ct, i2sr_model=i2sr_model)
    # Nearest neighbour keeps the annotated vessel volume (within 2 % on the phantoms, thin and
    # thick). The one-hot linear resampling used before broke thin vessels that run diagonally
    # through the coarser source grid into pieces: the targets lost 12 % (1.25 mm slices) to 19 %
    # (2.5 mm) of their vessel volume, nearly all of it thin vessels.
    labels_std = sitk.GetArrayFromImage(to_standard_grid(labels, interpolation="nearest"))
    if lungs is not None:
        lungs_std = sitk.GetArrayFromImage(to_standard_grid(lungs, interpolation="nearest")).astype(np.uint8)
    else:
        from hipas_core.lungs import threshold_lungs

        lungs_std = sitk.GetArrayFromImage(to_standard_grid(threshold_lungs(ct), interpolation="nearest")).astype(np.uint8)
    if levels is None:
        from hipas_core.levels import vessel_levels  # derived from the label map itself

        levels_std = vessel_levels(labels_std, spacing=STANDARD_SPACING, lungs=lungs_std)
    else:
        levels_std = sitk.GetArrayFromImage(to_standard_grid(levels, interpolation="nearest"))
    levels_std = np.where(labels_std > 0, levels_std, 0).astype(np.uint8)
    # a label voxel that lost its level in resampling: the deepest level (remaining vessels)
    levels_std[(labels_std > 0) & (levels_std == 0)] = 4
    box = lung_bounding_box(standard, margin_mm=margin_mm)
    image = network_input(window(sitk.GetArrayFromImage(standard)[box]), vesselness_sigmas_mm=vesselness_sigmas_mm)
    labels_c, levels_c = labels_std[box], levels_std[box]
    return TrainingCase(
        name=name,
        image=image,
        labels=labels_c.astype(np.uint8),
        levels=levels_c,
        lungs=lungs_std[box].astype(np.uint8),
        territory=level_territories(levels_c),
        weights=level_weights(levels_std, labels_std),
        meta={**(meta or {}), "box": [(s.start, s.stop) for s in box], "z_method": record.z_method,
              "input_noise_hu": record.input_noise_hu, "noise_smoothing_sigma_px": record.noise_smoothing_sigma_px},
    )


@functools.lru_cache(maxsize=4)
def file_digest(path: str) -> str:  # once per model file and process, not once per case
    from hipas_core.provenance import file_sha256

    return file_sha256(path)


@functools.lru_cache(maxsize=2)
def loaded_i2sr_model(path: str):
    """The I2SR network of checkpoint ``path``, loaded once per process (cases prepared one after
    another share it)."""
    from hipas_core.i2sr import load_model

    return load_model(path)


def folder_cases(
    folder: str | os.PathLike, *, vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM,
    i2sr_model: str | os.PathLike | None = None,
) -> list[TrainingCase]:
    """Real annotated scans: every ``<case>/ct.nii.gz`` with ``labels.nii.gz`` (optional
    ``levels.nii.gz``, ``lungs.nii.gz``) under ``folder``, or pairs ``<id>_ct.nii.gz`` +
    ``<id>_labels.nii.gz`` (HiPaS layout: ``ct_scan/<id>.npz`` + ``annotation/<id>.npz`` with
    artery/vein masks is read through ``hipas_core.io``). ``i2sr_model``: the I2SR checkpoint
    that thick scans (> 2 mm) go through (``prepare_case``); None: trilinear z."""
    from hipas_core.errors import InvalidInputError
    from hipas_core.io import read_ct, read_labels

    root = Path(folder)
    pairs: list[tuple[str, Path, Path, Path | None, Path | None]] = []
    for ct in sorted(root.glob("*/ct.nii.gz")):
        lab = ct.parent / "labels.nii.gz"
        if lab.is_file():
            lev, lun = ct.parent / "levels.nii.gz", ct.parent / "lungs.nii.gz"
            pairs.append((ct.parent.name, ct, lab, lev if lev.is_file() else None, lun if lun.is_file() else None))
    for ct in sorted(root.glob("*_ct.nii.gz")):
        lab = ct.with_name(ct.name.replace("_ct.nii.gz", "_labels.nii.gz"))
        if lab.is_file():
            pairs.append((ct.name.replace("_ct.nii.gz", ""), ct, lab, None, None))
    for ct in sorted((root / "ct_scan").glob("*.npz")):
        lab = root / "annotation" / "artery" / ct.name  # read_labels reads the vein mask beside it
        if lab.is_file():
            pairs.append((ct.stem, ct, lab, None, None))
    if not pairs:
        raise InvalidInputError(f"{root}: no annotated scans found (case/ct.nii.gz + labels.nii.gz, "
                                "<id>_ct.nii.gz + <id>_labels.nii.gz, or ct_scan/ + annotation/)")
    cases = []
    for name, ct, lab, lev, lun in pairs:
        import SimpleITK as sitk

        ct_image = read_ct(ct)
        labels = read_labels(lab)
        cases.append(prepare_case(
            ct_image, labels, sitk.ReadImage(str(lev)) if lev else None, sitk.ReadImage(str(lun)) if lun else None,
            name=name, vesselness_sigmas_mm=vesselness_sigmas_mm, meta={"path": str(ct)},
            i2sr_model=None if i2sr_model is None else loaded_i2sr_model(str(i2sr_model)),
        ))
    return cases


@dataclass(frozen=True)
class Augmentation:
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_sd_max: float = 0.03
    thick_slice_probability: float = 0.25
    flip_axes: tuple[int, ...] = ()
    synthetic_ncct_probability: float = 0.0  # CTPA cases only
    # appearance randomization after apply(), vesselness recomputed (off: draws nothing)
    domain_randomization: DomainRandomization = field(default_factory=DomainRandomization)

    def __post_init__(self) -> None:  # a dict from a checkpoint's training config -> the settings
        object.__setattr__(self, "domain_randomization", DomainRandomization.from_dict(self.domain_randomization))

    def pick_case(
        self, case: TrainingCase, rng: np.random.Generator, *, vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM
    ) -> TrainingCase:
        """``case``, or with ``synthetic_ncct_probability`` its synthetic-NCCT copy when it is a
        CTPA case. Draws from ``rng`` only when the probability is > 0 and the case is CTPA."""
        if self.synthetic_ncct_probability <= 0 or case.meta.get("protocol") != "ctpa":
            return case
        if rng.random() >= self.synthetic_ncct_probability:
            return case
        variant = case.variants.get("synthetic_ncct")
        if variant is None:
            variant = synthetic_ncct_case(case, vesselness_sigmas_mm=vesselness_sigmas_mm)
            case.variants["synthetic_ncct"] = variant
        return variant

    def apply(self, image: np.ndarray, targets: list[np.ndarray], rng: np.random.Generator):
        """Augment a patch: ``image`` (2, z, y, x) float32, ``targets`` arrays (..., z, y, x)."""
        image = image.copy()
        ct = image[0]
        ct *= 1 + rng.uniform(-self.intensity_scale, self.intensity_scale)
        ct += rng.uniform(-self.intensity_shift, self.intensity_shift)
        ct += rng.normal(0.0, rng.uniform(0, self.noise_sd_max), ct.shape).astype(np.float32)
        np.clip(ct, 0.0, 1.0, out=ct)
        if rng.random() < self.thick_slice_probability:
            from scipy.ndimage import uniform_filter1d

            width = int(rng.integers(2, 5))
            image = uniform_filter1d(image, size=width, axis=1, mode="nearest")
        for axis in self.flip_axes:
            if rng.random() < 0.5:
                image = np.flip(image, axis=1 + axis)
                targets = [np.flip(t, axis=t.ndim - 3 + axis) for t in targets]
        return np.ascontiguousarray(image), [np.ascontiguousarray(t) for t in targets]

    def randomize_domain(
        self,
        image: np.ndarray,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        *,
        lungs: np.ndarray | None = None,
        vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM,
    ) -> np.ndarray:
        """Domain randomization of an (augmented) patch: ``image`` (2, Z, Y, X) float32 [CT,
        vesselness], ``labels`` (Z, Y, X) its exact labels (after any flip), ``lungs`` its lung
        mask or None. Returns (2, Z, Y, X) float32: the randomized CT (rounded to float16, as
        cases store it) and the vesselness recomputed from it (``network_input``), or ``image``
        itself when this patch is not randomized. ``labels`` None: only the random draws are made
        (the same ones, ``rng`` ends where it would; another rank's patch) and ``image`` is
        returned. Nothing is drawn when the randomization is off."""
        draw = draw_randomization(self.domain_randomization, image.shape[1:], rng)
        if labels is None or not draw.applied:
            return image
        ct = draw.apply(image[0], labels, lungs=lungs).astype(np.float16).astype(np.float32)
        return network_input(ct, vesselness_sigmas_mm=vesselness_sigmas_mm,
                             chunk_voxels=PATCH_VESSELNESS_CHUNK_VOXELS).astype(np.float32)


def synthetic_ncct_case(
    case: TrainingCase, *, vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM, **options
) -> TrainingCase:
    """A copy of a CTPA ``case`` as synthetic non-contrast CT (``hipas_core.sts.synthetic_ncct``).

    The stored CT channel is windowed; the window is inverted to HU (exact inside the window, and
    the transform only lowers voxels that lie inside it to values inside it), the blood pool seeded
    by the case's artery/vein labels is lowered to ~50 HU, the result windowed again and the
    vesselness channel recomputed on it (same crop, same scales as ``prepare_case``). Labels,
    levels, lungs, territories and weights are shared with ``case`` (not copied; read-only).
    """
    from hipas_core.sts.synthetic_ncct import synthetic_ncct_windowed

    ct_window = synthetic_ncct_windowed(case.image[0], labels=case.labels, spacing=STANDARD_SPACING, **options)
    return synthetic_ncct_variant(case, network_input(ct_window, vesselness_sigmas_mm=vesselness_sigmas_mm))


def synthetic_ncct_variant(case: TrainingCase, image: np.ndarray) -> TrainingCase:
    """The synthetic-NCCT copy of ``case`` with its input channels ``image`` ((2, Z, Y, X)
    float16, as ``synthetic_ncct_case`` computes them, or as a prepared case stores them)."""
    return TrainingCase(
        name=f"{case.name}-sncct", image=image,
        labels=case.labels,
        levels=case.levels, lungs=case.lungs, territory=case.territory, weights=case.weights,
        meta={**case.meta, "protocol": "synthetic-ncct", "source_protocol": case.meta.get("protocol")},
        skeleton=case.skeleton, level_voxels=case.level_voxels,
    )


def sample_patch(
    case: TrainingCase,
    patch: Sequence[int],
    rng: np.random.Generator,
    *,
    vessel_probability: float = 0.7,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One patch of ``case`` (padded with zeros where it leaves the crop).

    With ``vessel_probability`` the patch is centred on a random annotated vessel voxel of a
    randomly chosen level (so rare levels are seen as often as common ones), otherwise anywhere.
    Returns ``image`` (2, *patch) float32, ``labels``, ``levels``, ``territory`` (3, *patch),
    and each array of ``extra`` ((..., Z, Y, X) in the case's grid, e.g. a cached prior map) cut
    at the same place as float32 under its own key. ``extra`` draws nothing from ``rng``.
    """
    patch = tuple(int(p) for p in patch)
    shape = np.array(case.shape)
    present = [lv for lv in range(1, 5) if len(case.vessel_voxels(lv))]  # draws nothing
    if rng.random() < vessel_probability and present:
        level = present[int(rng.integers(len(present)))]
        candidates = case.vessel_voxels(level)
        centre = np.array(np.unravel_index(candidates[int(rng.integers(len(candidates)))], case.shape))
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = centre - np.array(patch) // 2
    start = np.clip(start, np.minimum(0, shape - np.array(patch)), np.maximum(0, shape - np.array(patch)))
    src, dst = [], []
    for axis in range(3):
        lo, hi = start[axis], start[axis] + patch[axis]
        src.append(slice(max(lo, 0), min(hi, shape[axis])))
        dst.append(slice(max(lo, 0) - lo, min(hi, shape[axis]) - lo))
    src, dst = tuple(src), tuple(dst)

    def cut(array: np.ndarray, dtype) -> np.ndarray:
        lead = array.shape[:-3]
        out = np.zeros((*lead, *patch), dtype=dtype)
        out[(..., *dst)] = array[(..., *src)]
        return out

    return {
        "image": cut(case.image, np.float32),
        "labels": cut(case.labels, np.uint8),
        "levels": cut(case.levels, np.uint8),
        "territory": cut(case.territory, np.uint8),
        "weights": case.weights.copy(),
        **{key: cut(array, np.float32) for key, array in (extra or {}).items()},
    }
