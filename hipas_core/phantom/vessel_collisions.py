"""Collisions between vessels: overlapping edges found by sampling, resolved by removing subtrees.

Where an artery overlaps a vein (or a tree overlaps itself away from a bifurcation) by more than
10 % of the radii sum, the smaller vessel's subtree goes (``FIXED`` nodes stay) and the short
stubs left behind are dropped. Trees are parent arrays (``parent[i] < i``, roots -1), positions
(n, 3) mm.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from hipas_core.conventions import ARTERY, VEIN
from hipas_core.phantom.rasterize import sample_segments
from hipas_core.phantom.vessel_cleanup import FIXED, compact, short_leaf_mask
from hipas_core.phantom.vessel_radii import subtree_sum


def edge_samples(pos, parent, radius, spacing: float):
    """Points along every edge every ``spacing`` mm: (points, radius, child node of the edge)."""
    child = np.flatnonzero(parent >= 0)
    pts, rep, _ = sample_segments(pos[parent[child]], pos[child], spacing)
    return pts, radius[child[rep]], child[rep]


def colliding_edges(pos_a, parent_a, radius_a, pos_b, parent_b, radius_b, *, spacing, tolerance, same=False):
    """Edges (child node ids) of tree A that overlap tree B by more than ``tolerance`` (fraction of
    r_a + r_b), with the child id of the B edge they hit. With ``same`` (A is B) adjacent edges
    (sharing a node or a parent-child pair of edges) are ignored."""
    pa, ra, ea = edge_samples(pos_a, parent_a, radius_a, spacing)
    pb, rb, eb = edge_samples(pos_b, parent_b, radius_b, spacing)
    if len(pa) == 0 or len(pb) == 0:
        return np.zeros((0, 2), int)
    k = min(6, len(pb))
    d, j = cKDTree(pb).query(pa, k=k)
    d, j = d.reshape(len(pa), k), j.reshape(len(pa), k)
    hit = d < (1.0 - tolerance) * (ra[:, None] + rb[j])
    if same:
        e1, e2 = ea[:, None], eb[j]
        p1, p2 = parent_a[e1], parent_a[e2]
        gp1 = np.where(p1 >= 0, parent_a[np.maximum(p1, 0)], -1)
        gp2 = np.where(p2 >= 0, parent_a[np.maximum(p2, 0)], -1)
        adjacent = (e1 == e2) | (p1 == e2) | (p2 == e1) | (p1 == p2) | (gp1 == e2) | (gp2 == e1)
        adjacent |= (gp1 == p2) | (gp2 == p1)
        hit &= ~adjacent
    rows, cols = np.nonzero(hit)
    if len(rows) == 0:
        return np.zeros((0, 2), int)
    pairs = np.unique(np.stack([ea[rows], eb[j[rows, cols]]], 1), axis=0)
    return pairs


def remove_subtrees(parent: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """Keep-mask without the subtrees rooted at ``heads``."""
    removed = np.zeros(len(parent), bool)
    removed[heads] = True
    for i in range(len(parent)):
        if parent[i] >= 0 and removed[parent[i]]:
            removed[i] = True
    return ~removed


def resolve_collisions(trees, leaf_r, params, rounds: int = 3):
    """Remove the smaller vessel's subtree where an artery overlaps a vein (or a tree overlaps
    itself away from a bifurcation) by more than 10 % of the radii sum; fixed nodes stay."""
    for _ in range(rounds):
        radius = {}
        for kind, (_pos, parent, _info) in trees.items():
            nc = np.bincount(parent[parent >= 0], minlength=len(parent))
            radius[kind] = np.cbrt(subtree_sum(parent, np.where(nc == 0, leaf_r[kind], 0.0) ** 3))
        heads = {ARTERY: set(), VEIN: set()}
        spacing = 0.8 * params.r_min
        pa, qa, ia = trees[ARTERY]
        pv, qv, iv = trees[VEIN]
        cross = colliding_edges(pa, qa, radius[ARTERY], pv, qv, radius[VEIN], spacing=spacing, tolerance=0.1)
        for ea, ev in cross:
            fa, fv = (ia[ea] & FIXED) > 0, (iv[ev] & FIXED) > 0
            if fa and fv:
                continue
            if fv or (not fa and radius[ARTERY][ea] <= radius[VEIN][ev]):
                heads[ARTERY].add(int(ea))
            else:
                heads[VEIN].add(int(ev))
        for kind in (ARTERY, VEIN):
            pos, parent, info = trees[kind]
            own = colliding_edges(pos, parent, radius[kind], pos, parent, radius[kind],
                                  spacing=spacing, tolerance=0.1, same=True)
            for e1, e2 in own:
                f1, f2 = (info[e1] & FIXED) > 0, (info[e2] & FIXED) > 0
                if f1 and f2:
                    continue
                smaller = e2 if (f1 or (not f2 and radius[kind][e2] <= radius[kind][e1])) else e1
                heads[kind].add(int(smaller))
        if not heads[ARTERY] and not heads[VEIN]:
            break
        for kind in (ARTERY, VEIN):
            if not heads[kind]:
                continue
            pos, parent, info = trees[kind]
            keep = remove_subtrees(parent, np.array(sorted(heads[kind]), int))
            old_r = radius[kind]
            pos, parent, info = compact(pos, parent, keep, info)
            r_keep = old_r[keep]
            lr = leaf_r[kind][keep]
            nc = np.bincount(parent[parent >= 0], minlength=len(parent))
            fresh = (nc == 0) & (lr == 0)
            lr[fresh] = np.minimum(r_keep[fresh], params.r_leaf_max)
            # drop short stubs left behind (and their leaf radii with them)
            keep_mask = short_leaf_mask(pos, parent, params.min_leaf, info)
            if not keep_mask.all():
                pos, parent, info = compact(pos, parent, keep_mask, info)
                lr = lr[keep_mask]
                nc = np.bincount(parent[parent >= 0], minlength=len(parent))
                fresh = (nc == 0) & (lr == 0)
                lr[fresh] = params.r_min
            trees[kind] = [pos, parent, info]
            leaf_r[kind] = lr
    return trees, leaf_r
