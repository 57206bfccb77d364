"""Synthetic non-contrast CT from CTPA (paper Methods: the contrast-filled vessels are lowered
from over 200 HU to about 50 HU while the surrounding tissue keeps its signal; the network
trained on CTPA is fine-tuned on these images before it meets native non-contrast CT).

Which voxels are contrast-filled blood. Bone is also above 200 HU, so a threshold alone is not
enough. The rule used here is connectivity: the opacified blood pool (pulmonary arteries and
veins, heart chambers, aorta, venae cavae) is one connected system that reaches into the lungs,
while ribs, sternum and vertebrae lie outside the lungs and touch the lung only through pleura
and soft tissue, which stay below the threshold. So the blood pool is every connected component
(26-connectivity) of ``threshold_hu < HU <= max_blood_hu`` that touches a seed: the artery/vein
``labels`` when given (the annotation of a training case), else the ``lungs`` mask (computed with
``hipas_core.lungs.threshold_lung_array`` when not given). The ``max_blood_hu`` ceiling (default
650 HU) keeps dense cortical bone (700-800 HU and more) out of the candidate set, so a vertebra
that abuts the aorta is not pulled into the blood pool through its cortex. Contrast denser than
the ceiling (an undiluted bolus in the superior vena cava) is left as it is.

How the intensity is lowered, keeping the noise texture: inside the blood pool the local mean
blood intensity (a Gaussian-weighted mean over blood-pool voxels only, ``smoothing_mm``) is
replaced by ``target_hu`` and the residual (noise, texture) is kept:
``HU' = HU - (local_mean - target_hu)``.

Partial volume (the vessel border and, when ``labels`` are given, labelled vessels too thin to
exceed the threshold): such a voxel is a two-compartment mixture ``v = f B + (1 - f) L`` of
contrast blood ``B`` and its surroundings ``L``; the non-contrast image should hold
``f T + (1 - f) L`` (``T = target_hu``), i.e. ``v - f (B - T)`` with ``f = (v - L) / (B - L)``
clipped to [0, 1]. ``B`` is the regional blood-pool level (Gaussian-weighted mean of blood-pool
voxels, ``contrast_sigma_mm``; with labels, of the voxel's own tree; voxels with no pool voxel
within reach are left alone) and ``L`` the local
level of the surroundings (Gaussian-weighted mean of voxels that are neither pool, nor labelled,
nor in the treated rim, ``background_sigma_mm``): lung around intrapulmonary vessels, soft
tissue around the mediastinal pool. Voxels with ``v <= L`` are left as they are, so the result
changes smoothly from the darkened vessel to its unchanged surroundings, with no bright rim.
The treated rim is the one-voxel (26-neighbour) shell around the pool, plus labelled voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hipas_core.grid import STANDARD_SPACING


def blood_pool_mask(
    ct_hu: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    lungs: np.ndarray | None = None,
    spacing: Sequence[float] = STANDARD_SPACING,
    threshold_hu: float = 200.0,
    max_blood_hu: float = 650.0,
) -> np.ndarray:
    """bool (z, y, x): contrast-filled blood above ``threshold_hu`` (see the module docstring)."""
    import cc3d

    ct = np.asarray(ct_hu)
    candidate = (ct > threshold_hu) & (ct <= max_blood_hu)
    if not candidate.any():
        return candidate
    if labels is not None:
        seeds = np.asarray(labels) > 0
    else:
        if lungs is None:
            from hipas_core.errors import InvalidScanError
            from hipas_core.lungs import threshold_lung_array

            try:
                lungs = threshold_lung_array(ct, spacing=tuple(spacing))
            except InvalidScanError:
                return np.zeros(ct.shape, bool)
        seeds = np.asarray(lungs) > 0
    components = cc3d.connected_components(candidate, connectivity=26)
    touched = np.unique(components[seeds & candidate])
    touched = touched[touched > 0]
    return np.isin(components, touched)


def synthetic_ncct(
    ct_hu: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    lungs: np.ndarray | None = None,
    spacing: Sequence[float] = STANDARD_SPACING,
    threshold_hu: float = 200.0,
    target_hu: float = 50.0,
    max_blood_hu: float = 650.0,
    smoothing_mm: float = 2.0,
    contrast_sigma_mm: float = 10.0,
    background_sigma_mm: float = 3.0,
) -> np.ndarray:
    """A synthetic non-contrast CT from a CTPA: contrast-filled blood above ``threshold_hu`` set
    to about ``target_hu`` with its noise texture kept, the rest unchanged.

    ``ct_hu``: (z, y, x) HU; ``labels``: optional artery/vein label map (0 background) used as the
    blood-pool seeds; ``lungs``: optional lung mask, the seeds when no labels are given (computed
    by thresholding when neither is given); ``spacing``: (z, y, x) mm. Returns float32 HU of the
    same shape; the input is not modified; deterministic (no randomness).
    """
    from scipy import ndimage

    ct = np.asarray(ct_hu, dtype=np.float32)
    out = ct.copy()
    blood = blood_pool_mask(ct, labels=labels, lungs=lungs, spacing=spacing, threshold_hu=threshold_hu,
                            max_blood_hu=max_blood_hu)
    if not blood.any():
        return out
    spacing = np.asarray(spacing, dtype=float)
    rim = ndimage.binary_dilation(blood, structure=np.ones((3, 3, 3), bool)) & ~blood & (ct <= max_blood_hu)
    if labels is not None:
        rim |= (np.asarray(labels) > 0) & ~blood & (ct <= max_blood_hu)
    # work in the bounding box of the pool and the rim plus a margin for the filters
    treated = blood | rim
    margin = np.ceil(3 * max(smoothing_mm, background_sigma_mm) / spacing).astype(int) + 2
    hits = np.nonzero(treated)
    box = tuple(slice(max(0, int(h.min()) - m), min(n, int(h.max()) + m + 1))
                for h, m, n in zip(hits, margin, ct.shape, strict=True))
    ct_box, pool, rim_box = ct[box], blood[box].astype(np.float32), rim[box]
    others = (~treated[box]).astype(np.float32)

    def local_mean(values: np.ndarray, weights: np.ndarray, sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
        sigma = sigma_mm / spacing
        weight = ndimage.gaussian_filter(weights, sigma, mode="nearest")
        return ndimage.gaussian_filter(values * weights, sigma, mode="nearest") / np.maximum(weight, 1e-6), weight

    pool_mean, _ = local_mean(ct_box, pool, smoothing_mm)
    lowered = ct_box.copy()
    inside = pool > 0
    lowered[inside] -= np.maximum(pool_mean[inside] - target_hu, 0.0)
    if rim_box.any():
        surround, surround_weight = local_mean(ct_box, others, background_sigma_mm)
        surround = np.where(surround_weight > 1e-3, surround, target_hu)
        # blood level B per voxel: unlabelled rim voxels take the whole pool's regional level,
        # labelled voxels their own tree's (CTPA veins are less enhanced than arteries); a
        # labelled voxel with no pool voxel of its tree nearby is not contrast-filled: untouched
        groups = [(rim_box, pool)]
        if labels is not None:
            labels_box = np.asarray(labels)[box]
            groups[0] = (rim_box & (labels_box == 0), pool)
            groups += [(rim_box & (labels_box == k), pool * (labels_box == k)) for k in np.unique(labels_box[rim_box])
                       if k > 0]
        for where, source in groups:
            if not where.any() or not source.any():
                continue
            contrast, contrast_weight = local_mean(ct_box, source, contrast_sigma_mm)
            where = where & (contrast_weight > 1e-3)
            v, b, lvl = ct_box[where], contrast[where], surround[where]
            fraction = np.clip((v - lvl) / np.maximum(b - lvl, 1.0), 0.0, 1.0)
            lowered[where] = v - fraction * np.maximum(b - target_hu, 0.0)
    out[box] = lowered
    return out


def synthetic_ncct_windowed(
    ct_window: np.ndarray, *, labels: np.ndarray | None = None, spacing: Sequence[float] = STANDARD_SPACING, **options
) -> np.ndarray:
    """``synthetic_ncct`` on CT windowed by ``hipas_core.normalize.window`` ([0, 1] over
    ``HU_WINDOW``): the window is inverted (exact inside the window; the transform only changes
    voxels inside it and only lowers them to within it), transformed, windowed again. float32."""
    from hipas_core.grid import HU_WINDOW
    from hipas_core.normalize import window

    low, high = HU_WINDOW
    hu = np.asarray(ct_window, dtype=np.float32) * (high - low) + low
    return window(synthetic_ncct(hu, labels=labels, spacing=spacing, **options))
