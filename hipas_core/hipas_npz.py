"""The public HiPaS dataset layout: ``ct_scan/NNN.npz`` (key ``data``, array stored as [x, y, z]),
``annotation/artery/NNN.npz`` and ``annotation/vein/NNN.npz``, with the spacing from an optional
metadata table (columns in ``hipas_core.io``'s module docstring; without one the standardized
grid's spacing is assumed and a warning printed). ``hipas_core.io`` reads scans and labels
through these functions.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hipas_core.conventions import META_SPACING_ASSUMED, META_SPACING_SOURCE, STANDARD_SPACING
from hipas_core.errors import InvalidInputError, InvalidScanError

__all__ = ["load_npz_zyx", "npz_spacing", "read_hipas_npz"]



def load_npz_zyx(path: Path) -> np.ndarray:
    """The ``data`` array of a HiPaS NPZ, transposed from [x, y, z] to (z, y, x)."""
    if not path.is_file():
        raise InvalidScanError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "data" not in archive.files:
                raise InvalidScanError(f"{path}: no 'data' array (keys: {', '.join(archive.files) or 'none'})")
            data = archive["data"]
    except InvalidScanError:
        raise
    except Exception as error:  # noqa: BLE001 - zip/format errors of every kind mean unreadable
        raise InvalidScanError(f"{path}: unreadable NPZ ({type(error).__name__})") from None
    if data.ndim != 3:
        raise InvalidScanError(f"{path}: {data.ndim}D array, a CT volume must be 3D")
    if data.dtype.kind not in "iufb":
        raise InvalidScanError(f"{path}: array of {data.dtype}, not numbers")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def npz_spacing(
    path: Path, case_id: str, metadata_table: str | os.PathLike | None
) -> tuple[tuple[float, float, float], float, bool]:
    """(spacing in SimpleITK (x, y, z) order, slice thickness, assumed?) for one NPZ case."""
    if metadata_table is not None:
        row = _metadata_row(Path(metadata_table), case_id)
        if row is not None:
            spacing = (row["spacing_x_mm"], row["spacing_y_mm"], row["spacing_z_mm"])
            return spacing, row.get("slice_thickness_mm") or row["spacing_z_mm"], False
    assumed = (STANDARD_SPACING[2], STANDARD_SPACING[1], STANDARD_SPACING[0])
    where = "no metadata table" if metadata_table is None else f"case {case_id} not in {metadata_table}"
    print(
        f"hipas: warning: {path}: {where}; assuming spacing x={assumed[0]:.4g} y={assumed[1]:.4g} "
        f"z={assumed[2]:.4g} mm (HiPaS dataset: 1 mm slices, standardized in-plane grid)",
        file=sys.stderr,
    )
    return assumed, assumed[2], True


def _metadata_row(table: Path, case_id: str) -> dict[str, float] | None:
    required = ("case_id", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm")
    try:
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidInputError(f"{table}: metadata table lacks column(s) {', '.join(missing)}")
            for record in reader:
                if str(record["case_id"]).strip() != case_id:
                    continue
                try:
                    values = {k: float(record[k]) for k in required[1:]}
                    if record.get("slice_thickness_mm"):
                        values["slice_thickness_mm"] = float(record["slice_thickness_mm"])
                except (TypeError, ValueError):
                    raise InvalidInputError(f"{table}: case {case_id}: spacing is not a number") from None
                if any(not np.isfinite(v) or v <= 0 for v in values.values()):
                    raise InvalidInputError(f"{table}: case {case_id}: spacing must be positive")
                return values
    except OSError as error:
        raise InvalidInputError(f"{table}: cannot read metadata table ({error.strerror})") from None
    return None


def read_hipas_npz(path: Path, *, metadata_table) -> tuple[sitk.Image, float]:
    case_id = path.name[: -len(".npz")]
    volume = load_npz_zyx(path)
    image = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    spacing, thickness, assumed = npz_spacing(path, case_id, metadata_table)
    image.SetSpacing(spacing)
    image.SetMetaData(META_SPACING_ASSUMED, "1" if assumed else "0")
    image.SetMetaData(META_SPACING_SOURCE, "assumed" if assumed else "metadata table")
    return image, thickness
