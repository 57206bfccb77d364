"""I2SR evaluation: PSNR of I2SR and of linear interpolation in z against 1 mm references.

``evaluate``: held-out 1 mm volumes made thick by box slice-profile averaging (no noise).
``evaluate_pairs``: phantom pairs (``hipas_core.i2sr.data.phantom_pairs``), the generator's thick
acquisition super-resolved at the slice positions of its 1 mm acquisition of the same anatomy.
PSNR is on windowed intensities (peak 1), over all voxels and over the vessel region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hipas_core.i2sr.data import PhantomPair, simulate_thick
from hipas_core.i2sr.inference import output_positions, super_resolve_array
from hipas_core.i2sr.network import I2SRNet, interpolate_z, window_ct

PAIR_CROP = (48, 128, 128)  # (z, y, x) 1 mm target voxels evaluated, centred in each pair
PSNR_KEYS = ("psnr_i2sr", "psnr_linear", "psnr_vessels_i2sr", "psnr_vessels_linear")


def psnr(prediction: np.ndarray, truth: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of windowed intensities (peak 1) of two HU arrays of one shape, optionally
    inside the boolean ``mask``."""
    p, t = (window_ct(a) for a in (prediction, truth))
    error = (p - t) ** 2
    mse = float(error[mask].mean() if mask is not None else error.mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(
    model: I2SRNet,
    volumes: Sequence[np.ndarray],
    thicknesses: Sequence[float] = (2.5, 5.0),
    *,
    vessel_masks: Sequence[np.ndarray] | None = None,
) -> list[dict]:
    """PSNR of I2SR vs linear-in-z on held-out thin (1 mm) volumes made thick (no noise).

    PSNR is on windowed intensities (peak 1), over the whole volume and inside the vessel region:
    ``vessel_masks`` (true vessels, e.g. phantom labels) dilated by one voxel, or by default voxels
    of -300..300 HU (vessels, nodules) dilated by one voxel.
    """
    from scipy.ndimage import binary_dilation

    rows = []
    for thickness in thicknesses:
        for index, thin in enumerate(volumes):
            thick = simulate_thick(thin, thickness)
            sr = super_resolve_array(thick, thickness, model=model, progress="off")
            positions = output_positions(thick.shape[0], thickness)
            linear = interpolate_z(torch.from_numpy(thick)[None, None], torch.from_numpy(positions))[0, 0].numpy()
            truth = thin[: len(positions)]
            if vessel_masks is not None:
                vessels = binary_dilation(vessel_masks[index][: len(positions)] > 0)
            else:
                vessels = binary_dilation((truth > -300) & (truth < 300))
            rows.append({
                "thickness_mm": thickness, "volume": index,
                "psnr_i2sr": psnr(sr, truth), "psnr_linear": psnr(linear, truth),
                "psnr_vessels_i2sr": psnr(sr, truth, mask=vessels), "psnr_vessels_linear": psnr(linear, truth, mask=vessels),
            })
    return rows


def _central(shape: Sequence[int], crop: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + min(n, c)) for n, c in zip(shape, crop, strict=True))


def evaluate_pairs(model: I2SRNet, pairs: Sequence[PhantomPair], *, crop: Sequence[int] = PAIR_CROP) -> list[dict]:
    """PSNR of I2SR vs linear-in-z on phantom pairs, over the central ``crop`` (z, y, x voxels)
    of each 1 mm target: the thick acquisition (with all the context around the crop that the
    network's receptive field reaches) super-resolved at the target's slice positions.

    "Vessels": the pair's artery/vein labels dilated by one voxel. One row per pair: seed,
    protocol, thickness_mm and the ``PSNR_KEYS`` (dB).
    """
    from scipy.ndimage import binary_dilation

    rows = []
    for pair in pairs:
        box = _central(pair.thin.shape, crop)
        positions = pair.positions[box[0]]
        halo_z, halo_xy = model.halo(pair.thickness_mm)
        k0 = max(0, int(math.floor(positions[0] + 1e-9)) - halo_z)
        k1 = min(pair.thick.shape[0], int(math.ceil(positions[-1] - 1e-9)) + 1 + halo_z)
        context = [slice(max(0, s.start - halo_xy), min(n, s.stop + halo_xy))
                   for s, n in zip(box[1:], pair.thin.shape[1:], strict=True)]
        thick = pair.thick[k0:k1, context[0], context[1]].astype(np.float32)
        inner = (slice(None), *(slice(s.start - c.start, s.stop - c.start) for s, c in zip(box[1:], context, strict=True)))
        local = positions - k0
        sr = super_resolve_array(thick, pair.thickness_mm, model=model, progress="off", positions=local)[inner]
        linear = interpolate_z(torch.from_numpy(thick)[None, None], torch.from_numpy(local))[0, 0].numpy()[inner]
        truth = pair.thin[box]
        vessels = binary_dilation(pair.labels[box] > 0)
        rows.append({
            "seed": pair.seed, "protocol": pair.protocol, "thickness_mm": pair.thickness_mm,
            "psnr_i2sr": psnr(sr, truth), "psnr_linear": psnr(linear, truth),
            "psnr_vessels_i2sr": psnr(sr, truth, mask=vessels), "psnr_vessels_linear": psnr(linear, truth, mask=vessels),
        })
    return rows


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB, 3 decimals) per thickness (and protocol, where rows have one):
    ``{"2.5 mm" or "ncct 2.5 mm": {psnr key: mean}}``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("protocol", ""), row["thickness_mm"]), []).append(row)
    out: dict[str, dict[str, float]] = {}
    for (protocol, thickness), chosen in sorted(groups.items()):
        name = f"{protocol} {thickness:g} mm".strip()
        out[name] = {k: round(float(np.mean([r[k] for r in chosen])), 3) for k in PSNR_KEYS}
    return out
