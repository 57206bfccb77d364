"""Benchmark ``hipas figure4`` on a paper-sized planted cohort (11,784 rows).

Prints the median wall time and user CPU time of the whole command (subprocess, as a user runs
it: every table, PNG+PDF plot and the HTML report) with the command's default single-threaded
BLAS, against the obvious alternative, multi-threaded BLAS (OPENBLAS_NUM_THREADS = number of
cores), and the in-process split between tables and plots. The machine may be shared: user CPU
time is the steadier figure.

    .venv/bin/python benchmarks/bench_figure4.py [--runs 3] [--n 11784]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # as hipas figure4 does, for the in-process split


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime


def _self_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=11784)
    args = parser.parse_args()

    hipas = str(Path(sys.executable).parent / "hipas")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort.parquet"
        subprocess.run([hipas, "synth-cohort", "--n", str(args.n), "--seed", "1", "--missing-rate", "0.01",
                        "--out", str(cohort)], check=True, capture_output=True)
        base_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                                     "MKL_NUM_THREADS")}
        threads = str(os.cpu_count() or 2)
        medians = {}
        for label, env in (("single-threaded BLAS (default)", base_env),
                           (f"{threads}-thread BLAS", {**base_env, "OPENBLAS_NUM_THREADS": threads,
                                                       "OMP_NUM_THREADS": threads})):
            walls, cpus = [], []
            for run in range(args.runs):
                start_wall, start_cpu = time.perf_counter(), _children_cpu()
                subprocess.run([hipas, "figure4", "--cohort", str(cohort), "--out", str(Path(tmp) / f"out{run}")],
                               check=True, capture_output=True, env={**env, "PYTHONHASHSEED": "0"})
                walls.append(time.perf_counter() - start_wall)
                cpus.append(_children_cpu() - start_cpu)
            medians[label] = (statistics.median(walls), statistics.median(cpus))
            print(f"hipas figure4, {args.n} rows, {label}, {args.runs} runs: median wall "
                  f"{medians[label][0]:.2f} s, median user CPU {medians[label][1]:.2f} s "
                  f"(walls: {', '.join(f'{w:.1f}' for w in walls)})")
        (ours_wall, ours_cpu), (other_wall, other_cpu) = medians.values()
        print(f"ratio multi-threaded / default: wall {other_wall / ours_wall:.2f}x, user CPU {other_cpu / ours_cpu:.2f}x")

        from analysis.cohort import load_cohort
        from analysis.figure4 import figure4_tables
        from analysis.report import write_figure4

        data = load_cohort(cohort)
        table_times, all_times = [], []
        for run in range(args.runs):
            start = _self_cpu()
            figure4_tables(data)
            table_times.append(_self_cpu() - start)
            start = _self_cpu()
            write_figure4(cohort, Path(tmp) / f"inproc{run}", cohort=data)
            all_times.append(_self_cpu() - start)
        tables_cpu, all_cpu = statistics.median(table_times), statistics.median(all_times)
        print(f"in-process user CPU: tables {tables_cpu:.2f} s, everything {all_cpu:.2f} s "
              f"(plots + report + CSVs {all_cpu - tables_cpu:.2f} s)")


if __name__ == "__main__":
    main()
