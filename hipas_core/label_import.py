"""A user's own artery/vein label map, brought onto the standardized grid morphometry measures.

Scans whose manifest row names a ``labels`` file skip segmentation: their labels (in the scan's
own grid, 0 background, 1 artery, 2 vein, as ``hipas segment`` writes them) are resampled onto
the grid of the scan's standardized CT, exactly as the network's labels would have been.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from hipas_core.errors import InvalidScanError
from hipas_core.normalize import NormalizationRecord, _resample

LABEL_VALUES = (0, 1, 2)


def labels_to_standard_grid(
    labels: sitk.Image, *, standard_ct: sitk.Image, record: NormalizationRecord, name: str = "labels"
) -> sitk.Image:
    """Resample ``labels`` (the scan's own grid) onto ``standard_ct``'s grid; returns uint8.

    ``record`` is the scan's normalization record: the labels must have its input grid (size,
    spacing, origin and direction), else ``InvalidScanError`` names ``name`` and both grids.
    Values other than 0, 1, 2 are refused. Where the labels are finer than the standardized
    grid along some axis, each label is interpolated linearly as a one-hot map and the largest
    fraction wins (thin vessels survive the coarser grid); otherwise nearest neighbour, which
    keeps a one-voxel-wide vessel connected on the finer grid (one-hot interpolation breaks
    diagonal thin vessels into pieces there: on a 1.25 mm phantom the true labels lost 20 % of
    their centreline length and 19 % of their bifurcations that way, against 4 % and 1 % with
    nearest neighbour). ``labels`` is not modified.
    """
    reference = record.input_reference()
    same = (
        labels.GetSize() == reference.GetSize()
        and np.allclose(labels.GetSpacing(), reference.GetSpacing(), rtol=1e-4)
        and np.allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-2)
        and np.allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-4)
    )
    if not same:
        raise InvalidScanError(
            f"{name}: label grid (size {labels.GetSize()}, spacing {_mm(labels.GetSpacing())} mm) does not "
            f"match the scan's (size {reference.GetSize()}, spacing {_mm(reference.GetSpacing())} mm)"
        )
    values = np.unique(sitk.GetArrayViewFromImage(labels))
    unexpected = sorted(set(values.tolist()) - set(LABEL_VALUES))
    if unexpected:
        raise InvalidScanError(f"{name}: label values {unexpected[:5]} found; expected 0 background, 1 artery, 2 vein")
    finer = any(i < s - 1e-6 for s, i in zip(standard_ct.GetSpacing(), labels.GetSpacing(), strict=True))
    return _resample(labels, standard_ct, "label" if finer else "nearest", outside=0.0)


def _mm(values) -> str:
    return " x ".join(f"{v:.4g}" for v in values)
