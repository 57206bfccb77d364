"""Phantom training and evaluation sets: which phantoms (``phantom_plan``, ``parse_seeds``), a
phantom as a cached training case (``phantom_case``) and as NIfTI files for evaluation
(``phantom_scan_folder``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from hipas_core.conventions import DEMO_VESSELNESS_SIGMAS_MM
from hipas_core.phantom.spec import PHANTOM_VERSION
from hipas_core.sts.data import TrainingCase, file_digest, loaded_i2sr_model, prepare_case

__all__ = ["parse_seeds", "phantom_case", "phantom_plan", "phantom_scan_folder"]


def phantom_case(
    seed: int,
    *,
    protocol: str,
    slice_thickness_mm: float | None = None,
    size: str = "small",
    cache_dir: str | os.PathLike | None = None,
    vesselness_sigmas_mm: Sequence[float] = DEMO_VESSELNESS_SIGMAS_MM,
    i2sr_model: str | os.PathLike | None = None,
) -> TrainingCase:
    """A phantom (``hipas_core.phantom``; ``size`` "small", the reduced chest, or "full", an
    adult chest on a 512 matrix) as a training case, cached under ``cache_dir``.

    ``i2sr_model``: an I2SR checkpoint that thick slices (> 2 mm) go through, as ``hipas segment``
    normalizes them; the cache name then carries the first 8 hex digits of its SHA-256
    (``-i2sr<digest>``), so cases prepared through different models never mix. The name also
    carries the phantom generator's version (``-p<PHANTOM_VERSION>``): a cache of an earlier
    generator is never read as this one's phantom, and ``-h`` that the case was noise-harmonized
    (``hipas_core.noise``; caches from before the harmonization lack it)."""
    from hipas_core.conventions import I2SR_THICKNESS_MM, needs_super_resolution

    sigmas_tag = "-".join(f"{s:g}" for s in vesselness_sigmas_mm)
    thickness_tag = "seed" if slice_thickness_mm is None else f"{slice_thickness_mm:g}"
    size_tag = "" if size == "small" else f"{size}-"  # small names as before: existing caches stay valid
    # -nn: nearest-neighbour targets; -h: noise-harmonized as hipas segment does it
    name = (f"phantom-{size_tag}{seed}-{protocol}-{thickness_tag}mm-v{sigmas_tag}-nn"
            f"-p{PHANTOM_VERSION}-h")
    use_i2sr = (i2sr_model is not None and slice_thickness_mm is not None
                and needs_super_resolution(slice_thickness_mm, I2SR_THICKNESS_MM))
    if use_i2sr:
        name += f"-i2sr{file_digest(str(i2sr_model))[:8]}"
    cached = Path(cache_dir) / f"{name}.npz" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return TrainingCase.load(cached)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            cached.unlink()
    from hipas_core.phantom import PhantomSpec, generate_phantom

    spec = PhantomSpec.from_seed(seed, size=size, protocol=protocol, slice_thickness_mm=slice_thickness_mm)
    phantom = generate_phantom(spec)
    case = prepare_case(
        phantom.ct, phantom.labels, phantom.levels, phantom.lungs, name=name,
        vesselness_sigmas_mm=vesselness_sigmas_mm,
        meta={"seed": seed, "size": size, "protocol": protocol, "slice_thickness_mm": spec.slice_thickness_mm,
              "kernel": spec.kernel, "phantom_version": PHANTOM_VERSION},
        i2sr_model=loaded_i2sr_model(str(i2sr_model)) if use_i2sr else None,
    )
    if cached is not None:
        case.save(cached)
    return case


def phantom_plan(seeds: Sequence[int]) -> list[tuple[int, str, float | None]]:
    """(seed, protocol, slice thickness) for a list of phantom seeds: odd seeds NCCT, even CTPA;
    the first half keep the seed's thin slices (0.8-1.25 mm), the second half get thick slices
    (3.0 mm when the seed is a multiple of 3, else 2.5 mm)."""
    plan = []
    for position, seed in enumerate(seeds):
        protocol = "ncct" if seed % 2 else "ctpa"
        thick = position >= len(seeds) / 2
        plan.append((int(seed), protocol, (3.0 if seed % 3 == 0 else 2.5) if thick else None))
    return plan


def phantom_scan_folder(
    seed: int, *, protocol: str, slice_thickness_mm: float | None, work: str | os.PathLike
) -> Path:
    """``work/phantom-<seed>-p<PHANTOM_VERSION>``, holding the small phantom's NIfTI files (ct,
    labels, levels, lungs, truth.json); written on first use, reused afterwards (for evaluation
    scans; the generator's version in the name keeps an earlier generator's scans apart)."""
    folder = Path(work) / f"phantom-{seed}-p{PHANTOM_VERSION}"
    if not (folder / "ct.nii.gz").is_file():
        from hipas_core.phantom import PhantomSpec, generate_phantom

        spec = PhantomSpec.from_seed(seed, size="small", protocol=protocol, slice_thickness_mm=slice_thickness_mm)
        generate_phantom(spec).write(folder)
    return folder


def parse_seeds(text: str) -> list[int]:
    """``"1-12"``, ``"1,2,5"`` or ``"1-4,9"`` -> list of ints."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    return seeds
