"""Synthetic chest-CT phantoms with exact artery/vein ground truth.

    from hipas_core.phantom import PhantomSpec, generate_phantom
    spec = PhantomSpec.from_seed(7, size="small", protocol="ctpa", sex="F", copd=1)
    ph = generate_phantom(spec)       # ph.ct, ph.labels, ph.levels, ph.lungs (SimpleITK), ph.truth
    ph.write("out/case7", png=True)  # ct.nii.gz (int16 HU), labels, levels, lungs, truth.json

Modules: ``generate`` (one phantom, end to end), ``spec`` (what a phantom is), ``body_size``
(chest size from demographics), ``anatomy`` (analytic chest), ``vessels`` (the two vessel trees;
steps in ``vessel_growth``, ``vessel_cleanup``, ``vessel_radii``, ``vessel_collisions``),
``airways`` (bronchi beside the arteries), ``rasterize`` (capsules to voxels), ``acquisition``
(grid, intensities, slice profile, noise), ``truth`` (ground truth), ``cohort`` (demo cohorts).
Images use LPS with an identity direction; arrays are (z, y, x).
"""

from __future__ import annotations

from hipas_core.conventions import DISEASE_FLAGS
from hipas_core.phantom.generate import Phantom, generate_phantom
from hipas_core.phantom.spec import PhantomSpec

__all__ = ["DISEASE_FLAGS", "Phantom", "PhantomSpec", "generate_phantom"]
