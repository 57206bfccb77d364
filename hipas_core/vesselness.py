"""Vessel enhancement O_eps(Y) of the paper (eq. 12): a multi-scale Frangi vesselness filter.

One torch implementation for CPU and CUDA. Vessels in the lungs are bright tubes on a dark
background, so the filter responds where the two largest-magnitude Hessian eigenvalues are
negative and of similar size and the third is small (Frangi et al., MICCAI 1998).

Definitions (all in mm, arrays in (z, y, x) order):
- Gaussian derivatives by separable 1D convolutions with sampled Gaussian-derivative kernels,
  sigma converted per axis (``sigma_mm / spacing``), kernel radius ``int(4 * sigma_vox + 0.5)``,
  borders mirrored (``d c b a | a b c d``, scipy's ``reflect`` mode). Derivatives are taken in mm
  and the Hessian is scale-normalised by ``sigma_mm ** 2``.
- Eigenvalues of the 3x3 symmetric Hessian in closed form (trigonometric method), computed in
  float32, sorted by magnitude ``|l1| <= |l2| <= |l3|``.
- ``V = (1 - exp(-Ra^2 / 2 alpha^2)) * exp(-Rb^2 / 2 beta^2) * (1 - exp(-S^2 / 2 gamma^2))``
  with ``Ra = |l2|/|l3|``, ``Rb = |l1|/sqrt(|l2 l3|)``, ``S = sqrt(l1^2 + l2^2 + l3^2)``, and
  ``V = 0`` unless ``l2 < 0`` and ``l3 < 0``; maximum over scales.
- Normalisation is FIXED, never per volume: ``gamma`` is a constant in windowed-intensity units
  (input is CT windowed to [-1000, 600] HU and mapped to [0, 1]), and the response is divided by
  ``1 - exp(-1 / 2 alpha^2)`` (the plate factor of an ideal tube, Ra = 1) and clipped to [0, 1].
  An ideal high-contrast tube therefore scores about 1, and the value at a voxel depends only on
  its neighbourhood: a crop gives the same values as the whole volume except within a kernel
  radius of the crop's border. This is what sliding-window inference needs.
- Large volumes are processed in z-slabs with a halo of one kernel radius, so the result does not
  depend on the slab size and memory stays bounded (scales are processed one after another).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_SIGMAS_MM: tuple[float, ...] = (0.6, 1.0, 1.6, 2.5)
"""Scales (Gaussian sigma, mm) for vessels of radius about 0.5-4 mm."""

DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 0.5
DEFAULT_GAMMA = 0.05
"""Structureness scale in windowed-intensity units: a scale-normalised Hessian norm S of 0.05
(a low-contrast small vessel) gives a structureness factor of 0.39; S >= 0.12 saturates."""

TRUNCATE = 4.0
_DEFAULT_CHUNK_VOXELS = 8_000_000


def vesselness(
    volume,
    *,
    spacing: Sequence[float],
    sigmas_mm: Sequence[float] = DEFAULT_SIGMAS_MM,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    gamma: float = DEFAULT_GAMMA,
    device: str | torch.device | None = None,
    chunk_voxels: int = _DEFAULT_CHUNK_VOXELS,
):
    """Multi-scale Frangi vesselness of bright tubes, float32 in [0, 1].

    ``volume``: numpy array (z, y, x), or torch tensor (..., z, y, x) (leading dimensions are a
    batch), holding CT windowed to [0, 1]. ``spacing``: (z, y, x) in mm. ``sigmas_mm``: Gaussian
    scales in mm. ``device``: where to compute (default: the tensor's device, CPU for numpy).
    Returns the same type and shape as ``volume``: a numpy float32 array, or a float32 tensor on
    the input tensor's device. The input is not modified.
    """
    spacing = _check_spacing(spacing)
    sigmas = tuple(float(s) for s in sigmas_mm)
    if not sigmas or min(sigmas) <= 0:
        raise ValueError(f"sigmas_mm must be positive, got {sigmas_mm!r}")
    is_numpy = isinstance(volume, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(volume)) if is_numpy else volume
    if tensor.ndim < 3:
        raise ValueError(
            f"volume must have at least 3 dimensions (z, y, x), got shape {tuple(tensor.shape)}"
        )
    compute_device = torch.device(device) if device is not None else tensor.device
    batch = tensor.reshape(-1, *tensor.shape[-3:])
    out = torch.empty(batch.shape, dtype=torch.float32, device=compute_device)
    with torch.no_grad():
        for index in range(batch.shape[0]):
            vol = batch[index].to(device=compute_device, dtype=torch.float32)
            out[index] = _vesselness_3d(
                vol, spacing, sigmas, alpha=alpha, beta=beta, gamma=gamma, chunk_voxels=chunk_voxels
            )
    out = out.reshape(tensor.shape)
    if is_numpy:
        return out.cpu().numpy()
    return out.to(tensor.device)


def hessian_eigenvalues(volume, *, spacing: Sequence[float], sigma_mm: float) -> np.ndarray:
    """Eigenvalues of the scale-normalised Hessian at one scale, sorted by magnitude.

    ``volume``: numpy (z, y, x). Returns float32 (3, z, y, x) with ``|l1| <= |l2| <= |l3|``
    (units: intensity, since the Hessian in mm^-2 is multiplied by ``sigma_mm ** 2``).
    """
    spacing = _check_spacing(spacing)
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    with torch.no_grad():
        hessian = _hessian(vol, spacing, float(sigma_mm))
        eig = _sorted_by_magnitude(_symmetric_eigenvalues(*hessian))
    return eig.numpy()


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def _vesselness_3d(vol, spacing, sigmas, *, alpha, beta, gamma, chunk_voxels):
    depth, rows, cols = vol.shape
    slab = max(1, chunk_voxels // max(1, rows * cols))
    best = torch.zeros_like(vol)
    ideal_tube = 1.0 - math.exp(-1.0 / (2.0 * alpha**2))
    for sigma in sigmas:
        radius_z = _radius(sigma / spacing[0])
        for z0 in range(0, depth, slab):
            z1 = min(depth, z0 + slab)
            rows_idx = _reflect_indices(z0 - radius_z, z1 + radius_z, depth, vol.device)
            hessian = _hessian(vol.index_select(0, rows_idx), spacing, sigma, valid_z=True)
            eig = _sorted_by_magnitude(_symmetric_eigenvalues(*hessian))
            del hessian
            response = _frangi(eig, alpha=alpha, beta=beta, gamma=gamma) / ideal_tube
            torch.maximum(best[z0:z1], response, out=best[z0:z1])
    return best.clamp_(0.0, 1.0)


def _radius(sigma_vox: float) -> int:
    return max(1, int(TRUNCATE * sigma_vox + 0.5))


def _gaussian_kernels(sigma_vox: float, spacing_mm: float, device) -> list[torch.Tensor]:
    """Sampled Gaussian and its first and second derivatives (per mm), as correlation weights."""
    radius = _radius(sigma_vox)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x**2 / sigma_vox**2)
    phi /= phi.sum()
    s2 = sigma_vox**2
    kernels = [phi, -x / s2 * phi, (x**2 / s2**2 - 1.0 / s2) * phi]
    # correlation with the mirrored kernel = convolution; per-voxel derivatives -> per mm
    return [
        torch.tensor(k[::-1] / spacing_mm**order, dtype=torch.float32, device=device)
        for order, k in enumerate(kernels)
    ]


def _reflect_indices(start: int, stop: int, size: int, device) -> torch.Tensor:
    """Indices start..stop-1 folded into [0, size) by mirroring (d c b a | a b c d | d c b a)."""
    idx = torch.arange(start, stop, device=device) % (2 * size)
    return torch.where(idx >= size, 2 * size - 1 - idx, idx)


def _correlate_shifted(vol: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """'valid' correlation along axis 0 or 1 by shifted adds (fast for leading axes)."""
    values = weights.tolist()  # python floats: add_(alpha=) fuses multiply and add
    length = vol.shape[axis] - len(values) + 1
    out = vol.narrow(axis, 0, length) * values[0]
    for tap, value in enumerate(values[1:], start=1):
        out.add_(vol.narrow(axis, tap, length), alpha=value)
    return out


def _correlate_last(vol: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """'valid' correlation along the last axis with conv1d."""
    shape = vol.shape
    out = F.conv1d(vol.reshape(-1, 1, shape[-1]), weights.view(1, 1, -1))
    return out.reshape(*shape[:-1], out.shape[-1])


def _hessian(vol: torch.Tensor, spacing, sigma_mm: float, *, valid_z: bool = False):
    """Six components (zz, yy, xx, zy, zx, yx) of the sigma^2-normalised Hessian in mm.

    With ``valid_z`` the input already carries a halo of one kernel radius in z, and the output
    is shorter by two radii in z; otherwise z is mirrored like y and x.
    """
    device = vol.device
    kz, ky, kx = (_gaussian_kernels(sigma_mm / s, s, device) for s in spacing)
    if not valid_z:
        rz = (kz[0].shape[0] - 1) // 2
        vol = vol.index_select(0, _reflect_indices(-rz, vol.shape[0] + rz, vol.shape[0], device))
    ry = (ky[0].shape[0] - 1) // 2
    rx = (kx[0].shape[0] - 1) // 2
    rows = vol.shape[1]
    cols = vol.shape[2]
    pad_y = _reflect_indices(-ry, rows + ry, rows, device)
    pad_x = _reflect_indices(-rx, cols + rx, cols, device)

    def along_y(v, orders):
        padded = v.index_select(1, pad_y)
        return [_correlate_shifted(padded, ky[o], 1) for o in orders]

    def along_x(v, order):
        return _correlate_last(v.index_select(2, pad_x), kx[order])

    z_derivs = [_correlate_shifted(vol, kz[o], 0) for o in range(3)]
    z0y0, z0y1, z0y2 = along_y(z_derivs[0], (0, 1, 2))
    z1y0, z1y1 = along_y(z_derivs[1], (0, 1))
    (z2y0,) = along_y(z_derivs[2], (0,))
    del z_derivs
    scale = sigma_mm**2
    hzz = along_x(z2y0, 0).mul_(scale)
    hyy = along_x(z0y2, 0).mul_(scale)
    hxx = along_x(z0y0, 2).mul_(scale)
    hzy = along_x(z1y1, 0).mul_(scale)
    hzx = along_x(z1y0, 1).mul_(scale)
    hyx = along_x(z0y1, 1).mul_(scale)
    return hzz, hyy, hxx, hzy, hzx, hyx


def _symmetric_eigenvalues(a00, a11, a22, a01, a02, a12) -> torch.Tensor:
    """Eigenvalues of symmetric 3x3 matrices, closed form; returns (3, ...) in descending order."""
    q = (a00 + a11 + a22) / 3.0
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    off = a01 * a01 + a02 * a02 + a12 * a12
    p = torch.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off) / 6.0)
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    # det((A - qI) / p) / 2, clamped against rounding
    det = (
        b00 * (b11 * b22 - a12 * a12)
        - a01 * (a01 * b22 - a12 * a02)
        + a02 * (a01 * a12 - b11 * a02)
    )
    r = (det / (2.0 * safe_p**3)).clamp_(-1.0, 1.0)
    phi = torch.acos(r) / 3.0
    largest = q + 2.0 * p * torch.cos(phi)
    smallest = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)
    middle = 3.0 * q - largest - smallest
    return torch.stack((largest, middle, smallest))


def _sorted_by_magnitude(eig: torch.Tensor) -> torch.Tensor:
    order = eig.abs().argsort(dim=0)
    return eig.gather(0, order)


def _frangi(eig: torch.Tensor, *, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    l1, l2, l3 = eig[0], eig[1], eig[2]
    tiny = torch.finfo(eig.dtype).tiny
    abs2 = l2.abs().clamp_min(tiny)
    abs3 = l3.abs().clamp_min(tiny)
    ra2 = (abs2 / abs3) ** 2
    rb2 = l1 * l1 / (abs2 * abs3)
    s2 = l1 * l1 + l2 * l2 + l3 * l3
    response = (
        (1.0 - torch.exp(-ra2 / (2.0 * alpha**2)))
        * torch.exp(-rb2 / (2.0 * beta**2))
        * (1.0 - torch.exp(-s2 / (2.0 * gamma**2)))
    )
    bright_tube = (l2 < 0) & (l3 < 0)
    return torch.where(bright_tube, response, torch.zeros_like(response))
