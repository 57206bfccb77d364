"""Competing space colonization: an artery and a vein tree grow together in one lung.

Each tree grows from its fixed start nodes toward its own attraction points; a point is consumed
once a node comes within ``kill`` of it. Each tree treats the other as an obstacle (no new node
closer than ``clearance`` to it, and a push of weight ``repulsion`` away from it), so the trees
interleave; a ``keep_out`` set (the other tree's tubes from a first pass) keeps thin branches out
of vessels that only become big later. ``GrowthParams`` holds the settings, ``growth_params``
those of a phantom size. Points are (z, y, x) mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class GrowthParams:
    """Lengths in mm (already scaled to the phantom's size)."""

    step: float
    kill: float
    clearance: float
    min_leaf: float
    segment: float
    r_min: float
    r_leaf_max: float
    points_per_ml: float
    repulsion: float = 0.35
    max_iter: int = 400


def growth_params(size: str, scale: float) -> GrowthParams:
    """Growth settings for a phantom size; ``r_min`` is absolute (visibility in a 0.65 mm grid)."""
    if size == "full":
        return GrowthParams(step=1.6, kill=3.2, clearance=2.6, min_leaf=4.0, segment=3.0,
                            r_min=0.7, r_leaf_max=1.5, points_per_ml=0.85)
    return GrowthParams(step=1.0, kill=2.2, clearance=2.1, min_leaf=4.0, segment=2.0,
                        r_min=0.7, r_leaf_max=1.05, points_per_ml=4.0)


class _Nodes:
    """Node positions in a numpy buffer that doubles when full (fast appends, cheap views)."""

    def __init__(self, initial: np.ndarray):
        initial = np.asarray(initial, float).reshape(-1, 3)
        self.buffer = np.zeros((max(1024, 2 * len(initial)), 3))
        self.buffer[: len(initial)] = initial
        self.count = len(initial)

    def extend(self, new: np.ndarray) -> None:
        while self.count + len(new) > len(self.buffer):
            self.buffer = np.concatenate([self.buffer, np.zeros_like(self.buffer)])
        self.buffer[self.count : self.count + len(new)] = new
        self.count += len(new)

    @property
    def array(self) -> np.ndarray:
        return self.buffer[: self.count]


class LungLookup:
    """Fast approximate lung membership: the exact lung side sampled once on a regular grid,
    looked up by nearest voxel. Points outside the grid are outside the lungs."""

    def __init__(self, anatomy, spacing: float):
        lo, hi = anatomy.lung_bounds()
        self.origin = lo - spacing
        self.spacing = spacing
        shape = np.ceil((hi - lo) / spacing).astype(int) + 3
        axes = tuple(self.origin[i] + spacing * np.arange(shape[i]) for i in range(3))
        self.side = anatomy.lung_side_grid(axes)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        idx = np.rint((np.asarray(points) - self.origin) / self.spacing).astype(np.int64)
        valid = np.all((idx >= 0) & (idx < np.array(self.side.shape)), axis=1)
        out = np.zeros(len(idx), np.uint8)
        i = idx[valid]
        out[valid] = self.side[i[:, 0], i[:, 1], i[:, 2]]
        return out


def grow_pair(
    inside,
    initial: dict[int, tuple[np.ndarray, np.ndarray]],
    points: dict[int, np.ndarray],
    params: GrowthParams,
    keep_out: dict[int, tuple[cKDTree, np.ndarray]] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Grow an artery and a vein tree in one lung by competing space colonization.

    ``inside(points (n,3)) -> bool (n,)`` tells lung membership; ``initial[kind]`` = (pos (k, 3),
    parent (k,)) the fixed start nodes (hilum stems, parents local or -1); ``points[kind]`` (m, 3)
    attraction points. ``keep_out[kind]`` = (KD-tree of nodes, their radii) of a previous growth:
    the other tree keeps out of those tubes (so thin branches do not cross big vessels that only
    become big later). Returns per kind (pos (n,3), parent (n,)) with the initial nodes first.
    Deterministic.
    """
    roots = initial
    kinds = sorted(roots)
    pos = {k: _Nodes(roots[k][0]) for k in kinds}
    par = {k: [int(p) for p in roots[k][1]] for k in kinds}
    index = {k: _NodeIndex(pos[k]) for k in kinds}
    alive = {k: np.asarray(points[k], float) for k in kinds}
    near_d, near_i = {}, {}
    for k in kinds:
        near_d[k], near_i[k] = cKDTree(pos[k].array).query(alive[k]) if len(alive[k]) else (np.zeros(0), np.zeros(0, int))
    step, kill = params.step, params.kill
    for iteration in range(params.max_iter):
        grew = False
        # alternate which tree moves first, so neither claims the space systematically
        for k in kinds if iteration % 2 == 0 else kinds[::-1]:
            other = kinds[1 - kinds.index(k)] if len(kinds) == 2 else None
            keep = near_d[k] > kill
            alive[k], near_d[k], near_i[k] = alive[k][keep], near_d[k][keep], near_i[k][keep]
            pts, d, idx = alive[k], near_d[k], near_i[k]
            if len(pts) == 0:
                continue
            nodes = pos[k].array
            unit = (pts - nodes[idx]) / d[:, None]
            n = len(nodes)
            acc = np.stack([np.bincount(idx, weights=unit[:, c], minlength=n) for c in range(3)], 1)
            cand = np.flatnonzero(np.bincount(idx, minlength=n) > 0)
            direction = acc[cand]
            direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
            base = nodes[cand]
            if other is not None and params.repulsion > 0:
                od, oi = index[other].query(base)
                near = od < 3.0 * params.clearance
                if near.any():
                    away = base[near] - pos[other].array[oi[near]]
                    away /= np.maximum(np.linalg.norm(away, axis=1, keepdims=True), 1e-9)
                    weight = params.repulsion * (1.0 - od[near] / (3.0 * params.clearance))
                    direction[near] += weight[:, None] * away
                    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
            new = base + step * direction
            ok = inside(new)
            own_d, _ = index[k].query(new)
            ok &= own_d > 0.6 * step
            if other is not None:
                od, _ = index[other].query(new)
                ok &= od > params.clearance
                if keep_out is not None and other in keep_out:
                    ko_tree, ko_radius = keep_out[other]
                    kd_, ki_ = ko_tree.query(new, k=4)
                    ok &= np.all(kd_ > ko_radius[ki_] + params.r_min + 0.4, axis=1)
            if not ok.any():
                continue
            new, src = new[ok], cand[ok]
            # two new nodes on top of each other: keep the first
            if len(new) > 1:
                pairs = cKDTree(new).query_pairs(0.6 * step, output_type="ndarray")
                if len(pairs):
                    drop = np.zeros(len(new), bool)
                    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
                        if not drop[i]:
                            drop[j] = True
                    new, src = new[~drop], src[~drop]
            first_new = pos[k].count
            pos[k].extend(new)
            par[k].extend(src.tolist())
            index[k].added()
            # nearest node of every alive point: only the new nodes can be nearer than before
            dn, inew = cKDTree(new).query(pts)
            closer = dn < near_d[k]
            near_d[k] = np.where(closer, dn, near_d[k])
            near_i[k] = np.where(closer, inew + first_new, near_i[k])
            grew = True
        if not grew:
            break
    return {k: (pos[k].array.copy(), np.asarray(par[k], int)) for k in kinds}


class _NodeIndex:
    """Nearest-node queries on a growing node set: a KD-tree of most nodes, rebuilt only when
    many nodes were added, plus a small KD-tree of the recent ones."""

    def __init__(self, nodes: _Nodes):
        self.nodes = nodes
        self._rebuild()

    def _rebuild(self) -> None:
        self.main = cKDTree(self.nodes.array)
        self.main_count = self.nodes.count
        self.recent = None

    def added(self) -> None:
        extra = self.nodes.count - self.main_count
        if extra > max(256, self.main_count // 4):
            self._rebuild()
        else:
            self.recent = cKDTree(self.nodes.array[self.main_count :]) if extra else None

    def query(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d, i = self.main.query(points)
        if self.recent is not None:
            d2, i2 = self.recent.query(points)
            closer = d2 < d
            d = np.where(closer, d2, d)
            i = np.where(closer, i2 + self.main_count, i)
        return d, i
