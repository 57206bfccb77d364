"""I2SR training and evaluation data: thick slices from thin ones, noise, synthetic and phantom volumes.

Two sources of (thick input, 1 mm target) pairs, arrays (z, y, x) in HU:

* simulated: a 1 mm volume (``synthetic_vessel_volume``, or a 1 mm phantom) made thick by
  box slice-profile averaging (``simulate_thick``), with Poisson-law noise for training;
* acquired (``phantom_pairs``): the phantom generator images one anatomy twice, at 1 mm (the
  target, at ``TARGET_DOSE_MGY``, the least noisy it makes) and at the thick slice thickness with
  the seed's own dose: its slice profile (mean of 1 mm sub-slices), in-plane point-spread function
  and correlated noise (``hipas_core.phantom.acquisition``), as a thick scan is acquired. Both
  grids share the in-plane grid and the z centre, not the first slice: thin slice j lies at the
  fractional thick-slice index ``PhantomPair.positions[j]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from hipas_core.i2sr.inference import output_positions
from hipas_core.i2sr.network import window_ct


def thick_slice_profile(depth: int, spacing_mm: float, thickness_mm: float | None = None) -> np.ndarray:
    """(K, depth) box-profile weights turning 1 mm slices into slices ``spacing_mm`` apart.

    Thick slice k is centred at k * spacing_mm (thin slice j covers [j - 0.5, j + 0.5] mm); each
    weight is the overlap of the two intervals, rows normalised to 1 (clipped at the ends).
    """
    thickness = spacing_mm if thickness_mm is None else thickness_mm
    count = int(math.floor((depth - 1) / spacing_mm + 1e-6)) + 1
    centres = np.arange(count) * spacing_mm
    edges = np.arange(depth)
    low = np.maximum(centres[:, None] - thickness / 2, edges[None, :] - 0.5)
    high = np.minimum(centres[:, None] + thickness / 2, edges[None, :] + 0.5)
    weights = np.clip(high - low, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def simulate_thick(thin: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Thick slices (box profile, thickness = spacing) from a (z, y, x) volume with 1 mm slices."""
    weights = thick_slice_profile(thin.shape[0], spacing_mm).astype(np.float32)
    return np.tensordot(weights, thin.astype(np.float32), axes=(1, 0))


def poisson_noise(hu: torch.Tensor, incident_counts: torch.Tensor | float, generator=None) -> torch.Tensor:
    """Poisson-law noise: counts ~ Poisson(I0 exp(-mu)), mu proportional to HU + 1000.

    A voxel-wise stand-in for projection noise (mu = 2 (HU + 1000) / 1000, water: 2); the
    lower ``incident_counts`` (I0), the noisier; about 20-40 HU SD in soft tissue at I0 = 1000.
    """
    mu = 2.0 * (hu + 1000.0).clamp(min=0) / 1000.0
    expected = incident_counts * torch.exp(-mu)
    counts = torch.poisson(expected, generator=generator).clamp(min=1.0)
    noisy_mu = -torch.log(counts / incident_counts)
    return noisy_mu * 500.0 - 1000.0


def synthetic_vessel_volume(seed: int, shape: Sequence[int] = (48, 96, 96), spacing: Sequence[float] = (1.0, 0.7, 0.7)) -> np.ndarray:
    """A (z, y, x) HU volume of lung-like background with curved, branching vessels and blobs.

    Used to train and test I2SR without the phantom generator: background -860 +- smooth
    variation, vessels 20-70 HU of radius 0.5-3.5 mm with partial-volume edges, a few nodules,
    and a soft-tissue/bone slab at one side (values outside the HU window).
    """
    rng = np.random.default_rng(seed)
    shape, spacing = tuple(int(n) for n in shape), np.asarray(spacing, dtype=np.float64)
    extent = np.array(shape) * spacing
    from scipy.ndimage import zoom as nd_zoom

    smooth = nd_zoom(rng.normal(size=(4, 4, 4)), [n / 4 for n in shape], order=3)
    hu = -860.0 + 25.0 * smooth[: shape[0], : shape[1], : shape[2]]
    vessel = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(6, 10))):
        position = rng.uniform(0.1, 0.9, 3) * extent
        heading = rng.normal(size=3)
        radius = rng.uniform(1.5, 3.5)
        stack = [(position, heading, radius)]
        while stack:
            position, heading, radius = stack.pop()
            for _ in range(int(rng.integers(3, 7))):
                heading = heading / np.linalg.norm(heading) + rng.normal(scale=0.35, size=3)
                heading /= np.linalg.norm(heading)
                end = position + heading * rng.uniform(4, 10)
                _paint_segment(vessel, spacing, position, end, radius)
                position = end
                if radius > 0.9 and rng.random() < 0.35:
                    stack.append((position, heading + rng.normal(scale=1.0, size=3), radius * 0.7))
                radius = max(0.5, radius * rng.uniform(0.85, 0.97))
    vessel_hu = rng.uniform(20, 70)
    hu = hu + vessel * (vessel_hu - hu)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    for _ in range(int(rng.integers(0, 3))):
        centre, radius = rng.uniform(0.2, 0.8, 3) * extent, rng.uniform(2, 5)
        distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        hu = hu + _sigmoid((radius - distance) / 0.35) * (rng.uniform(-50, 400) - hu)
    wall = yy > extent[1] * rng.uniform(0.8, 0.95)
    hu[wall] = rng.uniform(-100, 80)
    hu[wall & (np.sin(zz / 6.0 + xx / 9.0) > 0.6)] = rng.uniform(500, 1100)
    return hu.astype(np.float32)


def _paint_segment(volume: np.ndarray, spacing: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> None:
    """Max-composite a soft-edged capsule (mm coordinates) into ``volume`` within its bounding box."""
    margin = radius + 1.5
    low = np.maximum(np.floor((np.minimum(start, end) - margin) / spacing).astype(int), 0)
    high = np.minimum(np.ceil((np.maximum(start, end) + margin) / spacing).astype(int) + 1, volume.shape)
    if np.any(high <= low):
        return
    grids = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(low, high, spacing, strict=True)], indexing="ij")
    points = np.stack(grids, axis=-1)
    direction = end - start
    t = np.clip(((points - start) @ direction) / (direction @ direction), 0, 1)
    distance = np.linalg.norm(points - (start + t[..., None] * direction), axis=-1)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    volume[box] = np.maximum(volume[box], _sigmoid((radius - distance) / 0.3))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def make_training_pair(
    thin_hu: np.ndarray, spacing_mm: float, rng: np.random.Generator, *, depth: int, size: int,
    noise: bool = True, counts_range: tuple[float, float] = (2000.0, 50000.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(thick windowed (1, K, size, size), positions, ground truth windowed (1, n, size, size)).

    With ``noise``, Poisson-law noise with incident counts log-uniform in ``counts_range``.
    """
    corner = [int(rng.integers(0, n - m + 1)) for n, m in zip(thin_hu.shape, (depth, size, size), strict=True)]
    crop = thin_hu[corner[0] : corner[0] + depth, corner[1] : corner[1] + size, corner[2] : corner[2] + size]
    thick = torch.from_numpy(simulate_thick(crop, spacing_mm))
    if noise:
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        counts = float(np.exp(rng.uniform(np.log(counts_range[0]), np.log(counts_range[1]))))
        thick = poisson_noise(thick, counts, generator)
    positions = torch.from_numpy(output_positions(thick.shape[0], spacing_mm))
    truth = torch.from_numpy(np.ascontiguousarray(crop[: len(positions)]))
    return window_ct(thick)[None], positions, window_ct(truth)[None]


def phantom_volumes(seeds: Sequence[int], *, crop: tuple[int, int, int] = (48, 112, 112)) -> tuple[list, list]:
    """Central crops (z, y, x) of 1 mm small NCCT phantoms: (HU volumes, artery/vein label maps)."""
    from hipas_core.phantom import PhantomSpec, generate_phantom

    volumes, labels = [], []
    for seed in seeds:
        phantom = generate_phantom(PhantomSpec.from_seed(seed, size="small", protocol="ncct", slice_thickness_mm=1.0))
        hu = sitk.GetArrayFromImage(phantom.ct).astype(np.float32)
        lab = sitk.GetArrayFromImage(phantom.labels)
        box = tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + c) for n, c in zip(hu.shape, crop, strict=True))
        volumes.append(np.ascontiguousarray(hu[box]))
        labels.append(np.ascontiguousarray(lab[box]))
    return volumes, labels


TARGET_DOSE_MGY = 20.0  # the generator's highest dose: the least noisy 1 mm target it can image
_PAIR_CACHE_VERSION = 1  # bump when what a cached pair holds changes


@dataclass(frozen=True)
class PhantomPair:
    """One phantom anatomy acquired at 1 mm and with thick slices, on the same in-plane grid.

    ``thin`` (Z, Y, X) int16 HU, 1 mm slices (the target); ``labels`` (Z, Y, X) uint8 artery/vein
    of the thin grid; ``thick`` (K, Y, X) int16 HU, slices ``thickness_mm`` apart, as the
    generator acquires them. Thin slice j lies at fractional thick-slice index
    ``first_position + j / thickness_mm``; only thin slices within [0, K - 1] are kept. Both
    share the in-plane voxel size ``inplane_spacing_mm`` (mm, y and x).
    """

    seed: int
    protocol: str
    thickness_mm: float
    inplane_spacing_mm: float
    thin: np.ndarray
    thick: np.ndarray
    labels: np.ndarray
    first_position: float

    @property
    def positions(self) -> np.ndarray:
        """Fractional thick-slice index of each thin slice (1D float64, ascending)."""
        return self.first_position + np.arange(self.thin.shape[0]) / self.thickness_mm


def _acquire(seed: int, protocol: str, thickness_mm: float, dose: float | None):
    from hipas_core.phantom import PhantomSpec, generate_phantom

    spec = PhantomSpec.from_seed(seed, size="small", protocol=protocol, slice_thickness_mm=thickness_mm, dose=dose)
    return generate_phantom(spec)


def _aligned_pair(seed: int, protocol: str, thin_ct: sitk.Image, thin_labels: sitk.Image,
                  thick_ct: sitk.Image) -> PhantomPair:
    """The pair of two acquisitions of one anatomy, after checking that their grids match: same
    in-plane spacing, x/y origin and direction; z offset from the slice-0 origins."""
    thickness = float(thick_ct.GetSpacing()[2])
    same_plane = (np.allclose(thin_ct.GetSpacing()[:2], thick_ct.GetSpacing()[:2], rtol=0, atol=1e-9)
                  and np.allclose(thin_ct.GetOrigin()[:2], thick_ct.GetOrigin()[:2], rtol=0, atol=1e-6)
                  and thin_ct.GetSize()[:2] == thick_ct.GetSize()[:2]
                  and np.allclose(thin_ct.GetDirection(), np.eye(3).ravel())
                  and np.allclose(thick_ct.GetDirection(), np.eye(3).ravel())
                  and abs(thin_ct.GetSpacing()[2] - 1.0) < 1e-9)
    if not same_plane:
        raise RuntimeError(f"phantom {seed} {protocol}: the 1 mm and {thickness:g} mm acquisitions are not on one grid")
    thin = sitk.GetArrayFromImage(thin_ct)
    labels = sitk.GetArrayFromImage(thin_labels)
    thick = sitk.GetArrayFromImage(thick_ct)
    positions = (thin_ct.GetOrigin()[2] + np.arange(thin.shape[0]) - thick_ct.GetOrigin()[2]) / thickness
    inside = np.flatnonzero((positions >= -1e-6) & (positions <= thick.shape[0] - 1 + 1e-6))
    keep = slice(int(inside[0]), int(inside[-1]) + 1)
    return PhantomPair(seed=seed, protocol=protocol, thickness_mm=thickness,
                       inplane_spacing_mm=float(thin_ct.GetSpacing()[0]), thin=np.ascontiguousarray(thin[keep]),
                       thick=thick, labels=np.ascontiguousarray(labels[keep]),
                       first_position=float(max(positions[inside[0]], 0.0)))


def _cache_file(cache_dir: Path, seed: int, protocol: str, thickness_mm: float, target_dose_mgy: float) -> Path:
    return cache_dir / f"pair-v{_PAIR_CACHE_VERSION}-{seed}-{protocol}-{thickness_mm:g}mm-target{target_dose_mgy:g}mGy.npz"


def _write_pair(path: Path, pair: PhantomPair) -> None:
    from hipas_core.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, thin=pair.thin, thick=pair.thick, labels=pair.labels,
                 first_position=np.float64(pair.first_position), thickness_mm=np.float64(pair.thickness_mm),
                 inplane_spacing_mm=np.float64(pair.inplane_spacing_mm))


def _read_pair(path: Path, seed: int, protocol: str) -> PhantomPair:
    with np.load(path, allow_pickle=False) as stored:
        return PhantomPair(seed=seed, protocol=protocol, thickness_mm=float(stored["thickness_mm"]),
                           inplane_spacing_mm=float(stored["inplane_spacing_mm"]),
                           thin=stored["thin"], thick=stored["thick"], labels=stored["labels"],
                           first_position=float(stored["first_position"]))


def phantom_pairs(
    cases: Sequence[tuple[int, str]],
    thicknesses_mm: Sequence[float],
    *,
    cache_dir: str | os.PathLike | None = None,
    target_dose_mgy: float = TARGET_DOSE_MGY,
) -> list[PhantomPair]:
    """Acquired pairs of small phantoms: for each (seed, protocol) of ``cases`` the 1 mm target
    (at ``target_dose_mgy``) and one thick acquisition per thickness in ``thicknesses_mm`` (the
    seed's own dose), in that order. With ``cache_dir`` each pair is stored there as ``.npz`` on
    first use and read back afterwards."""
    pairs = []
    for seed, protocol in cases:
        thin = None
        for thickness in thicknesses_mm:
            cached = _cache_file(Path(cache_dir), seed, protocol, thickness, target_dose_mgy) if cache_dir else None
            if cached is not None and cached.is_file():
                pairs.append(_read_pair(cached, seed, protocol))
                continue
            if thin is None:
                thin = _acquire(seed, protocol, 1.0, target_dose_mgy)
            thick = _acquire(seed, protocol, float(thickness), None)
            pair = _aligned_pair(seed, protocol, thin.ct, thin.labels, thick.ct)
            if cached is not None:
                _write_pair(cached, pair)
            pairs.append(pair)
    return pairs


def pair_crops(
    pair: PhantomPair, rng: np.random.Generator, *, count: int, depth: int, size: int, vessel_fraction: float = 0.5,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``count`` random training crops of ``pair`` over one z range, each (thick windowed
    (1, K, size, size), positions (n,), target windowed (1, n, size, size)): ``depth`` 1 mm target
    slices (n = depth, or fewer when the pair is shorter) and the K thick slices spanning them;
    ``positions`` are the targets' fractional indices into the thick crop, the same for every
    crop, so the crops stack into one batch (on the CPU a batch of one runs several times slower
    per crop). The z range, and each crop's in-plane place, is centred on a random vessel voxel
    with probability ``vessel_fraction``, else drawn uniformly."""
    depth, size = min(depth, pair.thin.shape[0]), min(size, *pair.thin.shape[1:])
    nz, ny, nx = pair.thin.shape
    if rng.random() < vessel_fraction and pair.labels.any():
        vessels = np.flatnonzero(pair.labels)
        centre_z = int(vessels[int(rng.integers(len(vessels)))]) // (ny * nx)
        z0 = int(np.clip(centre_z - depth // 2, 0, nz - depth))
    else:
        z0 = int(rng.integers(0, nz - depth + 1))
    positions = pair.positions[z0 : z0 + depth]
    k0 = int(math.floor(positions[0] + 1e-9))
    k1 = min(int(math.ceil(positions[-1] - 1e-9)) + 1, pair.thick.shape[0])
    slab_vessels = np.flatnonzero(pair.labels[z0 : z0 + depth])
    local = torch.from_numpy(positions - k0)
    crops = []
    for _ in range(count):
        if slab_vessels.size and rng.random() < vessel_fraction:
            _, y, x = np.unravel_index(int(slab_vessels[int(rng.integers(slab_vessels.size))]), (depth, ny, nx))
            y0, x0 = (int(np.clip(c - size // 2, 0, n - size)) for c, n in ((y, ny), (x, nx)))
        else:
            y0, x0 = int(rng.integers(0, ny - size + 1)), int(rng.integers(0, nx - size + 1))
        plane = (slice(y0, y0 + size), slice(x0, x0 + size))
        thick = torch.from_numpy(pair.thick[(slice(k0, k1), *plane)].astype(np.float32))
        truth = torch.from_numpy(pair.thin[(slice(z0, z0 + depth), *plane)].astype(np.float32))
        crops.append((window_ct(thick)[None], local, window_ct(truth)[None]))
    return crops
