"""Pulmonary artery and vein trees: space colonization with two competing point sets.

Per lung, an arterial and a venous tree grow at the same time from their hilum points toward
their own attraction points (uniform in the lung); each tree treats the other as an obstacle
(no new node closer than ``clearance`` to it) and is pushed a little away from it, so the two
trees interleave: veins settle between the arterial territories and touch arteries only where
they cross. After growth the trees are cleaned (terminal branches shorter than ``min_leaf_mm``
removed, chains thinned to ``segment_mm`` and smoothed), radii follow Murray's law from the
leaves up (r_parent^3 = sum r_child^3 at every bifurcation; leaf radii grow with the cube root
of the lung territory a leaf supplies and are clipped to [r_min, r_leaf_max], scaled so the
hilum stem reaches its anatomical radius), and collisions that survive growth are resolved by
removing the smaller vessel's subtree. The mediastinal paths (paper level 0: pulmonary trunk,
main pulmonary arteries, the four pulmonary veins to the left atrium) join the lung trees into one
tree per kind.

Graph conventions (``VesselTree``): nodes in (z, y, x) mm, ``parent[i] < i`` (roots -1); the edge
parent[i] -> i is a drawn capsule of radius ``radius[i]``; ``generation[i]`` is 0 on the mediastinal
path and counts bifurcations from the first intrapulmonary edge (1) on; a bifurcation is a node
with two or more children (a trifurcation counts once).

Demographic effect sizes on vessel abundance (attraction-point density per ml of lung):
women +6 % (at equal lung volume), -0.3 % per year of age above 40, cardiomegaly +2 %;
PAH removes 15 % of the arterial terminal branches, COPD 15 % of the venous ones (and
COPD +5 % lung volume already lowers density); lung volume itself scales the number of points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from hipas_core.conventions import ARTERY, LEVEL_OFFSET, VEIN, generation_to_level

# bits of the per-node ``info`` array used while building: fixed (never pruned or moved),
# mediastinal (paper level 0), and the lung side in bits 2-3 (0 mediastinum, 1 right, 2 left)
FIXED, MEDIASTINAL = 1, 2


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


@dataclass
class VesselTree:
    """One vessel tree (artery or vein) of both lungs with its mediastinal path."""

    kind: int
    pos: np.ndarray  # (n, 3) mm
    parent: np.ndarray  # (n,) int, -1 for the root
    radius: np.ndarray  # (n,) radius of the edge parent -> node (the root's: its own size)
    generation: np.ndarray  # (n,) int
    lung: np.ndarray  # (n,) 0 mediastinum, 1 right, 2 left

    @property
    def n_children(self) -> np.ndarray:
        return np.bincount(self.parent[self.parent >= 0], minlength=len(self.parent))

    @property
    def level(self) -> np.ndarray:
        """Paper level + 1 of each node's incoming edge: 1 mediastinum, 2 gen 1-2, 3 gen 3-5, 4 rest."""
        return generation_to_level(self.generation) + LEVEL_OFFSET  # generations are >= 0

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, radius, child index) of every drawn edge."""
        child = np.flatnonzero(self.parent >= 0)
        return self.pos[self.parent[child]], self.pos[child], self.radius[child], child

    def bifurcations(self) -> np.ndarray:
        return np.flatnonzero(self.n_children >= 2)

    def endpoints(self) -> np.ndarray:
        """Nodes of degree 1 in the undirected graph (leaves, and the root if it has one child)."""
        nc = self.n_children
        degree = nc + (self.parent >= 0)
        return np.flatnonzero(degree == 1)


# ---------------------------------------------------------------------------------------------
# growth


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


# ---------------------------------------------------------------------------------------------
# graph clean-up


def _compact(pos: np.ndarray, parent: np.ndarray, keep: np.ndarray, *extra: np.ndarray):
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
        pos, parent, info = _compact(pos, parent, ~remove, info)
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
    pos, parent, info = _compact(pos, parent, keep, info)
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
    return _compact(pos, parent, ~remove, info)


# ---------------------------------------------------------------------------------------------
# radii


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


# ---------------------------------------------------------------------------------------------
# collisions


def edge_samples(pos, parent, radius, spacing: float):
    """Points along every edge every ``spacing`` mm: (points, radius, child node of the edge)."""
    child = np.flatnonzero(parent >= 0)
    a, b = pos[parent[child]], pos[child]
    length = np.linalg.norm(b - a, axis=1)
    count = np.maximum(np.ceil(length / spacing).astype(int), 1)
    rep = np.repeat(np.arange(len(child)), count)
    start = np.repeat(np.cumsum(count) - count, count)
    t = (np.arange(rep.size) - start + 0.5) / count[rep]
    pts = a[rep] + t[:, None] * (b[rep] - a[rep])
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


# ---------------------------------------------------------------------------------------------
# the phantom's two trees


def growth_params(size: str, scale: float) -> GrowthParams:
    """Growth settings for a phantom size; ``r_min`` is absolute (visibility in a 0.65 mm grid)."""
    if size == "full":
        return GrowthParams(step=1.6, kill=3.2, clearance=2.6, min_leaf=4.0, segment=3.0,
                            r_min=0.7, r_leaf_max=1.5, points_per_ml=0.85)
    return GrowthParams(step=1.0, kill=2.2, clearance=2.1, min_leaf=4.0, segment=2.0,
                        r_min=0.7, r_leaf_max=1.05, points_per_ml=4.0)


def abundance_factor(sex: str, age: float, cardiomegaly: int) -> float:
    """Attraction-point density relative to a man of 40 (effect sizes in the module docstring)."""
    factor = 1.06 if sex == "F" else 1.0
    factor *= 1.0 - 0.003 * max(age - 40.0, 0.0)
    factor *= 1.02 if cardiomegaly else 1.0
    return factor


def _densify(path: np.ndarray, spacing: float) -> np.ndarray:
    out = [path[0]]
    for a, b in zip(path[:-1], path[1:], strict=True):
        n = max(int(np.ceil(np.linalg.norm(b - a) / spacing)), 1)
        out.extend(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.asarray(out)


def _sample_lung(anatomy, lookup, side: int, count_per_ml: float, rng, *, factor: float = 1.0):
    """Uniform points in one lung (rejection sampling); returns (points, lung volume ml)."""
    lo, hi = anatomy.lung_bounds()
    lo, hi = lo.copy(), hi.copy()
    if side == 1:
        hi[2] = 0.0
    else:
        lo[2] = 0.0
    box_ml = float(np.prod(hi - lo)) / 1000.0
    trial = rng.uniform(lo, hi, size=(int(box_ml * max(count_per_ml, 1.0) * 4) + 2000, 3))
    inside = lookup(trial) == side
    volume_ml = box_ml * inside.mean()
    pts = trial[inside]
    wanted = int(round(volume_ml * count_per_ml * factor))
    while len(pts) < wanted:  # rare: draw more
        more = rng.uniform(lo, hi, size=(wanted * 3, 3))
        pts = np.concatenate([pts, more[lookup(more) == side]])
    return pts[:wanted], volume_ml


def _split_path(anatomy, path: np.ndarray, side: int, spacing: float):
    """Mediastinal part (outside the lung) and intrapulmonary stem of a path (first point excluded)."""
    pts = _densify(path, spacing)[1:]
    inside = np.flatnonzero(anatomy.lung_side_points(pts) == side)
    if len(inside) == 0:
        # the hilum point fell outside this lung (big heart, small chest): go on laterally
        lateral = np.array([0.0, 0.15, -1.0 if side == 1 else 1.0])
        lateral /= np.linalg.norm(lateral)
        extra = pts[-1] + np.arange(1, 41)[:, None] * (spacing / 2.0) * lateral
        pts = np.concatenate([pts, extra])
        inside = np.flatnonzero(anatomy.lung_side_points(pts) == side)
    if len(inside) == 0:
        raise RuntimeError("phantom anatomy: a hilum path never enters its lung")
    first = inside[0]
    return pts[:first], pts[first:]


@dataclass
class _Builder:
    pos: list
    parent: list
    info: list

    def chain(self, points: np.ndarray, parent: int, info: int) -> int:
        """Append a chain of nodes below ``parent``; returns the last node's index."""
        for p in points:
            self.pos.append(np.asarray(p, float))
            self.parent.append(parent)
            self.info.append(info)
            parent = len(self.pos) - 1
        return parent


def grow_vessel_trees(anatomy, spec) -> dict[int, VesselTree]:
    """Grow the artery and vein trees of a phantom (deterministic for ``spec.seed``)."""
    from hipas_core.phantom.spec import stream

    params = growth_params(spec.size, anatomy.scale)
    rng = stream(spec.seed, "vessels")
    spacing = 3.0 * anatomy.scale
    builders = {ARTERY: _Builder([], [], []), VEIN: _Builder([], [], [])}
    stems: dict[tuple[int, int], list[tuple[np.ndarray, int]]] = {}

    art = anatomy.artery_paths()
    trunk = _densify(art["trunk"], spacing)
    last = builders[ARTERY].chain(trunk, -1, FIXED | MEDIASTINAL)
    for side, name in ((1, "right"), (2, "left")):
        med, stem = _split_path(anatomy, art[name], side, spacing)
        attach = builders[ARTERY].chain(med, last, FIXED | MEDIASTINAL)
        stems.setdefault((ARTERY, side), []).append((stem, attach))
    veins = anatomy.vein_paths()
    la = builders[VEIN].chain(veins["right_superior"][:1], -1, FIXED | MEDIASTINAL)
    for side, name in ((1, "right"), (2, "left")):
        for part in ("superior", "inferior"):
            med, stem = _split_path(anatomy, veins[f"{name}_{part}"], side, spacing)
            attach = builders[VEIN].chain(med, la, FIXED | MEDIASTINAL)
            stems.setdefault((VEIN, side), []).append((stem, attach))

    factor = abundance_factor(spec.sex, float(spec.age), int(spec.cardiomegaly))
    lookup = LungLookup(anatomy, params.step)
    target = {ARTERY: 9.5 * anatomy.scale, VEIN: 7.0 * anatomy.scale}  # hilum stem radii, mm
    territory_samples: dict[tuple[int, int], np.ndarray] = {}
    for side in (1, 2):
        initial, points, attach_of = {}, {}, {}
        for kind in (ARTERY, VEIN):
            pos_l, par_l, attach_l = [], [], []
            for stem, attach in stems[(kind, side)]:
                start = len(pos_l)
                for i, p in enumerate(stem):
                    pos_l.append(p)
                    par_l.append(-1 if i == 0 else start + i - 1)
                    attach_l.append(attach if i == 0 else -1)
            initial[kind] = (np.asarray(pos_l), np.asarray(par_l))
            attach_of[kind] = np.asarray(attach_l)
            points[kind], _ = _sample_lung(anatomy, lookup, side, params.points_per_ml, rng, factor=factor)
            territory_samples[(kind, side)] = points[kind]

        def inside(p, side=side):
            return lookup(p) == side

        # two passes: the first shows where the big vessels of each tree will be (Murray radii
        # from leaf counts), the second keeps the other tree's thin branches out of them
        first = grow_pair(inside, initial, points, params)
        keep_out = {}
        for kind, (pos_1, par_1) in first.items():
            nc = np.bincount(par_1[par_1 >= 0], minlength=len(par_1))
            leaves_below = subtree_sum(par_1, (nc == 0).astype(float))
            heads = par_1 < 0
            r_typ = target[kind] / np.cbrt(max(leaves_below[heads].mean(), 1.0))
            keep_out[kind] = (cKDTree(pos_1), np.maximum(r_typ * np.cbrt(leaves_below), params.r_min))
        grown = grow_pair(inside, initial, points, params, keep_out=keep_out)
        for kind in (ARTERY, VEIN):
            pos_l, par_l = grown[kind]
            b = builders[kind]
            offset = len(b.pos)
            n_init = len(initial[kind][0])
            for i in range(len(pos_l)):
                parent = int(attach_of[kind][i]) if par_l[i] < 0 else int(par_l[i]) + offset
                b.pos.append(pos_l[i])
                b.parent.append(parent)
                b.info.append((side << 2) | (FIXED if i < n_init else 0))

    trees = {}
    for kind in (ARTERY, VEIN):
        b = builders[kind]
        pos, parent, info = np.asarray(b.pos), np.asarray(b.parent, int), np.asarray(b.info, int)
        pos, parent, info = prune_short_leaves(pos, parent, params.min_leaf, info)
        disease = (kind == ARTERY and spec.pah) or (kind == VEIN and spec.copd)
        if disease:
            pos, parent, info = prune_fraction_of_leaves(pos, parent, 0.15, rng, info)
            pos, parent, info = prune_short_leaves(pos, parent, params.min_leaf, info)
        pos, parent, info = thin_and_smooth(pos, parent, params.segment, info)
        trees[kind] = [pos, parent, info]

    # leaf radii from lung territories, scaled so the hilum stems reach their anatomical size
    leaf_r: dict[int, np.ndarray] = {}
    for kind in (ARTERY, VEIN):
        pos, parent, info = trees[kind]
        r_leaf = np.zeros(len(parent))
        for side in (1, 2):
            on_side = ((info >> 2) & 3) == side
            sub = np.flatnonzero(on_side)
            local = np.full(len(parent), -1)
            local[sub] = np.arange(len(sub))
            sub_parent = np.where(parent[sub] >= 0, local[np.maximum(parent[sub], 0)], -1)
            flow = leaf_territories(pos[sub], sub_parent, territory_samples[(kind, side)])
            stem_heads = np.flatnonzero(sub_parent < 0)
            radii = fit_radii(sub_parent, flow, target[kind], stem_heads, params.r_min, params.r_leaf_max)
            nc = np.bincount(sub_parent[sub_parent >= 0], minlength=len(sub))
            r_leaf[sub[nc == 0]] = radii[nc == 0]
        leaf_r[kind] = r_leaf

    trees, leaf_r = _resolve_collisions(trees, leaf_r, params)
    out = {}
    for kind in (ARTERY, VEIN):
        pos, parent, info = trees[kind]
        nc = np.bincount(parent[parent >= 0], minlength=len(parent))
        cube = np.where(nc == 0, leaf_r[kind], 0.0) ** 3
        radius = np.cbrt(subtree_sum(parent, cube))
        mediastinal = (info & MEDIASTINAL) > 0
        if kind == ARTERY and spec.pah:
            radius[mediastinal] *= 1.35  # dilated trunk and main arteries (chain nodes only)
        out[kind] = VesselTree(
            kind=kind, pos=pos, parent=parent, radius=radius,
            generation=_generations(parent, mediastinal), lung=(info >> 2) & 3,
        )
    return out


def _generations(parent: np.ndarray, mediastinal: np.ndarray) -> np.ndarray:
    n = len(parent)
    nc = np.bincount(parent[parent >= 0], minlength=n)
    gen = np.zeros(n, int)
    for i in range(n):
        p = parent[i]
        if mediastinal[i] or p < 0:
            gen[i] = 0
        elif gen[p] == 0 and mediastinal[p]:
            gen[i] = 1
        else:
            gen[i] = gen[p] + (1 if nc[p] >= 2 else 0)
    return gen


def _resolve_collisions(trees, leaf_r, params, rounds: int = 3):
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
            pos, parent, info = _compact(pos, parent, keep, info)
            r_keep = old_r[keep]
            lr = leaf_r[kind][keep]
            nc = np.bincount(parent[parent >= 0], minlength=len(parent))
            fresh = (nc == 0) & (lr == 0)
            lr[fresh] = np.minimum(r_keep[fresh], params.r_leaf_max)
            # drop short stubs left behind (and their leaf radii with them)
            keep_mask = _short_leaf_mask(pos, parent, params.min_leaf, info)
            if not keep_mask.all():
                pos, parent, info = _compact(pos, parent, keep_mask, info)
                lr = lr[keep_mask]
                nc = np.bincount(parent[parent >= 0], minlength=len(parent))
                fresh = (nc == 0) & (lr == 0)
                lr[fresh] = params.r_min
            trees[kind] = [pos, parent, info]
            leaf_r[kind] = lr
    return trees, leaf_r


def _short_leaf_mask(pos, parent, min_len, info) -> np.ndarray:
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
