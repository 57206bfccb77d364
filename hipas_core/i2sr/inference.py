"""I2SR inference: thick-slice CT to 1 mm slices, tiled so memory stays bounded.

The volume is cut into z slabs and in-plane tiles with a halo larger than the receptive field,
so tiled inference equals whole-volume inference. Inside the network CT is windowed
(``window_ct``); the residual is added (times ``HU_RANGE``) to the linearly interpolated HU, so
values outside the window (bone, air padding) pass through as linear interpolation. Progress
(``hipas_core.progress``): a bar on a terminal, else ``I2SR: tiles k/N (s)`` lines.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch

from hipas_core.conventions import META_SLICE_THICKNESS
from hipas_core.i2sr.network import HU_RANGE, I2SRNet, window_ct
from hipas_core.progress import Progress


def output_positions(depth: int, spacing_mm: float, target_mm: float = 1.0) -> np.ndarray:
    """Fractional input-slice indices (1D float64) of the output slices ``target_mm`` apart from
    the first of ``depth`` input slices ``spacing_mm`` apart, up to the last input slice."""
    count = int(math.floor((depth - 1) * spacing_mm / target_mm + 1e-6)) + 1
    return np.arange(count) * (target_mm / spacing_mm)


@torch.no_grad()
def super_resolve_array(
    hu: np.ndarray,
    spacing_z_mm: float,
    *,
    model: I2SRNet,
    device: str = "cpu",
    slab_slices: int = 24,
    tile_voxels: int = 160,
    progress: str | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """Super-resolve a (z, y, x) HU array with slices ``spacing_z_mm`` apart; float32 HU
    (len(positions), y, x).

    ``positions``: fractional input-slice indices of the output slices, ascending, within
    [0, z - 1] (default ``output_positions``: 1 mm apart from input slice 0, same in-plane grid).
    Processed in z slabs of ``slab_slices`` input slices and in-plane tiles of ``tile_voxels``
    with halos (float16 autocast on CUDA, float32 on CPU). ``progress``: ``hipas_core.progress``
    mode of the tile count (default: bar on a terminal, else log lines; ``"off"``).
    """
    model = model.to(device).eval()
    if positions is None:
        positions = output_positions(hu.shape[0], spacing_z_mm, model.config.target_spacing_mm)
    depth, height, width = hu.shape
    halo_z, halo_xy = model.halo(spacing_z_mm)
    out = np.empty((len(positions), height, width), np.float32)
    windowed = window_ct(hu)
    per_slab = math.ceil(height / tile_voxels) * math.ceil(width / tile_voxels)
    tiles = Progress("I2SR", total=math.ceil(depth / slab_slices) * per_slab, unit="tiles", mode=progress)
    for c0 in range(0, depth, slab_slices):
        c1 = min(depth, c0 + slab_slices)
        a0, b0 = max(0, c0 - halo_z), min(depth, c1 + halo_z)
        last = c1 == depth
        core = np.nonzero((positions >= c0) & ((positions < c1) | (last & (positions <= depth - 1))))[0]
        if core.size == 0:
            tiles.update(per_slab)  # no output slice lies in this slab
            continue
        span = np.nonzero((positions >= a0) & (positions <= b0 - 1))[0]
        local = torch.from_numpy(positions[span] - a0)
        keep = slice(core[0] - span[0], core[-1] - span[0] + 1)
        for y0 in range(0, height, tile_voxels):
            for x0 in range(0, width, tile_voxels):
                y1, x1 = min(height, y0 + tile_voxels), min(width, x0 + tile_voxels)
                ya, yb = max(0, y0 - halo_xy), min(height, y1 + halo_xy)
                xa, xb = max(0, x0 - halo_xy), min(width, x1 + halo_xy)
                block = torch.from_numpy(np.ascontiguousarray(windowed[a0:b0, ya:yb, xa:xb]))[None, None].to(device)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=block.is_cuda):
                    residual = model.residual(block, local)[0, 0, keep, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
                out[core[0] : core[-1] + 1, y0:y1, x0:x1] = residual.float().cpu().numpy() * HU_RANGE
                tiles.update(1)
    tiles.close()
    for j, position in enumerate(positions):  # plus linear interpolation of the HU, slice by slice
        lower = min(int(math.floor(position)), depth - 1)
        upper, weight = min(lower + 1, depth - 1), float(position - lower)
        out[j] += hu[lower] * (1.0 - weight) + hu[upper] * weight
    return out


def super_resolve(image: sitk.Image, *, model: I2SRNet, device: str = "cpu", progress: str | None = None) -> sitk.Image:
    """I2SR of a thick-slice CT (HU) to slices ``model.config.target_spacing_mm`` (1 mm) apart.

    Same in-plane grid, origin (first slice centre) and direction; float32 HU. The last output
    slice is the last one within the input's first-to-last slice span. ``progress`` as for
    ``super_resolve_array``.
    """
    hu = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()
    result = super_resolve_array(hu.astype(np.float32, copy=False), spacing[2], model=model, device=device,
                                 progress=progress)
    out = sitk.GetImageFromArray(result)
    out.SetSpacing((spacing[0], spacing[1], model.config.target_spacing_mm))
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    out.SetMetaData(META_SLICE_THICKNESS, f"{model.config.target_spacing_mm:g}")
    return out
