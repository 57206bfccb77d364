"""Speed, peak memory and accuracy of ``morphometry_row`` (both trees) on a phantom.

Each measurement runs in a fresh subprocess (so peak RSS is that run's alone) on a full-size
phantom's ground-truth labels and lungs (input grid -> standardized grid -> skeletons ->
figures). The chosen setting (kimimaro ``fix_branching=False``, one process) is run
``--repeats`` times (median reported); the alternatives once: ``fix_branching=True`` (kimimaro's
default) and ``parallel=2``. Accuracy is the intrapulmonary length / bifurcation error against
the generator's truth.

    .venv/bin/python benchmarks/bench_morphometry.py --size full --seed 0 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "chosen: fix_branching=False, parallel=1": {"fix_branching": False, "parallel": 1},
    "fix_branching=True (kimimaro default)": {"fix_branching": True, "parallel": 1},
    "fix_branching=False, parallel=2": {"fix_branching": False, "parallel": 2},
}


def child(folder: Path, fix_branching: bool, parallel: int) -> None:
    import SimpleITK as sitk

    from hipas_core.morphometry import MorphometrySettings, morphometry_row

    labels = sitk.ReadImage(str(folder / "labels.nii.gz"))
    lungs = sitk.ReadImage(str(folder / "lungs.nii.gz"))
    truth = json.loads((folder / "truth.json").read_text())
    started = time.perf_counter()
    cpu_started = time.process_time()
    row, _ = morphometry_row(
        labels,
        lungs,
        scan_id="bench",
        settings=MorphometrySettings(fix_branching=fix_branching, parallel=parallel),
    )
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    peak_kib = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    out = {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_gib": peak_kib / 2**20}
    for tree in ("artery", "vein"):
        t = truth[tree]
        out[f"{tree}_len_err"] = float(
            row.loc[0, f"{tree}_sl_mm"] / t["intrapulmonary_centerline_length_mm"] - 1
        )
        out[f"{tree}_bc_err"] = float(
            row.loc[0, f"{tree}_bc"] / t["intrapulmonary_bifurcations"] - 1
        )
        out[f"{tree}_bc"] = int(row.loc[0, f"{tree}_bc"])
    print(json.dumps(out))


def run_child(folder: Path, setting: dict) -> dict:
    command = [
        sys.executable, __file__, "--child", str(folder),
        "--fix-branching", str(int(setting["fix_branching"])), "--parallel", str(setting["parallel"]),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--thickness", type=float, help="override the phantom's slice thickness (mm)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("results/bench_cache"))
    parser.add_argument("--skip-alternatives", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fix-branching", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parallel", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, bool(args.fix_branching), args.parallel)
        return 0

    from validate_morphometry import load_phantom

    ct, labels, _, truth = load_phantom(args.seed, args.size, args.cache, args.thickness)
    tag = f"{args.size}_{args.seed}" + (f"_t{args.thickness:g}" if args.thickness else "")
    folder = args.cache / tag
    print(
        f"phantom {tag}: grid {labels.GetSize()} spacing {tuple(round(s, 3) for s in labels.GetSpacing())}, "
        f"true intrapulmonary bifurcations A/V {truth['artery']['intrapulmonary_bifurcations']}/"
        f"{truth['vein']['intrapulmonary_bifurcations']}"
    )
    results = {}
    for index, (name, setting) in enumerate(SETTINGS.items()):
        if index and args.skip_alternatives:
            break
        runs = [run_child(folder, setting) for _ in range(args.repeats if index == 0 else 1)]
        results[name] = runs
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r.get("cpu_seconds", float("nan")) for r in runs)
        peak = max(r["peak_gib"] for r in runs)
        last = runs[-1]
        print(
            f"{name:42} wall {seconds:6.1f} s, cpu {cpu:6.1f} s (median of {len(runs)})  peak RSS {peak:5.2f} GiB  "
            f"len err A {100 * last['artery_len_err']:+5.1f} % V {100 * last['vein_len_err']:+5.1f} %  "
            f"bc err A {100 * last['artery_bc_err']:+5.1f} % V {100 * last['vein_bc_err']:+5.1f} %",
            flush=True,
        )
    names = list(results)
    if len(names) > 1:
        base = statistics.median(r["seconds"] for r in results[names[0]])
        for name in names[1:]:
            print(f"time ratio {name} / chosen: {results[name][0]['seconds'] / base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
