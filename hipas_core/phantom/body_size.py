"""How big a phantom's chest is: the lung volume its demographics predict and the linear scale
of the whole chest that follows from it. Shared by ``spec`` (which sizes the image grid) and
``anatomy`` (which builds the chest), so neither imports the other for it.

- lung volume (both lungs, CT at full inspiration) = 0.88 x predicted TLC (ECSC/Quanjer 1993:
  men 7.99 H - 7.08 L, women 6.60 H - 5.79 L, H in m), minus 5 ml per year of age above 40,
  plus 8 % with COPD (hyperinflation);
- the chest scales with the cube root of the lung volume, relative to ``REFERENCE_LUNG_ML`` at
  scale 1; ``size="small"`` multiplies every length by ``SMALL_SCALE`` (a reduced chest);
- the skin outline is ``BODY_HALF_WIDTH_MM`` wide on each side at scale 1, times a per-seed
  jitter drawn uniformly from ``BODY_WIDTH_JITTER`` (``anatomy`` draws it, ``spec`` sizes the
  field of view for its upper end).
"""

from __future__ import annotations

SMALL_SCALE = 0.40
REFERENCE_LUNG_ML = 6400.0  # lung mask volume of both lungs at scale 1 (measured; see the tests)
BODY_HALF_WIDTH_MM = 165.0  # half width of the skin outline at scale 1, before the jitter
BODY_WIDTH_JITTER = (0.95, 1.06)  # range of the per-seed factor on the body width


def predicted_lung_ml(sex: str, height_cm: float, age: float, copd: int) -> float:
    """CT lung volume (ml, both lungs) for the demographics (see the module docstring)."""
    h = height_cm / 100.0
    tlc_l = 7.99 * h - 7.08 if sex == "M" else 6.60 * h - 5.79
    ml = 880.0 * tlc_l - 5.0 * max(age - 40.0, 0.0)
    if copd:
        ml *= 1.08
    return float(max(ml, 1500.0))


def chest_scale(size: str, lung_ml: float) -> float:
    """Linear scale of every chest length: ``SMALL_SCALE`` for ``size="small"`` (else 1) times
    the cube root of ``lung_ml`` relative to ``REFERENCE_LUNG_ML``."""
    return (SMALL_SCALE if size == "small" else 1.0) * (lung_ml / REFERENCE_LUNG_ML) ** (1.0 / 3.0)


__all__ = [
    "BODY_HALF_WIDTH_MM", "BODY_WIDTH_JITTER", "REFERENCE_LUNG_ML", "SMALL_SCALE", "chest_scale",
    "predicted_lung_ml",
]
