"""Sliding-window inference with gaussian blending over a 3D volume.

Windows of a fixed size tile the volume with the given fractional overlap (the last window of
each axis is shifted back to end at the border); a volume smaller than the window is padded
(replicate-free: zero padding, which for a windowed CT in [0, 1] means -1000 HU, i.e. air). Each
window's output is weighted by a gaussian centred in the window (sigma = 1/8 of the window side)
and the weighted sum is divided by the summed weights, so overlapping predictions blend smoothly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hipas_core.sts.network import SIZE_MULTIPLE


def gaussian_importance(window: Sequence[int], *, sigma_scale: float = 0.125) -> np.ndarray:
    """A (z, y, x) gaussian weight map of the window's shape, max 1, min clipped above 0."""
    axes = []
    for size in window:
        coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (coords / sigma) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight /= weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices along one axis so windows of ``window`` cover ``[0, size)`` with ``overlap``."""
    if size <= window:
        return [0]
    step = max(1, int(round(window * (1 - overlap))))
    starts = list(range(0, size - window, step))
    starts.append(size - window)
    return sorted(set(starts))


def fitted_window(
    window: tuple[int, int, int], shape: tuple[int, ...], *, overlap: float | None = None
) -> tuple[int, int, int]:
    """The sliding window shrunk, per axis, to the volume ``shape`` rounded up to a multiple of
    ``SIZE_MULTIPLE``: a crop smaller than the window is run in one pass without computing on
    padding (on a CPU the per-window overhead dominates, so few large windows are fastest).

    With ``overlap``, an axis longer than the window also gets the smallest window (a multiple of
    ``SIZE_MULTIPLE``) that covers it with no more windows than ``window`` needs at that overlap:
    the same number of windows, each overlapping its neighbours by at least ``overlap``, with less
    computed twice (a 250-voxel axis takes 2 windows of 144 instead of 2 of 160)."""
    fitted = []
    for w, s in zip(window, shape, strict=True):
        w = min(int(w), -(-int(s) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if overlap is not None and s > w:
            count = len(window_starts(int(s), w, overlap))
            while w - SIZE_MULTIPLE >= SIZE_MULTIPLE and len(window_starts(int(s), w - SIZE_MULTIPLE, overlap)) <= count:
                w -= SIZE_MULTIPLE
        fitted.append(w)
    return tuple(fitted)


def sliding_window_predict(
    predict: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    *,
    window: Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 1,
    out_channels: int = 2,
    blend: str = "gaussian",
) -> torch.Tensor:
    """Apply ``predict`` window by window and blend.

    ``volume`` (C, Z, Y, X) on the compute device; ``predict`` maps (B, C, *window) to
    (B, out_channels, *window) (e.g. probabilities). Returns (out_channels, Z, Y, X) float32 on
    the volume's device. ``blend`` is ``"gaussian"`` or ``"constant"``.
    """
    window = tuple(int(w) for w in window)
    spatial = tuple(volume.shape[1:])
    padded_shape = tuple(max(s, w) for s, w in zip(spatial, window, strict=True))
    if padded_shape != spatial:
        pad = []
        for s, p in reversed(list(zip(spatial, padded_shape, strict=True))):
            pad += [0, p - s]
        volume = torch.nn.functional.pad(volume, pad)
    importance = (
        torch.from_numpy(gaussian_importance(window)) if blend == "gaussian" else torch.ones(window)
    ).to(volume.device)
    output = torch.zeros((out_channels, *padded_shape), dtype=torch.float32, device=volume.device)
    weight_sum = torch.zeros(padded_shape, dtype=torch.float32, device=volume.device)
    corners = list(
        itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded_shape, window, strict=True)))
    )
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        slices = [tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True)) for corner in chunk]
        batch = torch.stack([volume[(slice(None), *s)] for s in slices])
        result = predict(batch).float()
        for item, s in enumerate(slices):
            output[(slice(None), *s)] += result[item] * importance
            weight_sum[s] += importance
    output /= weight_sum
    return output[(slice(None), *(slice(0, s) for s in spatial))]
