"""The bronchial tree: trachea and main bronchi from the anatomy, smaller bronchi beside the arteries.

Pulmonary arteries run with the bronchi (the bronchovascular bundle), so the intrapulmonary
bronchi are laid along the first arterial generations: each arterial node with generation
<= ``max_generation`` and radius >= ``min_radius`` gets a bronchus node offset sideways by
artery radius + bronchus outer radius + 0.4 mm, always to the same side of the vessel (a smooth
offset field, so the bronchial tree stays connected). Lumen radius = 0.85 x artery radius, wall
thickness = 0.2 x lumen + 0.3 mm (scaled). The main bronchus of each lung is joined to the
bronchus of its arterial hilum stem.
"""

from __future__ import annotations

import numpy as np

from hipas_core.phantom.anatomy import Tube


def bronchial_segments(anatomy, artery, *, max_generation: int, min_radius: float):
    """Airway capsules: (a (n,3), b (n,3), lumen radius (n,), wall thickness (n,)), all mm."""
    tubes = anatomy.airway_tubes()
    a_list, b_list, r_list = [], [], []
    for tube in tubes:
        a_list.append(tube.points[:-1])
        b_list.append(tube.points[1:])
        r_list.append(tube.radii)
    pos, parent, radius, gen = artery.pos, artery.parent, artery.radius, artery.generation
    n = len(parent)
    direction = np.zeros((n, 3))
    has = parent >= 0
    direction[has] = pos[has] - pos[parent[has]]
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
    # offset: the component of "posterior and a little up" perpendicular to the vessel
    ref = np.array([0.35, 1.0, 0.0])
    ref /= np.linalg.norm(ref)
    off = ref - (direction @ ref)[:, None] * direction
    weak = np.linalg.norm(off, axis=1) < 0.3
    alt = np.array([1.0, 0.0, 0.0])
    off[weak] = alt - (direction[weak] @ alt)[:, None] * direction[weak]
    off /= np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-9)
    lumen = 0.85 * radius
    wall = 0.2 * lumen + 0.3 * anatomy.scale
    centre = pos + off * (radius + lumen + wall + 0.4)[:, None]
    use = (gen >= 1) & (gen <= max_generation) & (radius >= min_radius) & has
    use &= (gen[np.maximum(parent, 0)] >= 1) | (artery.generation[np.maximum(parent, 0)] == 0)
    children = np.flatnonzero(use & (gen[np.maximum(parent, 0)] >= 1))
    a_list.append(centre[parent[children]])
    b_list.append(centre[children])
    r_list.append(lumen[children])
    # join each main bronchus to the bronchus of the first stem node of its lung
    for tube, side in ((tubes[1], 1), (tubes[2], 2)):
        firsts = np.flatnonzero((gen == 1) & (artery.lung == side) & (gen[np.maximum(parent, 0)] == 0) & has)
        if len(firsts):
            head = firsts[0]
            a_list.append(tube.points[-1:])
            b_list.append(centre[head : head + 1])
            r_list.append(np.array([min(tube.radii[-1], lumen[head])]))
    a = np.concatenate(a_list)
    b = np.concatenate(b_list)
    r = np.concatenate(r_list)
    return a, b, r, 0.2 * r + 0.3 * anatomy.scale


__all__ = ["bronchial_segments", "Tube"]
