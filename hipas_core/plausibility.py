"""Plausibility of a segmentation without labels: what a reader checks on a real scan.

``plausibility_figures`` takes the CT and the artery/vein labels in one grid ((z, y, x) arrays,
``spacing`` in mm; the standardized grid is what ``hipas segment --std-output`` writes) and
returns figures that need no truth: the share of predicted vessel voxels inside the thoracic
cavity (``hipas_core.lungs.thoracic_cavity``), the share of each tree held by its three largest
connected components (a tree is one or a few trunks, not confetti), the share of bright voxels
inside the lungs (> -400 HU: vessels, but also nodules and scars) that are predicted vessel, and
whether each tree reaches the hila (lies within 15 mm of the mediastinal side of both lungs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hipas_core.conventions import ARTERY, TREES, VEIN, bounding_slices

BRIGHT_HU = -400.0
HILUM_DISTANCE_MM = 15.0


def _largest_components_share(mask: np.ndarray, count: int = 3) -> float:
    import cc3d

    if not mask.any():
        return 0.0
    components = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(components.ravel())[1:]
    return float(np.sort(sizes)[::-1][:count].sum() / sizes.sum())


def plausibility_figures(ct_hu: np.ndarray, labels: np.ndarray, *, spacing: Sequence[float], lungs: np.ndarray) -> dict:
    """Figures of a segmentation that need no truth.

    ``ct_hu`` (z, y, x) HU; ``labels`` (z, y, x) 0/1 artery/2 vein; ``lungs`` (z, y, x) lung mask
    (nonzero inside; the two sides are told apart by the midline between them); ``spacing``
    (z, y, x) mm.
    Returns a dict: ``inside_cavity`` (share of labelled voxels inside the thoracic cavity),
    ``artery_top3`` / ``vein_top3`` (share of each tree in its 3 largest 26-connected components),
    ``bright_lung_predicted`` (share of > -400 HU lung voxels labelled), ``artery_reaches_hila`` /
    ``vein_reaches_hila`` (bool), ``lung_total_ml``, and the voxel counts ``artery_voxels``,
    ``vein_voxels``. Inputs are not modified.
    """
    import edt
    import SimpleITK as sitk
    from scipy import ndimage

    from hipas_core.lungs import thoracic_cavity

    spacing = tuple(float(s) for s in spacing)
    image = sitk.GetImageFromArray(np.asarray(ct_hu, dtype=np.float32))
    image.SetSpacing(spacing[::-1])
    cavity = thoracic_cavity(image)
    vessel = labels > 0
    in_lungs = lungs > 0
    bright = (ct_hu > BRIGHT_HU) & ndimage.binary_erosion(in_lungs, iterations=2)
    figures = {
        "inside_cavity": float((vessel & cavity).sum() / max(vessel.sum(), 1)),
        "artery_top3": _largest_components_share(labels == ARTERY),
        "vein_top3": _largest_components_share(labels == VEIN),
        "bright_lung_predicted": float((bright & vessel).sum() / max(bright.sum(), 1)),
        "lung_total_ml": float(in_lungs.sum() * np.prod(spacing) / 1000.0),
        "artery_voxels": int((labels == ARTERY).sum()),
        "vein_voxels": int((labels == VEIN).sum()),
    }
    box = bounding_slices(in_lungs) if in_lungs.any() else ()
    labels, lungs, in_lungs = labels[box], lungs[box], in_lungs[box]
    # hila: the medial (mediastinal) side of each lung, i.e. the lung voxels within 15 mm of the
    # lung's side that faces the other lung, in the middle third of the lungs' height; a tree
    # reaches the hila when its largest component comes within 5 mm of both
    hila = {side: np.zeros(labels.shape, dtype=bool) for side in (0, 1)}
    z_hits = np.flatnonzero(in_lungs.any(axis=(1, 2)))
    if z_hits.size:
        z0, z1 = z_hits[0] + z_hits.size // 3, z_hits[0] + 2 * z_hits.size // 3
        middle = in_lungs[z0:z1]
        columns = np.arange(labels.shape[2])
        midline = np.nonzero(middle)[2].mean() if middle.any() else labels.shape[2] / 2
        for side, half in ((0, columns < midline), (1, columns >= midline)):
            lung = middle & half[None, None, :]
            if not lung.any():
                continue
            xs = np.nonzero(lung)[2]
            medial = xs.max() if side == 0 else xs.min()
            band = np.abs(columns - medial) * spacing[2] <= HILUM_DISTANCE_MM
            hila[side][z0:z1] = lung & band[None, None, :]
    for tree, value in TREES.items():
        trunk = _largest_component(labels == value)
        near = edt.edt(~trunk, anisotropy=spacing, parallel=1) <= 5.0 if trunk.any() else trunk
        figures[f"{tree}_reaches_hila"] = bool(all((near & hila[side]).any() for side in (0, 1)))
    return figures


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cc3d

    if not mask.any():
        return mask
    return cc3d.largest_k(mask, k=1, connectivity=26) > 0
