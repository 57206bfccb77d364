"""Planning time of the workflow for the paper's cohort (Table 1: six sites, 11,784 scans).

Generates a placeholder cohort in a temporary folder (one empty file per scan, six manifests,
placeholder model files), then times `snakemake -n --quiet` (DAG built and checked, job stats
printed) a few times and prints the median wall and CPU time. The alternative measured in the
same run is the obvious design without batching: one segment job per scan (batch_size 1).

    .venv/bin/python benchmarks/bench_planning.py [--repeats 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# site: (n, age mean, age sd, male fraction, protocols) -- Table 1 of the paper
TABLE1 = {
    "harbin": (5740, 51.8, 6.1, 0.414, ("CTPA", "NCCT")),
    "mudanjiang": (1782, 52.7, 5.8, 0.551, ("NCCT",)),
    "guangzhou": (782, 57.9, 8.6, 0.344, ("CTPA", "NCCT")),
    "beijing": (1078, 54.3, 7.9, 0.474, ("CTPA", "NCCT")),
    "shanghai": (1231, 51.3, 9.5, 0.462, ("CTPA", "NCCT")),
    "nanjing": (1171, 51.6, 11.4, 0.625, ("CTPA", "NCCT")),
}
FLAGS = ("cardiomegaly", "calcification", "pah", "nodule", "embolism", "copd")


def make_cohort(root: Path, *, scale: float, batch_size: int, seed: int = 0) -> int:
    """Placeholder scans, manifests, models and config under ``root``; returns the scan count."""
    rng = random.Random(seed)
    sites, total = {}, 0
    for site, (n, age_mean, age_sd, male, protocols) in TABLE1.items():
        n = max(1, round(n * scale))
        folder = root / "data" / site
        folder.mkdir(parents=True)
        lines = ["\t".join(("scan_id", "path", "sex", "age", "protocol", *FLAGS))]
        for k in range(n):
            scan_id = f"{site}_{k:05d}"
            (folder / f"{scan_id}.nii.gz").touch()
            lines.append("\t".join((scan_id, f"{scan_id}.nii.gz", "M" if rng.random() < male else "F",
                                    f"{rng.gauss(age_mean, age_sd):.1f}", rng.choice(protocols),
                                    *(str(int(rng.random() < 0.1)) for _ in FLAGS))))
        (folder / "manifest.tsv").write_text("\n".join(lines) + "\n")
        sites[site] = {"manifest": f"data/{site}/manifest.tsv"}
        total += n
    (root / "models").mkdir()
    for name in ("sts.pt", "i2sr.pt"):
        (root / "models" / name).touch()
    config = {"sites": sites, "models": {"sts": "models/sts.pt", "i2sr": "models/i2sr.pt"},
              "segmentation": {"batch_size": batch_size}}
    (root / "config").mkdir()
    (root / "config/config.yaml").write_text(yaml.safe_dump(config))
    return total


def time_dry_run(root: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds of one `snakemake -n --quiet`; the job stats it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [str(SNAKEMAKE), "-n", "--quiet", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
         "--configfile", str(root / "config/config.yaml")],
        capture_output=True, text=True, env={**os.environ, "PATH": f"{SNAKEMAKE.parent}:{os.environ['PATH']}"},
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"dry run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = result.stdout + result.stderr
    stats = output[output.find("Job stats"):].split("\n\n")[0]
    return wall, cpu, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Table 1 sizes")
    parser.add_argument("--batch-size", type=int, default=64, help="scans per segment job (cluster setting)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = {}
    for label, batch_size in (("batched segment (this workflow)", args.batch_size), ("one segment job per scan", 1)):
        with tempfile.TemporaryDirectory(prefix="hipas-bench-") as tmp:
            n = make_cohort(Path(tmp), scale=args.scale, batch_size=batch_size)
            runs = [time_dry_run(Path(tmp)) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        results[label] = (wall, cpu)
        print(f"\n{label}: {n} scans, batch_size {batch_size}")
        print(runs[0][2])
        print(f"snakemake -n: median wall {wall:.1f} s, median CPU {cpu:.1f} s "
              f"(runs: {', '.join(f'{r[0]:.1f}' for r in runs)} s)")
    (wall_a, cpu_a), (wall_b, cpu_b) = results.values()
    print(f"\nratio per-scan segment / batched: wall {wall_b / wall_a:.2f}x, CPU {cpu_b / cpu_a:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
