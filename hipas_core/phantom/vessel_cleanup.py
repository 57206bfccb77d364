"""Clean-up of a grown vessel graph: short terminal branches, disease pruning, thinning, smoothing.

Graphs are parent arrays (``parent[i] < i``, roots -1) with node positions (n, 3) mm and a
per-node ``info`` bit array (``FIXED``, ``MEDIASTINAL``, lung side); ``FIXED`` nodes are never
removed or moved. Every operation returns a new (pos, parent, info) with parents reindexed.
"""

from __future__ import annotations

import numpy as np

# bits of the per-node ``info`` array used while building: fixed (never pruned or moved),
# mediastinal (paper level 0), and the lung side in bits 2-3 (0 mediastinum, 1 right, 2 left)
FIXED, MEDIASTINAL = 1, 2


def compact(pos: np.ndarray, parent: np.ndarray, keep: np.ndarray, *extra: np.ndarray):
    """Drop nodes not in ``keep`` (a kept node's parent must be kept), reindexing parents."""
    new_index = np.cumsum(keep) - 1
    parent = parent[keep]
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)
    return (pos[keep], parent, *(e[keep] for e in extra))


def prune_short_leaves(pos, parent, min_len: float, info: np.ndarray, passes: int = 3):
    """Remove terminal branches (leaf up to the nearest bifurcation) shorter than ``min_len``.

    Nodes flagged ``FIXED`` in ``info`` (mediastinal paths and stems) are never removed.
    Returns (pos, parent, info).
    """
    for _ in range(passes):
        fixed = (info & FIXED) > 0
        n = len(parent)
        nc = np.bincount(parent[parent >= 0], minlength=n)
        seg_len = np.zeros(n)
        has = parent >= 0
        seg_len[has] = np.linalg.norm(pos[has] - pos[parent[has]], axis=1)
        remove = np.zeros(n, bool)
        for leaf in np.flatnonzero(nc == 0):
            chain, length, node = [], 0.0, leaf
            while not fixed[node] and parent[node] >= 0 and nc[node] <= 1:
                chain.append(node)
                length += seg_len[node]
                node = parent[node]
            if node >= 0 and nc[node] >= 2 and length < min_len:
                remove[chain] = True
        if not remove.any():
            break
        pos, parent, info = compact(pos, parent, ~remove, info)
    return pos, parent, info


def thin_and_smooth(pos, parent, segment: float, info: np.ndarray, iterations: int = 2):
    """Thin degree-2 chains so edges are about ``segment`` mm long, then smooth chain nodes
    (``FIXED`` nodes stay). Returns (pos, parent, info)."""
    fixed = (info & FIXED) > 0
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    keep = np.ones(n, bool)
    acc = np.zeros(n)
    for i in range(n):
        p = parent[i]
        if p < 0 or fixed[i]:
            continue
        step = np.linalg.norm(pos[i] - pos[p]) + (acc[p] if not keep[p] else 0.0)
        if nc[i] == 1 and step < segment:
            keep[i] = False
            acc[i] = step
    # a dropped node's children attach to its nearest kept ancestor
    parent = parent.copy()
    for i in range(n):
        p = parent[i]
        while p >= 0 and not keep[p]:
            p = parent[p]
        parent[i] = p
    pos, parent, info = compact(pos, parent, keep, info)
    fixed = (info & FIXED) > 0
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    movable = (nc == 1) & (parent >= 0) & ~fixed
    child_of = np.full(n, -1)
    child_of[parent[parent >= 0]] = np.flatnonzero(parent >= 0)
    idx = np.flatnonzero(movable)
    for _ in range(iterations):
        new = pos.copy()
        new[idx] = 0.5 * pos[idx] + 0.25 * (pos[parent[idx]] + pos[child_of[idx]])
        pos = new
    return pos, parent, info


def prune_fraction_of_leaves(pos, parent, fraction: float, rng, info: np.ndarray):
    """Remove ``fraction`` of the terminal branches (disease pruning). Returns (pos, parent, info)."""
    fixed = (info & FIXED) > 0
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    leaves = np.flatnonzero((nc == 0) & ~fixed)
    count = int(round(fraction * len(leaves)))
    if count == 0:
        return pos, parent, info
    chosen = rng.choice(leaves, size=count, replace=False)
    remove = np.zeros(n, bool)
    for leaf in chosen:
        node = leaf
        while not fixed[node] and nc[node] <= 1 and parent[node] >= 0:
            remove[node] = True
            node = parent[node]
    return compact(pos, parent, ~remove, info)


def short_leaf_mask(pos, parent, min_len, info) -> np.ndarray:
    """Keep-mask without terminal branches shorter than ``min_len`` (one pass)."""
    fixed = (info & FIXED) > 0
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    keep = np.ones(n, bool)
    for leaf in np.flatnonzero(nc == 0):
        chain, length, node = [], 0.0, leaf
        while not fixed[node] and parent[node] >= 0 and nc[node] <= 1:
            chain.append(node)
            length += np.linalg.norm(pos[node] - pos[parent[node]])
            node = parent[node]
        if node >= 0 and nc[node] >= 2 and length < min_len:
            keep[chain] = False
    return keep
