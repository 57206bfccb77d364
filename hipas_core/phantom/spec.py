"""What one phantom is: seed, size, protocol, demographics, disease flags and acquisition.

``PhantomSpec.from_seed`` draws every field from the seed (independent streams, so overriding
one field never changes another), then applies keyword overrides. The anatomy depends only on
``seed``, ``size``, the demographics and the disease flags; the protocol and the acquisition
parameters change only how the same anatomy is imaged, so the NCCT and CTPA phantoms of one
seed are a registered pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from hipas_core.conventions import DISEASE_FLAGS
from hipas_core.errors import InvalidInputError
from hipas_core.phantom.body_size import (
    BODY_HALF_WIDTH_MM,
    BODY_WIDTH_JITTER,
    chest_scale,
    predicted_lung_ml,
)

SIZES = ("small", "full")
PROTOCOLS = ("ncct", "ctpa")
KERNELS = ("smooth", "sharp")  # reconstruction kernel: soft-tissue or lung (edge-enhancing, near-white noise)
SHARP_KERNEL_SHARE = 0.3  # share of seeds reconstructed with the sharp kernel

# The phantom generator's version: raised whenever the same spec renders different voxels, so
# that caches and scan folders of an earlier generator are never taken for this one's
# (2: the reconstruction kernel; 1: before the field existed, every phantom smooth).
PHANTOM_VERSION = 2
MATRIX = {"small": 192, "full": 512}  # fixed in-plane matrix (pixels per side) of each size

# prevalence of each flag when drawn from the seed (a demo population, not an epidemiology)
FLAG_PREVALENCE = {
    "cardiomegaly": 0.12,
    "calcification": 0.15,
    "pah": 0.06,
    "nodule": 0.20,
    "embolism": 0.06,
    "copd": 0.10,
}

SLICE_THICKNESS_RANGE_MM = (0.625, 5.0)
INPLANE_SPACING_RANGE_MM = (0.55, 0.85)
DOSE_RANGE_MGY = (0.5, 20.0)

# thin-slice choices dominate (the workflow's truth checks need them); thick slices exercise I2SR
_THICKNESS_CHOICES = (0.625, 0.8, 1.0, 1.0, 1.25, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_THICKNESS_WEIGHTS = (0.08, 0.07, 0.18, 0.17, 0.12, 0.10, 0.06, 0.06, 0.06, 0.05, 0.05)


def _needed_spacing(values: dict) -> float:
    """In-plane spacing (mm) at which the fixed matrix covers the widest possible body of these
    demographics (2 x ``BODY_HALF_WIDTH_MM`` x the largest ``BODY_WIDTH_JITTER`` at scale 1, as
    ``anatomy.Anatomy`` draws it), capped at the upper end of ``INPLANE_SPACING_RANGE_MM``."""
    lung = predicted_lung_ml(values["sex"], float(values["height_cm"]), float(values["age"]), int(values["copd"]))
    scale = chest_scale(values["size"], lung)
    width = 2.0 * BODY_HALF_WIDTH_MM * BODY_WIDTH_JITTER[1] * scale + 4.0
    matrix = MATRIX["small"] if values["size"] == "small" else MATRIX["full"]
    return min(width / matrix, INPLANE_SPACING_RANGE_MM[1])


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random generator for one named part of phantom ``seed``."""
    key = [int.from_bytes(name.encode(), "little") % (2**63)]
    return np.random.default_rng([int(seed) % (2**63), *key])


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that determines a phantom (it is written into ``truth.json``).

    Units: ``age`` years, ``height_cm`` cm, ``slice_thickness_mm`` / ``inplane_spacing_mm`` mm
    (slices are contiguous: slice spacing = thickness), ``dose`` CTDIvol in mGy (noise SD scales
    with 1/sqrt(dose)), ``contrast_phase`` in [0, 1] (CTPA only: 0 = pure arterial phase with
    veins barely enhanced, 1 = veins as bright as arteries), ``arterial_hu`` the CTPA arterial
    enhancement, ``z_margin_mm`` extra coverage above/below the lungs (varies slice count),
    ``kernel`` the reconstruction kernel (``KERNELS``: "smooth", a soft-tissue kernel with
    correlated noise, or "sharp", a lung kernel: edge overshoot and near-white noise of about
    ``acquisition.SHARP_NOISE_FACTOR`` times the SD at the same dose).
    The in-plane matrix is fixed (``MATRIX``: 512 full, 192 small), so the field of view is 512 (192) x
    spacing; a spacing override below what the body needs clips the body edge, as a small
    reconstruction field of view does.
    """

    seed: int
    size: str = "small"
    protocol: str = "ncct"
    sex: str = "M"
    age: float = 55.0
    height_cm: float = 170.0
    cardiomegaly: int = 0
    calcification: int = 0
    pah: int = 0
    nodule: int = 0
    embolism: int = 0
    copd: int = 0
    slice_thickness_mm: float = 1.0
    inplane_spacing_mm: float = 0.7
    dose: float = 5.0
    contrast_phase: float = 0.25
    arterial_hu: float = 350.0
    z_margin_mm: float = 20.0
    kernel: str = "smooth"

    @classmethod
    def from_seed(cls, seed: int, size: str = "small", protocol: str = "ncct", **overrides: Any) -> PhantomSpec:
        """Draw a spec from ``seed`` and apply ``overrides`` (any field but ``seed``/``size``/``protocol``).

        Raises ``InvalidInputError`` for an unknown field or a value out of range.
        """
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise InvalidInputError(f"phantom seed must be an integer, got {seed!r}") from None
        demo = stream(seed, "demographics")
        sex = "M" if demo.random() < 0.5 else "F"
        age = float(np.clip(demo.normal(53.0, 9.0), 25.0, 85.0))
        height = float(demo.normal(172.0, 6.5) if sex == "M" else demo.normal(160.0, 6.0))
        flags_rng = stream(seed, "flags")
        flags = {name: int(flags_rng.random() < p) for name, p in FLAG_PREVALENCE.items()}
        acq = stream(seed, "acquisition")
        thickness = float(acq.choice(_THICKNESS_CHOICES, p=np.array(_THICKNESS_WEIGHTS) / sum(_THICKNESS_WEIGHTS)))
        if size == "small":
            # reduced chest: coarser in-plane sampling keeps the matrix <= 192 and thin slices
            thickness = float(acq.choice((0.8, 1.0, 1.0, 1.25)))
        # the matrix is fixed (512 full, 192 small): spacings that fit an adult / reduced chest
        spacing = float(acq.uniform(0.62, 0.85) if size == "full" else acq.uniform(0.74, 0.85))
        dose = float(np.exp(acq.uniform(np.log(1.0), np.log(12.0))))
        phase = float(acq.uniform(0.05, 0.5))
        arterial = float(acq.uniform(250.0, 450.0))
        z_margin = float(acq.uniform(10.0, 35.0))
        kernel = "sharp" if stream(seed, "kernel").random() < SHARP_KERNEL_SHARE else "smooth"
        values = dict(
            seed=seed, size=size, protocol=protocol, sex=sex, age=round(age, 1),
            height_cm=round(height, 1), **flags, slice_thickness_mm=thickness,
            inplane_spacing_mm=round(spacing, 4), dose=round(dose, 3), contrast_phase=round(phase, 3),
            arterial_hu=round(arterial, 1), z_margin_mm=round(z_margin, 1), kernel=kernel,
        )
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in names or key in ("seed", "size", "protocol"):
                raise InvalidInputError(f"phantom spec: unknown or fixed field {key!r}")
            if value is None:
                continue
            values[key] = value
        if "inplane_spacing_mm" not in overrides:
            # widen the field of view when the drawn one would cut the body (tall people)
            values["inplane_spacing_mm"] = round(max(values["inplane_spacing_mm"], _needed_spacing(values)), 4)
        spec = cls(**values)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raise ``InvalidInputError`` (one line) when a field is out of range."""
        def bad(what: str) -> InvalidInputError:
            return InvalidInputError(f"phantom spec (seed {self.seed}): {what}")

        if self.size not in SIZES:
            raise bad(f"size must be one of {SIZES}, got {self.size!r}")
        if self.protocol not in PROTOCOLS:
            raise bad(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.sex not in ("M", "F"):
            raise bad(f"sex must be 'M' or 'F', got {self.sex!r}")
        if not 5 <= float(self.age) <= 110:
            raise bad(f"age {self.age} outside 5..110 years")
        if not 120 <= float(self.height_cm) <= 220:
            raise bad(f"height_cm {self.height_cm} outside 120..220")
        for flag in DISEASE_FLAGS:
            if getattr(self, flag) not in (0, 1, True, False):
                raise bad(f"{flag} must be 0 or 1, got {getattr(self, flag)!r}")
        lo, hi = SLICE_THICKNESS_RANGE_MM
        if not lo <= float(self.slice_thickness_mm) <= hi:
            raise bad(f"slice_thickness_mm {self.slice_thickness_mm} outside {lo}..{hi}")
        lo, hi = INPLANE_SPACING_RANGE_MM
        if not lo <= float(self.inplane_spacing_mm) <= hi:
            raise bad(f"inplane_spacing_mm {self.inplane_spacing_mm} outside {lo}..{hi}")
        lo, hi = DOSE_RANGE_MGY
        if not lo <= float(self.dose) <= hi:
            raise bad(f"dose {self.dose} mGy outside {lo}..{hi}")
        if not 0.0 <= float(self.contrast_phase) <= 1.0:
            raise bad(f"contrast_phase {self.contrast_phase} outside 0..1")
        if not 100.0 <= float(self.arterial_hu) <= 700.0:
            raise bad(f"arterial_hu {self.arterial_hu} outside 100..700")
        if not 0.0 <= float(self.z_margin_mm) <= 80.0:
            raise bad(f"z_margin_mm {self.z_margin_mm} outside 0..80")
        if self.kernel not in KERNELS:
            raise bad(f"kernel must be one of {KERNELS}, got {self.kernel!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (flags as int)."""
        out = dataclasses.asdict(self)
        for flag in DISEASE_FLAGS:
            out[flag] = int(out[flag])
        return out
