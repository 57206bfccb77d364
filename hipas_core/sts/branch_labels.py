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
    skeleton, junctions, branch_id, owner = skeleton_branches(vessel)
    if branch_id.max() == 0:
        return out
    artery_p = np.asarray(probabilities[0][box], dtype=np.float64)[vessel]
    vein_p = np.asarray(probabilities[1][box], dtype=np.float64)[vessel]
    share = artery_p / np.maximum(artery_p + vein_p, 1e-9)  # q_v
    count = int(branch_id.max()) + 1
    cost_vein = np.bincount(owner, weights=share, minlength=count)  # cost of calling the branch vein
    cost_artery = np.bincount(owner, weights=1.0 - share, minlength=count)
    is_artery = cost_vein >= cost_artery
    if coupling > 0:
        pairs = _parent_pairs(_junction_pairs(skeleton, junctions, branch_id), vessel, branch_id)
        if len(pairs):
            size = np.bincount(owner, minlength=count)
            weights = coupling * np.minimum(size[pairs[:, 0]], size[pairs[:, 1]])
            is_artery = _min_cut_labels(cost_artery, cost_vein, pairs, weights)
    cls = np.where(is_artery[owner], 1, 2).astype(np.uint8)
    region = out[box]
    region[vessel] = cls
    return out


def skeleton_branches(vessel: np.ndarray):
    """The vessel skeleton of a (Z, Y, X) bool mask cut at its junctions into branches:
    ``(skeleton, junctions, branch_id, owner)``: skeleton and junction voxels (bool), the
    branch number of each branch voxel (int64, 0 elsewhere), and for each vessel voxel (in
    ``vessel[vessel]`` order) the number of its nearest branch (all 0 when there is no branch)."""
    import cc3d
    from scipy import ndimage
    from skimage.morphology import skeletonize

    skeleton = skeletonize(vessel)
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant")
    junctions = skeleton & (neighbours >= 4)  # itself and three or more neighbours
    branches = skeleton & ~ndimage.binary_dilation(junctions, structure=np.ones((3, 3, 3), bool))
    branch_id = cc3d.connected_components(branches, connectivity=26).astype(np.int64)
    if branch_id.max() == 0:
        return skeleton, junctions, branch_id, np.zeros(int(vessel.sum()), dtype=np.int64)
    nearest = ndimage.distance_transform_edt(branch_id == 0, return_distances=False, return_indices=True)
    return skeleton, junctions, branch_id, branch_id[tuple(nearest)][vessel]


def _junction_pairs(skeleton: np.ndarray, junctions: np.ndarray, branch_id: np.ndarray) -> np.ndarray:
    """(N, 2) int array of branch ids that touch the same junction cluster (each pair once)."""
    import cc3d
    from scipy import ndimage

    zone = skeleton & ndimage.binary_dilation(junctions, structure=np.ones((3, 3, 3), bool))
    cluster = cc3d.connected_components(zone, connectivity=26).astype(np.int64)
    reach = ndimage.grey_dilation(cluster, size=(3, 3, 3))
    at = (branch_id > 0) & (reach > 0)
    touching = np.unique(np.stack([reach[at], branch_id[at]], axis=1), axis=0)  # sorted by cluster
    starts = np.unique(touching[:, 0], return_index=True)[1]
    pairs = {pair for members in np.split(touching[:, 1], starts[1:])
             for pair in itertools.combinations(members.tolist(), 2)}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def _parent_pairs(pairs: np.ndarray, vessel: np.ndarray, branch_id: np.ndarray) -> np.ndarray:
    """(child, parent) pairs: each branch with its thickest junction neighbour, when thicker."""
    import edt

    depth = edt.edt(vessel, black_border=True, parallel=1)
    on = branch_id > 0
    count = int(branch_id.max()) + 1
    radius = np.bincount(branch_id[on], weights=depth[on], minlength=count) / np.maximum(
        np.bincount(branch_id[on], minlength=count), 1)
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
