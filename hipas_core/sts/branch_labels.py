"""Branch-consistent artery/vein labels: every branch of the vessel skeleton takes one class.

A network decides artery or vein voxel by voxel, so one vessel can change class halfway along
(a typical artery/vein confusion on a small CPU budget). Here the union of both trees is
skeletonized, the skeleton is cut at its junctions into branches, every vessel voxel is given
to its nearest branch, and each branch takes the class with the larger summed probability over
its voxels. The vessel mask itself is unchanged; only the artery/vein split moves.
"""

from __future__ import annotations

import numpy as np


def branch_consistent_labels(probabilities, labels: np.ndarray) -> np.ndarray:
    """Relabel ``labels`` ((Z, Y, X) uint8, 0 / 1 artery / 2 vein) so that each skeleton branch of
    their union is one class, decided by ``probabilities`` ((2, Z, Y, X) or a pair of arrays:
    artery and vein probabilities on the same grid). Returns a new uint8 array with the same
    vessel voxels; the inputs are not modified."""
    import cc3d
    from scipy import ndimage
    from skimage.morphology import skeletonize

    vessel = labels > 0
    out = labels.copy()
    if not vessel.any():
        return out
    box = ndimage.find_objects(vessel.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    vessel = vessel[box]
    skeleton = skeletonize(vessel)
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant")
    junctions = skeleton & (neighbours >= 4)  # itself and three or more neighbours
    branches = skeleton & ~ndimage.binary_dilation(junctions, structure=np.ones((3, 3, 3), bool))
    branch_id = cc3d.connected_components(branches, connectivity=26).astype(np.int64)
    if branch_id.max() == 0:
        return out
    nearest = ndimage.distance_transform_edt(branch_id == 0, return_distances=False, return_indices=True)
    owner = branch_id[tuple(nearest)][vessel]
    del nearest
    evidence = (np.asarray(probabilities[0][box], dtype=np.float64)[vessel]
                - np.asarray(probabilities[1][box], dtype=np.float64)[vessel])
    score = np.bincount(owner, weights=evidence, minlength=int(branch_id.max()) + 1)
    cls = np.where(score[owner] >= 0, 1, 2).astype(np.uint8)
    region = out[box]
    region[vessel] = cls
    return out
