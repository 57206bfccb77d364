"""What measuring in a thick-slice scan's own grid costs: morphometry of labels in the
standardized grid against the same labels mapped to 2.5 and 5 mm slices and measured there.

The labels are a thin-slice (1 mm) full phantom's ground truth put on the standardized grid
(one-hot linear + argmax), standing in for a segmentation made on the standardized grid; each
thick grid has the phantom's in-plane spacing and field of view. The mapping to the thick grid
is the one `hipas segment` uses for its input-grid labels (one-hot linear + argmax).

    .venv/bin/python benchmarks/thick_slice_morphometry.py [--cache results/bench_cache] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = ("artery_sl_mm", "vein_sl_mm", "artery_bc", "vein_bc", "artery_volume_ml", "vein_volume_ml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("results/bench_cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thickness", type=float, nargs="+", default=(2.5, 5.0))
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    from validate_morphometry import load_phantom

    from hipas_core.morphometry import morphometry_row
    from hipas_core.normalize import _resample, to_standard_grid

    _, labels, lungs, _ = load_phantom(args.seed, "full", args.cache, 1.0)
    standard = to_standard_grid(labels, interpolation="label")
    standard_lungs = to_standard_grid(lungs, interpolation="nearest")
    reference_row, _ = morphometry_row(standard, standard_lungs, scan_id="standard")
    print(f"full phantom seed {args.seed} at 1 mm, labels on the standardized grid {standard.GetSize()}")
    print(f"{'thickness':>9}  " + "  ".join(f"{c:>17}" for c in COLUMNS))
    print(f"{'standard':>9}  " + "  ".join(f"{float(reference_row.loc[0, c]):17.1f}" for c in COLUMNS))
    for thickness in args.thickness:
        size = list(labels.GetSize())
        size[2] = int(size[2] * labels.GetSpacing()[2] / thickness)
        grid = sitk.Image(size, sitk.sitkUInt8)
        grid.SetSpacing((labels.GetSpacing()[0], labels.GetSpacing()[1], thickness))
        grid.SetOrigin(labels.GetOrigin())
        grid.SetDirection(labels.GetDirection())
        thick_labels = _resample(standard, grid, "label", outside=0.0)
        thick_lungs = _resample(standard_lungs, grid, "nearest", outside=0.0)
        row, _ = morphometry_row(thick_labels, thick_lungs, scan_id=f"thick{thickness:g}")
        cells = []
        for c in COLUMNS:
            value, base = float(row.loc[0, c]), float(reference_row.loc[0, c])
            cells.append(f"{value:9.1f} ({100 * (value / base - 1):+5.1f}%)")
        print(f"{thickness:>7g}mm  " + "  ".join(f"{cell:>17}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
