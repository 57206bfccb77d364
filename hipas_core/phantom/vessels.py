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

This module holds the ``VesselTree`` graph and ``grow_vessel_trees``, which builds the phantom's
two trees from the anatomy; the steps live in ``vessel_growth`` (space colonization),
``vessel_cleanup`` (pruning, thinning, smoothing), ``vessel_radii`` (Murray radii) and
``vessel_collisions`` (overlap removal).

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
from hipas_core.phantom.vessel_cleanup import (
    FIXED,
    MEDIASTINAL,
    prune_fraction_of_leaves,
    prune_short_leaves,
    thin_and_smooth,
)
from hipas_core.phantom.vessel_collisions import resolve_collisions
from hipas_core.phantom.vessel_growth import LungLookup, grow_pair, growth_params
from hipas_core.phantom.vessel_radii import fit_radii, leaf_territories, subtree_sum


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
# the phantom's two trees


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

    trees, leaf_r = resolve_collisions(trees, leaf_r, params)
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
