"""Tree-connected artery/vein labels: a small piece of one class that touches the other class's
tree joins that tree.

Each pulmonary tree is one connected structure from its root (the trunk, the left atrium)
outwards. After the voxel or branch labels a tree still holds pieces that are cut off from it
but sit against the other tree: a stretch of a vessel labelled with the wrong class, where the
vessel mask runs on unbroken into the other class. Such a component of one class, smaller than
``main_share`` x that class's largest component, that touches (26-neighbourhood) a main
component of the other class (one at least ``main_share`` x its largest) takes the other class.
This repeats while anything changes (a chain of pieces is handed on), at most ``rounds`` times.
Components that touch nothing are left as they are; the vessel mask itself never changes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attach_fragments"]

MAIN_SHARE = 0.1  # chosen on validation phantoms 501-508 (benchmarks/RESULTS.md, session 11)


def attach_fragments(labels: np.ndarray, *, main_share: float = MAIN_SHARE, rounds: int = 3) -> np.ndarray:
    """``labels`` ((Z, Y, X) uint8, 0 / 1 artery / 2 vein) with every small component of one
    class that touches a main component of the other class given to the other class (see the
    module docstring). Returns a new uint8 array with the same vessel voxels; the input is not
    modified."""
    import cc3d

    out = np.array(labels, dtype=np.uint8, copy=True)
    for _ in range(rounds):
        # one component image for both classes (cc3d keeps different labels apart)
        components = cc3d.connected_components(out, connectivity=26)
        flat = components.ravel()
        sizes = np.bincount(flat)
        sizes[0] = 0
        if len(sizes) <= 2:
            break
        classes = np.zeros(len(sizes), dtype=np.uint8)
        classes[flat] = out.ravel()  # every voxel of a component has its class
        main = np.zeros(len(sizes), dtype=bool)
        for value in (1, 2):
            of_class = classes == value
            if of_class.any():
                main |= of_class & (sizes >= main_share * sizes[of_class].max())
        joins = np.zeros(len(sizes), dtype=bool)
        for a, b in cc3d.region_graph(components, connectivity=26):
            if classes[a] != classes[b]:
                joins[a] |= main[b] and not main[a]
                joins[b] |= main[a] and not main[b]
        if not joins.any():
            break
        flip = joins[components]
        out[flip] = 3 - out[flip]
    return out
