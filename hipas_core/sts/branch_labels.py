"""Branch-consistent artery/vein labels: every branch of the vessel skeleton takes one class.

A network decides artery or vein voxel by voxel, so one vessel can change class halfway along
(a typical artery/vein confusion on a small CPU budget). Here the union of both trees is
skeletonized, the skeleton is cut at its junctions into branches, every vessel voxel is given
to its nearest branch, and each branch takes one class. With ``coupling`` 0 a branch takes the
class with the larger summed probability over its voxels. With ``coupling`` > 0 the classes of
all branches are chosen together, as the minimum s-t cut of a graph (an exact binary labelling):
labelling branch b costs the other class's share of its voxels (sum of q_v or 1 - q_v, q =
p_artery / (p_artery + p_vein)), and a branch whose class differs from its parent's pays
``coupling`` x the smaller of the two voxel counts. A branch's parent is, of the branches that
meet it at a skeleton junction, the thickest (mean distance to the vessel wall along its
centreline), when thicker than itself: classes are handed down from the hilum outwards, as at a
bifurcation, while two vessels that merely touch or cross are not tied together (coupling every
pair of branches at a junction merged arteries into veins where they touch and lowered the
validation Dice). Arteries and veins connect only through capillaries, far below CT resolution.
The vessel mask itself is unchanged; only the artery/vein split moves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def branch_consistent_labels(probabilities, labels: np.ndarray, *, coupling: float = 0.0) -> np.ndarray:
    """Relabel ``labels`` ((Z, Y, X) uint8, 0 / 1 artery / 2 vein) so that each skeleton branch of
    their union is one class, decided by ``probabilities`` ((2, Z, Y, X) or a pair of arrays:
    artery and vein probabilities on the same grid) and, with ``coupling`` > 0, by the classes of
    its parent branch (see the module docstring). Returns a new uint8 array with the same vessel voxels; the inputs are not modified."""
    from scipy import ndimage

    vessel = labels > 0
    out = labels.copy()
    if not vessel.any():
        return out
    box = ndimage.find_objects(vessel.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    vessel = vessel[box]
    skeleton = skeleton_branches(vessel)
    if skeleton.branch_count == 0:
        return out
    # only the vessel voxels' probabilities, in float64 (not a float64 copy of the whole box)
    artery_p = np.asarray(probabilities[0][box][vessel], dtype=np.float64)
    vein_p = np.asarray(probabilities[1][box][vessel], dtype=np.float64)
    share = artery_p / np.maximum(artery_p + vein_p, 1e-9)  # q_v
    owner = skeleton.owner
    count = skeleton.branch_count + 1
    cost_vein = np.bincount(owner, weights=share, minlength=count)  # cost of calling the branch vein
    cost_artery = np.bincount(owner, weights=1.0 - share, minlength=count)
    is_artery = cost_vein >= cost_artery
    if coupling > 0:
        pairs = _parent_pairs(skeleton.junction_pairs(), vessel, skeleton)
        if len(pairs):
            size = np.bincount(owner, minlength=count)
            weights = coupling * np.minimum(size[pairs[:, 0]], size[pairs[:, 1]])
            is_artery = _min_cut_labels(cost_artery, cost_vein, pairs, weights)
    cls = np.where(is_artery[owner], 1, 2).astype(np.uint8)
    region = out[box]
    region[vessel] = cls
    return out


_OFFSETS = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                     if (dz, dy, dx) != (0, 0, 0)], dtype=np.int64)


def _around(array: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 26) values of ``array`` at the 26 neighbours of ``points`` ((N, 3) indices), 0 outside."""
    shifted = points[:, None, :] + _OFFSETS[None, :, :]
    upper = np.array(array.shape, dtype=np.int64) - 1
    inside = ((shifted >= 0) & (shifted <= upper)).all(axis=2)
    np.clip(shifted, 0, upper, out=shifted)
    values = array[shifted[..., 0], shifted[..., 1], shifted[..., 2]]
    values[~inside] = 0
    return values


@dataclass
class SkeletonBranches:
    """The vessel skeleton cut at its junctions into branches (``skeleton_branches``).

    ``points``: (N, 3) int64 indices of the skeleton voxels (C order); ``junction``: bool per
    point (three or more skeleton neighbours); ``branch``: the branch number of each point (0
    for the points within one voxel of a junction, which belong to no branch); ``owner``: for
    each vessel voxel (in ``vessel[vessel]`` order) the number of its nearest branch (all 0 when
    there is no branch); ``shape``: the mask's shape."""

    points: np.ndarray
    junction: np.ndarray
    branch: np.ndarray
    owner: np.ndarray
    shape: tuple[int, int, int]

    @property
    def branch_count(self) -> int:
        return int(self.branch.max()) if len(self.branch) else 0

    def junction_pairs(self) -> np.ndarray:
        """(M, 2) int array of branch numbers that touch the same junction cluster (a connected
        group of skeleton voxels within one voxel of a junction), each pair once, sorted."""
        import cc3d

        cluster = cc3d.connected_components(_points_mask(self.points[self.branch == 0], self.shape), connectivity=26)
        on_branch = self.branch > 0
        reach = _around(cluster, self.points[on_branch]).max(axis=1).astype(np.int64)  # 3x3x3 grey dilation, at branch voxels
        at = reach > 0
        touching = np.unique(np.stack([reach[at], self.branch[on_branch][at]], axis=1), axis=0)  # sorted by cluster
        starts = np.unique(touching[:, 0], return_index=True)[1]
        pairs = {pair for members in np.split(touching[:, 1], starts[1:])
                 for pair in itertools.combinations(members.tolist(), 2)}
        return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def skeleton_branches(vessel: np.ndarray) -> SkeletonBranches:
    """The skeleton of a (Z, Y, X) bool mask (``skimage.morphology.skeletonize``) cut at its
    junctions into branches (26-connected runs of skeleton voxels more than one voxel from a
    junction), and each vessel voxel's nearest branch (Euclidean, in voxels). Works on the
    skeleton's voxel list, so no full-size neighbour counts, dilations or distance-transform
    index arrays are made."""
    import cc3d
    from scipy.spatial import cKDTree
    from skimage.morphology import skeletonize

    skeleton = skeletonize(vessel)
    points = np.argwhere(skeleton)
    junction = _around(skeleton, points).sum(axis=1) >= 3
    near_junction = _around(_points_mask(points[junction], vessel.shape), points).any(axis=1) | junction
    branch_id = cc3d.connected_components(_points_mask(points[~near_junction], vessel.shape), connectivity=26)
    branch = branch_id[tuple(points.T)].astype(np.int64)
    del branch_id
    vessel_points = np.argwhere(vessel)
    if not branch.any():
        owner = np.zeros(len(vessel_points), dtype=np.int64)
    else:
        on_branch = branch > 0
        _, nearest = cKDTree(points[on_branch]).query(vessel_points, k=1)
        owner = branch[on_branch][nearest]
    return SkeletonBranches(points=points, junction=junction, branch=branch, owner=owner, shape=vessel.shape)


def _points_mask(points: np.ndarray, shape) -> np.ndarray:
    """A bool array of ``shape`` that is True at ``points`` ((N, 3) indices)."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(points.T)] = True
    return mask


def _parent_pairs(pairs: np.ndarray, vessel: np.ndarray, skeleton: SkeletonBranches) -> np.ndarray:
    """(child, parent) pairs: each branch with its thickest junction neighbour, when thicker."""
    import edt

    depth = edt.edt(vessel, black_border=True, parallel=1)
    on = skeleton.branch > 0
    count = skeleton.branch_count + 1
    depth_on = depth[tuple(skeleton.points[on].T)].astype(np.float64)
    del depth
    ids = skeleton.branch[on]
    radius = np.bincount(ids, weights=depth_on, minlength=count) / np.maximum(np.bincount(ids, minlength=count), 1)
    best = np.zeros(count, dtype=np.int64)
    for a, b in np.concatenate([pairs, pairs[:, ::-1]]):
        if radius[b] > radius[a] and (best[a] == 0 or radius[b] > radius[best[a]]):
            best[a] = b
    children = np.flatnonzero(best)
    return np.stack([children, best[children]], axis=1)


def _min_cut_labels(cost_artery, cost_vein, pairs, weights) -> np.ndarray:
    """Exact binary labelling minimising the unary costs plus ``weights`` per pair labelled
    differently (a submodular energy: one s-t minimum cut). Returns the artery mask per branch."""
    import networkx as nx

    graph = nx.DiGraph()
    for branch in range(1, len(cost_artery)):
        graph.add_edge("artery", branch, capacity=float(cost_vein[branch]))  # cut when the branch is vein
        graph.add_edge(branch, "vein", capacity=float(cost_artery[branch]))  # cut when it is artery
    for (a, b), weight in zip(pairs, weights, strict=True):
        graph.add_edge(int(a), int(b), capacity=float(weight))
        graph.add_edge(int(b), int(a), capacity=float(weight))
    _, (artery_side, _) = nx.minimum_cut(graph, "artery", "vein")
    is_artery = np.zeros(len(cost_artery), dtype=bool)
    is_artery[[n for n in artery_side if n != "artery"]] = True
    return is_artery
