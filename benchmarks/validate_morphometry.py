"""Validate morphometry and lung volumes against the phantom generator's ground truth.

For each phantom seed: morphometry of the ground-truth labels and lung mask (the indices SLPA/
SLPV/BCPA/BCPV come from here) against the generator's intrapulmonary truth, and the threshold
lung method on the CT against the true lung volumes. Prints a per-phantom table and a summary.

Acceptance (issue 3): intrapulmonary centerline length and bifurcations within 5 % of the truth
(both trees), lung volume within 3 %.

    .venv/bin/python benchmarks/validate_morphometry.py --size full --seeds 0-9
    .venv/bin/python benchmarks/validate_morphometry.py --size small --seeds 0-1 --thickness 1.0

``--thickness`` overrides the phantoms' drawn slice thickness (default: as drawn, 0.625-5 mm).
Phantoms are cached under ``--cache`` (NIfTI + truth.json) so reruns skip generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipas_core.lungs import threshold_lungs  # noqa: E402
from hipas_core.morphometry import MorphometrySettings, morphometry_row  # noqa: E402

TREES = ("artery", "vein")


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds.extend(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    return seeds


def load_phantom(seed: int, size: str, cache: Path, thickness: float | None):
    """(ct, labels, lungs, truth) of a phantom, generated once and cached as files."""
    tag = f"{size}_{seed}" + (f"_t{thickness:g}" if thickness else "")
    folder = cache / tag
    names = ("ct", "labels", "lungs")
    if not (folder / "truth.json").is_file():
        from hipas_core.phantom import PhantomSpec, generate_phantom

        overrides = {"slice_thickness_mm": thickness} if thickness else {}
        phantom = generate_phantom(
            PhantomSpec.from_seed(seed, size=size, protocol="ncct", **overrides)
        )
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            sitk.WriteImage(
                getattr(phantom, name), str(folder / f"{name}.nii.gz"), useCompression=True
            )
        (folder / "truth.json").write_text(json.dumps(phantom.truth, default=_json_default))
    images = [sitk.ReadImage(str(folder / f"{name}.nii.gz")) for name in names]
    truth = json.loads((folder / "truth.json").read_text())
    return (*images, truth)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def validate_one(
    seed: int, size: str, cache: Path, thickness: float | None, settings: MorphometrySettings
) -> dict:
    ct, labels, lungs, truth = load_phantom(seed, size, cache, thickness)
    started = time.perf_counter()
    row, _, result = morphometry_row(
        labels, lungs, scan_id=str(seed), settings=settings, return_skeletons=True
    )
    seconds = time.perf_counter() - started
    record = {"seed": seed, "thickness": ct.GetSpacing()[2], "seconds": seconds}
    for tree in TREES:
        t = truth[tree]
        record[f"{tree}_len"] = (
            row.loc[0, f"{tree}_sl_mm"] / t["intrapulmonary_centerline_length_mm"] - 1
        )
        record[f"{tree}_bc"] = row.loc[0, f"{tree}_bc"] / t["intrapulmonary_bifurcations"] - 1
        record[f"{tree}_ep"] = row.loc[0, f"{tree}_endpoints"] / t["intrapulmonary_endpoints"] - 1
        record[f"{tree}_vol"] = row.loc[0, f"{tree}_volume_ml"] / t["intrapulmonary_volume_ml"] - 1
        record[f"{tree}_bc_true"] = t["intrapulmonary_bifurcations"]
        record[f"{tree}_sl_vox"] = int(row.loc[0, f"{tree}_sl_vox"])
        record[f"{tree}_total_len"] = result[tree]["total_sl_mm"] / t["centerline_length_mm"] - 1
    mask = threshold_lungs(ct)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    lung = sitk.GetArrayViewFromImage(mask) > 0
    vessels = sitk.GetArrayViewFromImage(labels) > 0
    record["lung_total"] = lung.sum() * voxel_ml / truth["lung_total_ml"] - 1
    record["lung_volume"] = (lung.sum() - np.count_nonzero(lung & vessels)) * voxel_ml / truth[
        "lung_volume_ml"
    ] - 1
    record["gt_lung_volume"] = row.loc[0, "lung_volume_ml"] / truth["lung_volume_ml"] - 1
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--seeds", default="0-1", help="e.g. 0-9 or 1,4,7")
    parser.add_argument("--thickness", type=float, help="override the slice thickness (mm)")
    parser.add_argument("--cache", type=Path, default=Path("results/bench_cache"))
    parser.add_argument("--fix-branching", action="store_true")
    args = parser.parse_args(argv)
    settings = MorphometrySettings(fix_branching=args.fix_branching)
    records = []
    header = (
        f"{'seed':>4} {'thick':>5} {'sec':>5} | {'A len':>6} {'A bc':>6} {'A ep':>6} {'A vol':>6} | "
        f"{'V len':>6} {'V bc':>6} {'V ep':>6} {'V vol':>6} | {'lungT':>6} {'lungV':>6} {'gtLV':>6} | A/V bc true"
    )
    print(header)
    for seed in parse_seeds(args.seeds):
        r = validate_one(seed, args.size, args.cache, args.thickness, settings)
        records.append(r)

        def pct(key: str, r: dict = r) -> str:
            return f"{100 * r[key]:+6.1f}"

        print(
            f"{r['seed']:>4} {r['thickness']:>5.2f} {r['seconds']:>5.1f} | "
            f"{pct('artery_len')} {pct('artery_bc')} {pct('artery_ep')} {pct('artery_vol')} | "
            f"{pct('vein_len')} {pct('vein_bc')} {pct('vein_ep')} {pct('vein_vol')} | "
            f"{pct('lung_total')} {pct('lung_volume')} {pct('gt_lung_volume')} | "
            f"{r['artery_bc_true']}/{r['vein_bc_true']}",
            flush=True,
        )
    print("\nsummary (relative error, %): mean | max |error| | within bound")
    bounds = {"len": 0.05, "bc": 0.05, "ep": None, "vol": None}
    failures = 0
    for key, bound in bounds.items():
        for tree in TREES:
            values = np.array([r[f"{tree}_{key}"] for r in records])
            ok = (
                ""
                if bound is None
                else f"{int(np.sum(np.abs(values) <= bound))}/{len(values)} within {100 * bound:.0f} %"
            )
            failures += 0 if bound is None else int(np.sum(np.abs(values) > bound))
            print(
                f"  {tree:6} {key:4} {100 * values.mean():+6.2f} | {100 * np.abs(values).max():5.2f} | {ok}"
            )
    for key in ("lung_total", "lung_volume"):
        values = np.array([r[key] for r in records])
        failures += int(np.sum(np.abs(values) > 0.03))
        print(
            f"  {key:11} {100 * values.mean():+6.2f} | {100 * np.abs(values).max():5.2f} | "
            f"{int(np.sum(np.abs(values) <= 0.03))}/{len(values)} within 3 %"
        )
    print(f"median morphometry time {np.median([r['seconds'] for r in records]):.1f} s per scan")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
