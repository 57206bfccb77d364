"""Ground truth of a phantom, computed from the generator's own graph and the rendered maps.

Graph counts (length, bifurcations, endpoints) describe exactly the drawn capsules inside the
scan's field of view; volumes are voxel counts of the label map (so they match the maps).
Definitions: a bifurcation is a node with two or more children (a trifurcation counts once);
an endpoint is a node of degree 1 (every leaf, plus the root when it has a single child: the
right-ventricular end of the pulmonary trunk; the vein tree's root is the left-atrial confluence
of the four pulmonary veins, a bifurcation). "Intrapulmonary" means inside the lung mask
(the analytic lung the mask samples): lengths are the part of each edge inside it, nodes count
when they lie inside it, volumes count label voxels inside the mask.
"""

from __future__ import annotations

import numpy as np

from hipas_core.conventions import ARTERY, DISEASE_FLAGS, TREES, VEIN
from hipas_core.phantom.rasterize import sample_segments
from hipas_core.phantom.spec import PHANTOM_VERSION
from hipas_core.phantom.vessels import VesselTree

TREE_NAMES = {value: name for name, value in TREES.items()}
SAMPLE_MM = 0.25


def _in_fov(points: np.ndarray, grid) -> np.ndarray:
    lo = np.array([grid.z[0] - grid.thickness / 2, grid.y[0], grid.x[0]])
    hi = np.array([grid.z[-1] + grid.thickness / 2, grid.y[-1], grid.x[-1]])
    return np.all((points >= lo) & (points <= hi), axis=1)


def tree_truth(tree: VesselTree, anatomy, grid, labels: np.ndarray, lungs: np.ndarray) -> dict:
    """Per-tree truth (see the module docstring)."""
    a, b, r, child = tree.edges()
    length = np.linalg.norm(b - a, axis=1)
    pts, rep, piece = sample_segments(a, b, SAMPLE_MM)
    fov = _in_fov(pts, grid)
    inlung = anatomy.lung_side_points(pts) > 0
    nc = tree.n_children
    degree = nc + (tree.parent >= 0)
    node_fov = _in_fov(tree.pos, grid)
    node_lung = anatomy.lung_side_points(tree.pos) > 0
    bif = (nc >= 2) & node_fov
    ends = (degree == 1) & node_fov
    voxel = labels == tree.kind
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    level = tree.level[child]
    by_level = {str(lv): round(float(piece[fov & (level[rep] == lv)].sum()), 3) for lv in (1, 2, 3, 4)}
    branch_heads = (degree != 2) | (tree.parent < 0)
    return {
        "centerline_length_mm": round(float(piece[fov].sum()), 3),
        "bifurcations": int(bif.sum()),
        "endpoints": int(ends.sum()),
        "volume_ml": round(float(voxel.sum()) * voxel_ml, 4),
        "intrapulmonary_centerline_length_mm": round(float(piece[fov & inlung].sum()), 3),
        "intrapulmonary_bifurcations": int((bif & node_lung).sum()),
        "intrapulmonary_endpoints": int((ends & node_lung).sum()),
        "intrapulmonary_volume_ml": round(float((voxel & (lungs > 0)).sum()) * voxel_ml, 4),
        "graph_volume_ml": round(float((np.pi * r**2 * length).sum()) / 1000.0, 4),
        "centerline_length_mm_by_level": by_level,
        "branches": int(nc[branch_heads].sum()),
        "nodes": len(tree.pos),
        "max_generation": int(tree.generation.max()),
        "trunk_radius_mm": round(float(r.max()), 3),
        "min_radius_mm": round(float(r.min()), 3),
    }


def phantom_truth(spec, anatomy, trees, grid, rendered) -> dict:
    """The whole truth.json content."""
    voxel_ml = grid.voxel_ml
    out = {TREE_NAMES[k]: tree_truth(trees[k], anatomy, grid, rendered.labels, rendered.lungs) for k in (ARTERY, VEIN)}
    lung_total = float((rendered.lungs > 0).sum()) * voxel_ml
    vessels_in_lung = float(((rendered.labels > 0) & (rendered.lungs > 0)).sum()) * voxel_ml
    spec_dict = spec.as_dict()
    out.update({
        "lung_total_ml": round(lung_total, 3),
        "lung_volume_ml": round(lung_total - vessels_in_lung, 3),
        "spec": spec_dict,
        "phantom_version": PHANTOM_VERSION,
        "demographics": {k: spec_dict[k] for k in ("sex", "age", "height_cm", *DISEASE_FLAGS)},
        "grid": {"shape_zyx": list(grid.shape), "spacing_zyx_mm": [round(v, 6) for v in grid.spacing],
                 "sub_slices": grid.sub},
        "anatomy_scale": round(float(anatomy.scale), 5),
        "definitions": {
            "bifurcation": "generator graph node with >= 2 children (a trifurcation counts once)",
            "endpoint": "graph node of degree 1 (leaves, and the trunk root at the right ventricle)",
            "intrapulmonary": "inside the lung mask (lungs.nii.gz)",
            "levels": "1 mediastinal (paper level 0), 2 generations 1-2, 3 generations 3-5, 4 the rest",
            "volume_ml": "voxel count of the label map x voxel volume",
            "branches": "vessel segments between bifurcations, endpoints and the root",
            "graph_volume_ml": "sum of pi r^2 L over the drawn edges (overlaps at joints counted twice)",
            "centerline_length_mm_by_level": "graph centreline length per level value 1..4",
        },
    })
    return out
