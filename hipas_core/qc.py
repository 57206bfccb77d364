"""QC picture of a scan: three orthogonal slices through the vessels with the artery/vein labels
over the CT, and a coronal projection of both trees (arteries blue, veins red).

Deterministic (Agg backend, no timestamps in the PNG). Images are SimpleITK images in any grid;
the picture respects the voxel spacing (square millimetres on screen).
"""

from __future__ import annotations

import os

import numpy as np

from hipas_core.conventions import ARTERY, VEIN

ARTERY_RGB = (0.15, 0.45, 1.0)
VEIN_RGB = (1.0, 0.2, 0.15)
DISPLAY_WINDOW_HU = (-1000.0, 400.0)


def _overlay(ct2d: np.ndarray, lab2d: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    lo, hi = DISPLAY_WINDOW_HU
    gray = np.clip((ct2d.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for value, colour in ((ARTERY, ARTERY_RGB), (VEIN, VEIN_RGB)):
        mask = lab2d == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(colour, np.float32)
    return rgb


def _projection(labels: np.ndarray) -> np.ndarray:
    """Coronal view of the trees (z, x): the most anterior vessel voxel along y, shaded by depth."""
    vessel = labels > 0
    any_hit = vessel.any(axis=1)
    first = np.argmax(vessel, axis=1)  # first (most anterior) index along y
    z_idx, x_idx = np.nonzero(any_hit)
    kind = labels[z_idx, first[z_idx, x_idx], x_idx]
    depth = first[z_idx, x_idx] / max(labels.shape[1] - 1, 1)
    shade = 1.0 - 0.6 * depth
    rgb = np.zeros(any_hit.shape + (3,), np.float32)
    colours = np.where((kind == ARTERY)[:, None], np.array(ARTERY_RGB), np.array(VEIN_RGB))
    rgb[z_idx, x_idx] = colours * shade[:, None]
    return rgb


def render_qc_png(ct, labels, path: str | os.PathLike, *, title: str | None = None, dpi: int = 100) -> None:
    """Write the QC figure of ``ct`` (HU) with ``labels`` (0/1 artery/2 vein) to ``path`` (PNG).

    Panels: axial, coronal and sagittal slices through the centre of the vessel voxels (the
    image centre when there are none) and the coronal projection of both trees. ``dpi`` sets the
    size (100: 1600 x 460 pixels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from hipas_core.atomic import atomic_path

    ct_a = sitk.GetArrayFromImage(ct)
    lab_a = sitk.GetArrayFromImage(labels).astype(np.uint8)
    if lab_a.shape != ct_a.shape:
        from hipas_core.errors import InvalidInputError

        raise InvalidInputError(f"{path}: labels shape {lab_a.shape} differs from CT shape {ct_a.shape}")
    sx, sy, sz = ct.GetSpacing()
    vessel = np.argwhere(lab_a > 0)
    centre = np.rint(vessel.mean(0)).astype(int) if len(vessel) else np.array(ct_a.shape) // 2
    k, j, i = centre
    axial = _overlay(ct_a[k], lab_a[k])
    coronal = _overlay(ct_a[:, j, :], lab_a[:, j, :])[::-1]
    sagittal = _overlay(ct_a[:, :, i], lab_a[:, :, i])[::-1]
    projection = _projection(lab_a)[::-1]
    nz, ny, nx = ct_a.shape
    panels = [
        ("axial", axial, (0, nx * sx, ny * sy, 0)),
        ("coronal", coronal, (0, nx * sx, 0, nz * sz)),
        ("sagittal", sagittal, (0, ny * sy, 0, nz * sz)),
        ("trees (coronal projection)", projection, (0, nx * sx, 0, nz * sz)),
    ]
    widths = [p[2][1] - p[2][0] for p in panels]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6), gridspec_kw={"width_ratios": widths}, dpi=dpi)
    for ax, (name, image, extent) in zip(axes, panels, strict=True):
        ax.imshow(image, extent=extent, interpolation="nearest", origin="upper" if name == "axial" else "upper")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].text(0.02, 0.02, "R", color="yellow", transform=axes[0].transAxes)
    axes[0].text(0.95, 0.02, "L", color="yellow", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, "arteries blue, veins red", ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def render_exclusion_png(exclusion, path: str | os.PathLike, *, dpi: int = 100) -> None:
    """Write a QC picture for an excluded scan: its id, the stage that excluded it and the reason.

    ``exclusion`` is a ``hipas_core.exclusion.Exclusion``. Same size as ``render_qc_png``'s
    picture at the same ``dpi``; deterministic.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hipas_core.atomic import atomic_path

    fig = plt.figure(figsize=(16, 4.6), dpi=dpi)
    fig.text(0.5, 0.62, f"{exclusion.scan_id}: excluded at stage {exclusion.stage}", ha="center", fontsize=16)
    fig.text(0.5, 0.42, "\n".join(textwrap.wrap(exclusion.reason, 140)), ha="center", va="top", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
