"""Capsule rasterization: signed distance of voxel centres to a set of tubes.

A tube segment is a capsule (all points within ``radius`` of the segment a-b). For a grid given by
its three ascending axis coordinates (mm, z/y/x), ``render_capsules`` keeps per voxel the
smallest signed distance ``|p - segment| - radius`` (negative inside) and the index of the segment
that achieves it, evaluating each segment only in its own bounding box (plus ``pad`` mm). Partial
volume then follows from the signed distance (``coverage``), so tube edges are anti-aliased without
rendering at a higher resolution.
"""

from __future__ import annotations

import numpy as np


def render_capsules(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    radius: np.ndarray,
    *,
    pad: float,
    flat_end: np.ndarray | None = None,
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """Minimum signed distance (mm, float32) and owning segment index (int32, -1 none) in the
    bounding box of the capsules that reach the grid.

    ``axes``: ascending voxel-centre coordinates (z, y, x) in mm; ``a``/``b``: (n, 3) segment ends
    (z, y, x) mm; ``radius``: (n,) mm. Returns ``(box, signed, owner)`` where ``box`` is a tuple
    of slices into the full grid and ``signed``/``owner`` cover just that box; voxels farther
    than ``pad`` outside every capsule hold ``+inf`` / ``-1``. An empty box when nothing is near.
    ``flat_end`` (bool (n,)) cuts a segment flat at ``b`` instead of capping it with a half-ball
    (vessel tips: the drawn centreline then ends exactly at the graph's leaf node).
    """
    za, ya, xa = (np.asarray(v, np.float32) for v in axes)
    a = np.asarray(a, np.float64).reshape(-1, 3)
    b = np.asarray(b, np.float64).reshape(-1, 3)
    radius = np.asarray(radius, np.float64).reshape(-1)
    empty = (slice(0, 0),) * 3
    if a.size == 0:
        return empty, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.int32)
    lo = np.minimum(a, b) - (radius + pad)[:, None]
    hi = np.maximum(a, b) + (radius + pad)[:, None]
    k0 = np.searchsorted(za, lo[:, 0])
    k1 = np.searchsorted(za, hi[:, 0], side="right")
    j0 = np.searchsorted(ya, lo[:, 1])
    j1 = np.searchsorted(ya, hi[:, 1], side="right")
    i0 = np.searchsorted(xa, lo[:, 2])
    i1 = np.searchsorted(xa, hi[:, 2], side="right")
    visible = np.flatnonzero((k1 > k0) & (j1 > j0) & (i1 > i0))
    if len(visible) == 0:
        return empty, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.int32)
    bk0, bk1 = k0[visible].min(), k1[visible].max()
    bj0, bj1 = j0[visible].min(), j1[visible].max()
    bi0, bi1 = i0[visible].min(), i1[visible].max()
    box = (slice(int(bk0), int(bk1)), slice(int(bj0), int(bj1)), slice(int(bi0), int(bi1)))
    signed = np.full((bk1 - bk0, bj1 - bj0, bi1 - bi0), np.inf, np.float32)
    owner = np.full(signed.shape, -1, np.int32)
    ab = (b - a).astype(np.float32)
    inv_len2 = 1.0 / np.maximum((ab.astype(np.float64) ** 2).sum(1), 1e-12)
    a32 = a.astype(np.float32)
    for n in visible:
        zz = za[k0[n]:k1[n], None, None] - a32[n, 0]
        yy = ya[None, j0[n]:j1[n], None] - a32[n, 1]
        xx = xa[None, None, i0[n]:i1[n]] - a32[n, 2]
        dz, dy, dx = ab[n]
        t = (zz * dz + yy * dy + xx * dx) * np.float32(inv_len2[n])
        if flat_end is not None and flat_end[n]:
            # flat cut at b: beyond the end plane the distance is the larger of the distance to
            # the plane and the radial excess
            beyond = t > 1.0
            radial = np.sqrt((zz - t * dz) ** 2 + (yy - t * dy) ** 2 + (xx - t * dx) ** 2) - np.float32(radius[n])
            plane = (t - np.float32(1.0)) * np.float32(np.sqrt(1.0 / inv_len2[n]))
        else:
            beyond = None
        np.clip(t, 0.0, 1.0, out=t)
        dist = np.sqrt((zz - t * dz) ** 2 + (yy - t * dy) ** 2 + (xx - t * dx) ** 2)
        dist -= np.float32(radius[n])
        if beyond is not None:
            dist = np.where(beyond, np.maximum(plane, radial), dist)
        local = (slice(k0[n] - bk0, k1[n] - bk0), slice(j0[n] - bj0, j1[n] - bj0), slice(i0[n] - bi0, i1[n] - bi0))
        view = signed[local]
        closer = dist < view
        if closer.any():
            view[closer] = dist[closer]
            owner[local][closer] = n
    return box, signed, owner


def paint_capsules(volume: np.ndarray, axes, a, b, radius, value, *, width: float) -> None:
    """Composite capsules of intensity ``value`` into ``volume`` (in place) with partial volume
    from the signed distance (ramp of ``width`` mm)."""
    box, signed, _ = render_capsules(axes, a, b, radius, pad=width)
    if signed.size == 0:
        return
    region = volume[box]
    region += coverage(signed, width) * (np.float32(value) - region)


def coverage(signed: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction (float32 0..1) of a voxel of edge ``width`` mm at signed distance
    ``signed`` mm from a surface (linear ramp over one voxel width, 0.5 on the surface)."""
    out = np.float32(0.5) - signed / np.float32(width)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def point_segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point (n, 3) to the segment a-b (each (3,) or (n, 3))."""
    ab = b - a
    t = np.clip(((points - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def sample_segments(a: np.ndarray, b: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points along the segments ``a[i]``-``b[i]`` ((n, 3) arrays, mm), at the centres of
    ``ceil(length / spacing)`` (at least 1) equal pieces of each. Returns (points (m, 3), the
    segment index of each point (m,), the length in mm of each point's piece (m,))."""
    length = np.linalg.norm(b - a, axis=1)
    count = np.maximum(np.ceil(length / spacing).astype(int), 1)
    rep = np.repeat(np.arange(len(a)), count)
    start = np.repeat(np.cumsum(count) - count, count)
    t = (np.arange(rep.size) - start + 0.5) / count[rep]
    points = a[rep] + t[:, None] * (b[rep] - a[rep])
    return points, rep, length[rep] / count[rep]
