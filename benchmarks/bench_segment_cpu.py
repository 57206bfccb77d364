"""CPU benchmark of ``hipas segment`` end to end on a full-size phantom: wall, CPU, peak memory.

Builds its own input (``hipas phantom --size full --seed 4``: 512 x 512 in-plane, 1.25 mm slices;
written once to the work folder), then runs ``hipas segment --device cpu`` in a fresh process per
run under ``/usr/bin/time -v`` and prints wall time, user and system CPU time, peak RSS and minor
page faults: median (min-max) over ``--repeats`` runs. The obvious alternatives run in the same
session: ``fp32``, the same command with ``--precision fp32`` (the default ``auto`` runs bf16 +
channels-last on a CPU with native bf16), and ``default``, the default command with glibc's default
allocator thresholds (``HIPAS_MALLOC_TUNING=0``, ``hipas_core.allocator``), which hands every
large freed block back to the kernel and faults it in again on the next allocation.

    .venv/bin/python benchmarks/bench_segment_cpu.py [--repeats 3] [--threads 2] [--model M]
                                                     [--only tuned fp32 default] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HIPAS = [str(Path(sys.executable).with_name("hipas"))]  # the console script of this environment


def _time_v(command: list[str], env: dict) -> dict:
    """Run ``command`` under GNU time -v; returns wall_s, user_s, sys_s, peak_gb, faults and stderr."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    text = result.stderr

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.+)", text).group(1).strip()

    clock = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    wall = sum(v * 60**i for i, v in enumerate(reversed(clock)))
    return {"wall_s": wall, "user_s": float(field("User time (seconds)")), "sys_s": float(field("System time (seconds)")),
            "peak_gb": int(field("Maximum resident set size (kbytes)")) / 1024**2,
            "faults_m": int(field("Minor (reclaiming a frame) page faults")) / 1e6,
            "stages": next((line for line in text.splitlines() if "stage0" in line), "")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=4, help="full phantom seed (4: 1.25 mm slices)")
    parser.add_argument("--model", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--only", nargs="+", choices=("tuned", "fp32", "default"), help="run these settings only")
    parser.add_argument("--work", help="folder for the phantom (default: a temporary folder, removed)")
    args = parser.parse_args()
    if not shutil.which("/usr/bin/time"):
        raise SystemExit("/usr/bin/time (GNU time) is needed: apt-get install time")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-segment-"))
    try:
        phantom = work / f"full-{args.seed}"
        if not (phantom / "ct.nii.gz").is_file():
            subprocess.run([*HIPAS, "phantom", "--seed", str(args.seed), "--size", "full", "--out", str(phantom)],
                           check=True, capture_output=True)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        tuned = {**base_env, "HIPAS_MALLOC_TUNING": "1"}
        settings = {"tuned": (tuned, []), "fp32": (tuned, ["--precision", "fp32"]),
                    "default": ({**base_env, "HIPAS_MALLOC_TUNING": "0"}, [])}
        if args.only:
            settings = {name: settings[name] for name in args.only}
        command = [*HIPAS, "segment", "-i", str(phantom / "ct.nii.gz"), "-o", str(work / "labels.nii.gz"),
                   "--std-output", str(work / "std.nii.gz"), "--device", "cpu", "--threads", str(args.threads),
                   "--model", args.model, "--scan-id", "bench"]
        print(f"hipas segment --device cpu --threads {args.threads}, full phantom seed {args.seed}, "
              f"model {Path(args.model).name}, {args.repeats} runs each")
        medians = {}
        for name, (env, extra) in settings.items():
            runs = [_time_v(command + extra, env) for _ in range(args.repeats)]
            medians[name] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "user_s", "sys_s", "peak_gb", "faults_m")}
            spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in medians[name]}
            print(f"  {name:8s} " + "  ".join(
                f"{k} {medians[name][k]:.2f} ({spread[k][0]:.2f}-{spread[k][1]:.2f})" for k in medians[name]))
            print(f"           {runs[-1]['stages']}")
        for other in ("bf16", "default"):
            if other in medians and "tuned" in medians:
                print(f"  {other} / tuned: wall x{medians[other]['wall_s'] / medians['tuned']['wall_s']:.2f}, "
                      f"system time x{medians[other]['sys_s'] / max(medians['tuned']['sys_s'], 1e-9):.1f}, "
                      f"peak x{medians[other]['peak_gb'] / medians['tuned']['peak_gb']:.2f}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
