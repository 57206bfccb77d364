"""Vessel radii by Murray's law: r_parent^3 = sum r_child^3, leaf radii from lung territories.

A leaf's radius grows with the cube root of the lung territory (attraction points nearest to
its terminal branch) it supplies, clipped to [r_min, r_max]; the leaf scale is fitted so the
stems reach their anatomical radius. Trees are parent arrays (``parent[i] < i``, roots -1),
lengths in mm.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def depth_of(parent: np.ndarray) -> np.ndarray:
    """Edges from the root of each node (parent[i] < i)."""
    depth = np.zeros(len(parent), int)
    for i in np.flatnonzero(parent >= 0):
        depth[i] = depth[parent[i]] + 1
    return depth


def subtree_sum(parent: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over each node's subtree (parent[i] < i), one numpy pass per depth."""
    total = values.astype(float).copy()
    if len(parent) == 0:
        return total
    depth = depth_of(parent)
    order = np.argsort(-depth, kind="stable")
    bounds = np.flatnonzero(np.diff(depth[order])) + 1
    for group in np.split(order, bounds):
        group = group[parent[group] >= 0]
        if len(group):
            np.add.at(total, parent[group], total[group])
    return total


def murray_radii(parent: np.ndarray, leaf_flow: np.ndarray, k: float, r_min: float, r_max: float) -> np.ndarray:
    """Radii with r_leaf = clip(k * flow^(1/3), r_min, r_max) and r^3 summed up the tree."""
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    cube = np.zeros(n)
    leaves = nc == 0
    cube[leaves] = np.clip(k * np.cbrt(leaf_flow[leaves]), r_min, r_max) ** 3
    return np.cbrt(subtree_sum(parent, cube))


def leaf_territories(pos, parent, samples: np.ndarray) -> np.ndarray:
    """Per node: how many ``samples`` (points of the lung) lie nearest to the terminal branch
    that ends in it (0 for non-leaves); at least 1 for every leaf."""
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    owner_leaf = np.full(n, -1)
    for leaf in np.flatnonzero(nc == 0):
        node = leaf
        while node >= 0 and nc[node] <= 1:
            owner_leaf[node] = leaf
            node = parent[node]
    _, nearest = cKDTree(pos).query(samples)
    leaf_of = owner_leaf[nearest]
    flow = np.bincount(leaf_of[leaf_of >= 0], minlength=n).astype(float)
    flow[nc == 0] = np.maximum(flow[nc == 0], 1.0)
    return flow


def fit_radii(parent, flow, target_root: float, roots: np.ndarray, r_min: float, r_max: float) -> np.ndarray:
    """Murray radii with the leaf scale chosen so the mean root radius is ``target_root``."""
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    root_of = np.arange(n)
    for _ in range(n):  # pointer jumping: every node learns its root
        up = np.where(parent[root_of] >= 0, parent[root_of], root_of)
        if np.array_equal(up, root_of):
            break
        root_of = up
    leaves = np.flatnonzero(nc == 0)
    which = np.searchsorted(roots, root_of[leaves])
    cube_flow = np.cbrt(flow[leaves])
    lo, hi = 1e-4, 10.0
    for _ in range(60):
        k = np.sqrt(lo * hi)
        cubes = np.clip(k * cube_flow, r_min, r_max) ** 3
        root_r = np.cbrt(np.bincount(which, weights=cubes, minlength=len(roots)))
        if root_r.mean() < target_root:
            lo = k
        else:
            hi = k
    return murray_radii(parent, flow, np.sqrt(lo * hi), r_min, r_max)
