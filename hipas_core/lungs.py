"""Lung masks: lungmask's R231 network, or an offline threshold method.

Output: a uint8 ``SimpleITK.Image`` in the CT's own grid with 0 background, 1 right lung,
2 left lung (lungmask R231's convention). Vessels and airways inside the lungs are part of the
mask (holes filled); trachea and main bronchi are not.

``threshold`` (default of the demo and tests) is a classical method that needs no weights: air
below ``-320 HU`` enclosed by the body in each axial slice, trachea and main bronchi tracked
slice by slice from the top and removed, the large components kept, left and right separated,
holes filled. It is exact on the project's phantoms; real scans should use ``lungmask`` (the
threshold method does not handle bowel gas near the diaphragm, severe emphysema touching the
chest wall, or consolidations as well as a trained network).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hipas_core.conventions import bounding_box, bounding_slices
from hipas_core.errors import InvalidInputError, InvalidScanError

LUNG_THRESHOLD_HU = -320.0
R231_FILE = "unet_r231-d5d2fc3d.pth"  # the file name lungmask's torch.hub download uses
RIGHT, LEFT = 1, 2

# airway tracking: the trachea's cross-section is 1-6 cm^2 and central; a tracked airway stops
# where its cross-section jumps (it opened into a lung in this slice)
_TRACHEA_AREA_MM2 = (60.0, 700.0)
_AIRWAY_GROWTH_LIMIT = 2.5
_MIN_LUNG_ML = 20.0
_MIN_SECOND_LUNG_FRACTION = 0.1


# ---------------------------------------------------------------------------------------------
# threshold method


def threshold_lungs(ct_image, *, threshold_hu: float = LUNG_THRESHOLD_HU):
    """Lung mask of a CT (``SimpleITK.Image`` in HU) by thresholding; see the module docstring.

    Returns a uint8 image in the CT's grid (0, 1 right, 2 left). Raises ``InvalidScanError``
    ("no lungs found") when no air region of lung size is enclosed by the body.
    """
    import SimpleITK as sitk

    ct = sitk.GetArrayViewFromImage(ct_image)
    spacing = tuple(reversed(ct_image.GetSpacing()))
    mask = threshold_lung_array(ct, spacing=spacing, threshold_hu=threshold_hu)
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(ct_image)
    return image


def threshold_lung_array(
    ct: np.ndarray, *, spacing: tuple[float, float, float], threshold_hu: float = LUNG_THRESHOLD_HU
) -> np.ndarray:
    """``threshold_lungs`` on a (z, y, x) HU array with ``spacing`` (mm); uint8 (0/1/2) array."""
    import cc3d

    spacing = tuple(float(s) for s in spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    candidate = _enclosed_air(np.asarray(ct), threshold_hu)
    airway = _track_airway(candidate, spacing)
    if airway.any():
        from scipy import ndimage

        # one voxel in-plane around the lumen: the partial-volume rim of the airway wall
        grown = ndimage.binary_dilation(airway, structure=np.ones((1, 3, 3), bool))
        candidate &= ~grown
    labels, count = cc3d.connected_components(candidate, connectivity=6, return_N=True)
    if count == 0:
        raise InvalidScanError("no lungs found (no air enclosed by the body)")
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] * voxel_ml < _MIN_LUNG_ML:
        raise InvalidScanError(
            f"no lungs found (largest enclosed air region {sizes[order[0]] * voxel_ml:.1f} ml)"
        )
    keep = [
        int(i) + 1 for i in order[:2] if sizes[i] >= _MIN_SECOND_LUNG_FRACTION * sizes[order[0]]
    ]
    if len(keep) == 1:
        lungs = _split_left_right(labels == keep[0])
    else:
        lungs = [labels == keep[0], labels == keep[1]]
    # right lung: lower x index (LPS: x grows towards the patient's left)
    lungs.sort(key=lambda m: np.nonzero(m.any(axis=(0, 1)))[0].mean())
    out = np.zeros(candidate.shape, np.uint8)
    for value, lung in zip((RIGHT, LEFT), lungs, strict=False):
        out[_fill(lung)] = value
    return out


def closed_mask(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Morphological closing of a (z, y, x) bool ``mask`` with a ball of ``radius_mm`` (``spacing``
    in mm; two Euclidean distance transforms on the mask's bounding box). Returns a new array."""
    import edt
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    spacing = np.asarray(spacing, dtype=float)
    pad = np.ceil(radius_mm / spacing).astype(int) + 1
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = np.pad(mask[box], [(int(k), int(k)) for k in pad])
    grown = edt.edt(~sub, anisotropy=tuple(spacing), black_border=False, parallel=1) <= radius_mm
    closed = edt.edt(grown, anisotropy=tuple(spacing), black_border=True, parallel=1) > radius_mm
    out = mask.copy()
    out[box] |= closed[tuple(slice(int(k), -int(k)) for k in pad)]
    return out


def _enclosed_air(ct: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Voxels below ``threshold_hu`` that the body encloses in their axial slice (air outside
    the body, which touches the image border in-plane, is dropped)."""
    import fill_voids

    tissue = ct >= threshold_hu
    enclosed = np.zeros(ct.shape, bool)
    for z in range(ct.shape[0]):
        if tissue[z].any():
            enclosed[z] = fill_voids.fill(tissue[z]) & ~tissue[z]
    return enclosed


def _track_airway(candidate: np.ndarray, spacing) -> np.ndarray:
    """Trachea and main bronchi: from the top slice down, the central air component(s) of
    trachea size, followed into the next slice while their cross-section stays small."""
    import cc3d

    pixel_mm2 = spacing[1] * spacing[2]
    airway = np.zeros(candidate.shape, bool)
    occupied = np.flatnonzero(candidate.any(axis=(1, 2)))
    if len(occupied) == 0:
        return airway
    top = int(occupied[-1])
    body_x = np.flatnonzero(candidate[occupied].any(axis=(0, 1)))
    centre_x = 0.5 * (body_x[0] + body_x[-1])
    width_x = max(body_x[-1] - body_x[0], 1)
    # seed: in the top slices, a central component of trachea size
    previous = None
    reference_area = None
    for z in range(top, max(top - 10, -1), -1):
        labels, n = cc3d.connected_components(candidate[z], connectivity=8, return_N=True)
        areas = np.bincount(labels.ravel(), minlength=n + 1) * pixel_mm2
        for label in range(1, n + 1):
            if not _TRACHEA_AREA_MM2[0] <= areas[label] <= _TRACHEA_AREA_MM2[1]:
                continue
            xs = np.nonzero(labels == label)[1]
            if abs(xs.mean() - centre_x) <= 0.15 * width_x:
                previous = labels == label
                reference_area = areas[label]
                airway[z] = previous
                break
        if previous is not None:
            start = z
            break
    if previous is None:
        return airway
    for z in range(start - 1, -1, -1):
        labels, n = cc3d.connected_components(candidate[z], connectivity=8, return_N=True)
        if n == 0:
            break
        touching = np.unique(labels[previous & (labels > 0)])
        current = np.zeros(previous.shape, bool)
        for label in touching:
            component = labels == label
            if component.sum() * pixel_mm2 > _AIRWAY_GROWTH_LIMIT * reference_area:
                continue  # this branch opened into a lung: stop following it
            current |= component
        if not current.any():
            break
        airway[z] = current
        previous = current
    return airway


def _split_left_right(lung: np.ndarray) -> list[np.ndarray]:
    """Two lungs fused into one component (thin anterior/posterior junction): erode until two
    large parts appear, then give every voxel the part nearest to it."""
    import cc3d
    from scipy import ndimage

    box = bounding_slices(lung)
    crop = lung[box]
    eroded = crop
    structure = np.zeros((1, 3, 3), bool)
    structure[0, 1, :] = structure[0, :, 1] = True
    for _ in range(15):
        eroded = ndimage.binary_erosion(eroded, structure=structure)
        parts, n = cc3d.connected_components(eroded, connectivity=6, return_N=True)
        if n < 2:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= _MIN_SECOND_LUNG_FRACTION * sizes[order[0]]:
            seeds = np.zeros(crop.shape, np.uint8)
            seeds[parts == order[0] + 1] = 1
            seeds[parts == order[1] + 1] = 2
            _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
            owner = seeds[tuple(nearest)]
            result = []
            for value in (1, 2):
                full = np.zeros(lung.shape, bool)
                full[box] = crop & (owner == value)
                result.append(full)
            return result
    return [lung]


def _fill(lung: np.ndarray) -> np.ndarray:
    """Fill the lung's holes in 3D and in every axial slice (vessels entering at the hilum are
    enclosed in-plane but open in 3D)."""
    import fill_voids

    filled = fill_voids.fill(lung)
    for z in np.flatnonzero(filled.any(axis=(1, 2))):
        filled[z] = fill_voids.fill(filled[z])
    return filled


def _coarse_lungs(ct_image, threshold_hu: float) -> np.ndarray:
    """Enclosed air on a 2x in-plane subsampled copy of a CT, components smaller than 5 % of the
    largest dropped: (z, y/2, x/2) bool. Raises ``InvalidScanError`` when no lungs are found."""
    import cc3d
    import SimpleITK as sitk

    ct = sitk.GetArrayViewFromImage(ct_image)[:, ::2, ::2]
    candidate = _enclosed_air(ct, threshold_hu)
    labels, count = cc3d.connected_components(candidate, connectivity=6, return_N=True)
    if count == 0:
        raise InvalidScanError("no lungs found (no air enclosed by the body)")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = sizes >= 0.05 * sizes.max()
    return big[labels]


def lung_bounding_box(ct_image, *, margin_mm: float = 5.0, threshold_hu: float = LUNG_THRESHOLD_HU):
    """A cheap (z, y, x) tuple of slices around the lungs of a CT (``SimpleITK.Image`` in HU):
    enclosed air on a 2x in-plane subsampled copy, components smaller than 5 % of the largest
    dropped, padded by ``margin_mm``. Raises ``InvalidScanError`` when no lungs are found."""
    return _box_of(_coarse_lungs(ct_image, threshold_hu), ct_image, margin_mm)


def _box_of(keep: np.ndarray, ct_image, margin_mm: float) -> tuple[slice, slice, slice]:
    """The box of the coarse lungs ``keep`` in ``ct_image``'s grid, padded by ``margin_mm``."""
    import SimpleITK as sitk

    spacing = np.asarray(ct_image.GetSpacing()[::-1])
    step = np.array([1, 2, 2])
    pad = np.ceil(margin_mm / spacing).astype(int)
    full_shape = np.asarray(sitk.GetArrayViewFromImage(ct_image).shape)
    box = []
    for axis, (first, end) in enumerate(zip(*bounding_box(keep), strict=True)):  # in keep's voxels
        lo = max(0, first * step[axis] - pad[axis])
        hi = min(int(full_shape[axis]), end * step[axis] + pad[axis])
        box.append(slice(int(lo), int(hi)))
    return tuple(box)


CAVITY_MARGIN_MM = 3.0  # the hull spans the mediastinum; the margin only covers edges blurred by resampling


def thoracic_cavity(ct_image, *, margin_mm: float = CAVITY_MARGIN_MM, threshold_hu: float = LUNG_THRESHOLD_HU) -> np.ndarray:
    """The thoracic cavity of a CT (``SimpleITK.Image`` in HU) as a (z, y, x) bool array in its
    grid: in every axial slice that holds lung, the convex hull of both lungs (which spans the
    mediastinum, heart and great vessels between them), widened by ``margin_mm`` in-plane.
    Slices without lung are empty. Pulmonary vessels lie inside it; chest wall, fat, bone and
    the abdomen below the lungs lie outside. Raises ``InvalidScanError`` when no lungs are found."""
    return _cavity_of(_coarse_lungs(ct_image, threshold_hu), ct_image, margin_mm)


def lung_box_and_cavity(
    ct_image, *, margin_mm: float = 5.0, cavity_margin_mm: float = CAVITY_MARGIN_MM,
    threshold_hu: float = LUNG_THRESHOLD_HU,
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """``lung_bounding_box`` and ``thoracic_cavity`` of one CT from one pass over its air."""
    keep = _coarse_lungs(ct_image, threshold_hu)
    return _box_of(keep, ct_image, margin_mm), _cavity_of(keep, ct_image, cavity_margin_mm)


def _cavity_of(keep: np.ndarray, ct_image, margin_mm: float) -> np.ndarray:
    import SimpleITK as sitk
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    spacing = np.asarray(ct_image.GetSpacing()[::-1], dtype=float)
    full_shape = sitk.GetArrayViewFromImage(ct_image).shape
    pixel = spacing[1:] * 2  # the coarse grid's in-plane spacing
    radius = np.ceil(margin_mm / pixel).astype(int)
    yy, xx = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
    disk = (yy * pixel[0]) ** 2 + (xx * pixel[1]) ** 2 <= margin_mm**2
    cavity = np.zeros(full_shape, dtype=bool)
    for z in np.flatnonzero(keep.any(axis=(1, 2))):
        hull = ndimage.binary_dilation(convex_hull_image(keep[z]), structure=disk)
        full = np.repeat(np.repeat(hull, 2, axis=0), 2, axis=1)
        cavity[z] = full[: full_shape[1], : full_shape[2]]
    return cavity


# ---------------------------------------------------------------------------------------------
# lungmask


def hub_weights_path() -> Path:
    """Where lungmask (through torch.hub) looks for the R231 weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / R231_FILE


def resolve_lungmask_weights(weights: str | os.PathLike | None) -> Path:
    """The local R231 weights file to use; never the network. Raises ``InvalidInputError``."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise InvalidInputError(f"{path}: lungmask weights file not found")
        return path
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    raise InvalidInputError(
        f"lungmask R231 weights not found: pass --weights PATH or put {R231_FILE} into {cached.parent} "
        "(this machine never downloads them), or use --method threshold"
    )


def lungmask_lungs(
    ct_image, *, weights: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 8
):
    """Lung mask of a CT (``SimpleITK.Image`` in HU) with lungmask's R231 U-Net.

    ``weights``: a local state-dict file; default the torch hub cache (``hub_weights_path``).
    ``device``: ``"cpu"`` or ``"cuda"``. Returns a uint8 image in the CT's grid (0, 1 right,
    2 left). Raises ``InvalidInputError`` at once when no weights are available locally.
    """
    import SimpleITK as sitk
    import torch

    if device not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda: no CUDA device is available")
    path = resolve_lungmask_weights(weights)
    if device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    from lungmask import LMInferer

    try:
        inferer = LMInferer(
            modelname="R231",
            modelpath=str(path),
            force_cpu=device == "cpu",
            batch_size=batch_size,
            tqdm_disable=True,
        )
    except Exception as error:  # any unreadable or mismatching state dict (pickle, shapes, keys)
        message = " ".join(str(error).split())[:200]
        raise InvalidInputError(f"{path}: not lungmask R231 weights ({message})") from error
    image = ct_image
    if image.GetPixelID() not in (sitk.sitkInt16, sitk.sitkFloat32):
        image = sitk.Cast(image, sitk.sitkFloat32)
    mask = inferer.apply(image)
    out = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    out.CopyInformation(ct_image)
    return out


def lung_masks(ct_image, *, method: str = "threshold", weights=None, device: str = "cpu"):
    """Dispatch on ``method`` (``"threshold"`` or ``"lungmask"``)."""
    if method == "threshold":
        return threshold_lungs(ct_image)
    if method == "lungmask":
        return lungmask_lungs(ct_image, weights=weights, device=device)
    raise InvalidInputError(f"method must be 'lungmask' or 'threshold', not {method!r}")


def lung_volumes_ml(lungs, labels=None) -> dict[str, float]:
    """``lung_total_ml`` (mask volume) and ``lung_volume_ml`` (the paper's: mask minus every vessel
    voxel of ``labels`` inside it) of ``SimpleITK.Image`` masks on one grid."""
    import SimpleITK as sitk

    lung = sitk.GetArrayViewFromImage(lungs) > 0
    voxel_ml = float(np.prod(lungs.GetSpacing())) / 1000.0
    total = int(np.count_nonzero(lung))
    vessels = (
        0
        if labels is None
        else int(np.count_nonzero(lung & (sitk.GetArrayViewFromImage(labels) > 0)))
    )
    return {"lung_total_ml": total * voxel_ml, "lung_volume_ml": (total - vessels) * voxel_ml}
