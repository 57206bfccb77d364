"""Generating one phantom: anatomy, vessel trees, lesions, rendering and truth, as SimpleITK images.

``generate_phantom(spec)`` runs the parts in order (``anatomy``, ``vessels``,
``acquisition``, ``truth``) and returns a ``Phantom``; every random draw comes from a named
stream of ``spec.seed``, so a spec always yields the same phantom. Images use LPS with an
identity direction; arrays are (z, y, x).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hipas_core.phantom.spec import PhantomSpec, stream

__all__ = ["Phantom", "generate_phantom"]


@dataclass
class Phantom:
    """A generated phantom: SimpleITK images on one grid, the truth dict, the vessel graphs."""

    spec: PhantomSpec
    ct: object
    labels: object
    levels: object
    lungs: object
    truth: dict
    trees: dict = field(repr=False)

    def write(self, out_dir: str | os.PathLike, *, png: bool = False) -> dict[str, Path]:
        """Write ct.nii.gz (int16 HU), labels/levels/lungs.nii.gz (uint8), truth.json and, with
        ``png``, qc.png into ``out_dir`` (each atomically). Returns name -> path."""
        from hipas_core.atomic import write_image, write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {name: out / f"{name}.nii.gz" for name in ("ct", "labels", "levels", "lungs")}
        for name, path in paths.items():
            write_image(path, getattr(self, name))
        paths["truth"] = out / "truth.json"
        write_json(paths["truth"], self.truth)
        if png:
            from hipas_core.qc import render_qc_png

            paths["qc"] = out / "qc.png"
            s = self.spec
            render_qc_png(self.ct, self.labels, paths["qc"],
                          title=f"phantom seed {s.seed} {s.size} {s.protocol.upper()} {s.sex} {s.age:g} y")
        return paths


def _image(array: np.ndarray, grid):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    sz, sy, sx = grid.spacing
    image.SetSpacing((float(sx), float(sy), float(sz)))
    image.SetOrigin((float(grid.x[0]), float(grid.y[0]), float(grid.z[0])))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _lesions(spec: PhantomSpec, anatomy, trees) -> dict:
    """Embolus edge, calcified plaques and the nodule (deterministic for the seed)."""
    from hipas_core.conventions import ARTERY, VEIN

    rng = stream(spec.seed, "lesions")
    extras: dict = {}
    art = trees[ARTERY]
    a, b, r, child = art.edges()
    if spec.embolism:
        gen = art.generation[child]
        pick = np.flatnonzero((gen >= 2) & (gen <= 4) & (r >= 1.4 * max(anatomy.scale, 0.5)))
        if len(pick) == 0:
            pick = np.flatnonzero(gen >= 1)
        extras["embolus_edge"] = int(rng.choice(pick))
    if spec.calcification:
        aorta = [t for t in anatomy.mediastinal_tubes() if t.name == "aorta"][0]
        seg = rng.integers(0, len(aorta.radii), 8)
        t = rng.uniform(0.1, 0.9, 8)
        centre = aorta.points[seg] + t[:, None] * (aorta.points[seg + 1] - aorta.points[seg])
        direction = rng.standard_normal((8, 3))
        axis = aorta.points[seg + 1] - aorta.points[seg]
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        direction -= (direction * axis).sum(1, keepdims=True) * axis
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        extras["calcifications"] = centre + direction * aorta.radii[seg][:, None]
    if spec.nodule:
        radius = float(rng.uniform(2.5, 7.0)) * max(anatomy.scale, 0.6)
        nodes = np.concatenate([trees[ARTERY].pos, trees[VEIN].pos])
        from scipy.spatial import cKDTree

        index = cKDTree(nodes)
        lo, hi = anatomy.lung_bounds()
        for _ in range(200):
            p = rng.uniform(lo, hi)
            if anatomy.lung_side_points(p[None])[0] == 0:
                continue
            if index.query(p)[0] > radius + 4.0 and (anatomy.lung_side_points(
                    p[None] + np.eye(3) * (radius + 2.0)) > 0).all():
                extras["nodule"] = (p, radius)
                break
    return extras


def generate_phantom(spec: PhantomSpec) -> Phantom:
    """Generate the phantom ``spec`` describes (deterministic; no output, no files)."""
    from hipas_core.phantom.acquisition import acquisition_grid, render
    from hipas_core.phantom.anatomy import Anatomy
    from hipas_core.phantom.truth import phantom_truth
    from hipas_core.phantom.vessels import grow_vessel_trees

    spec.validate()
    anatomy = Anatomy.from_spec(spec)
    trees = grow_vessel_trees(anatomy, spec)
    grid = acquisition_grid(spec, anatomy)
    extras = _lesions(spec, anatomy, trees)
    rendered = render(spec, anatomy, trees, grid, extras)
    truth = phantom_truth(spec, anatomy, trees, grid, rendered)
    return Phantom(
        spec=spec, ct=_image(rendered.ct, grid), labels=_image(rendered.labels, grid),
        levels=_image(rendered.levels, grid), lungs=_image(rendered.lungs, grid), truth=truth, trees=trees,
    )
