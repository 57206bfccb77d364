"""Memory and data wait of ``hipas train --prepared`` as the training set grows (issue 14).

Builds its own inputs: small phantoms 1..max(--cases) prepared with ``hipas prepare-training``
(``--jobs`` at a time; kept in ``--work`` and reused when given), then for each count in
``--cases`` a manifest of the first that many and a short training (``--steps``, ``--workers``
DataLoader processes, per-patch stream) in a subprocess. While it runs, the memory of the whole
process tree (the training process and its workers) is sampled from /proc/<pid>/smaps_rollup
every 50 ms, as proportional set sizes (a page shared by n processes counts 1/n in each, so the
forked workers' shared pages are not counted twice):

* ``peak PSS``: the largest sum of resident memory (anonymous + file-backed + shared);
  memory-mapped case pages are file-backed, reclaimable page cache counted here when touched;
* ``peak anon``: the largest sum of anonymous + shared memory, what cannot be dropped.

Data wait: the share of each step spent waiting for its batch (the CSV log beside the
checkpoint), the mean over the steps after the first (which includes starting the workers).
The claim to check: peak memory at 64 cases within 15 % of 8 cases; data wait < 5 % with 2 workers.

    .venv/bin/python benchmarks/bench_prepared_training.py [--cases 8 64] [--steps 30] [--workers 2]
        [--patch 48 96 96] [--width 8] [--threads 1] [--jobs 2] [--work DIR]
    .venv/bin/python benchmarks/bench_prepared_training.py --cases 2 3 --steps 4   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIPAS = str(Path(sys.executable).parent / "hipas")
PAGE_FIELDS = ("Pss_Anon", "Pss_File", "Pss_Shmem")


def prepare_phantoms(work: Path, count: int, *, jobs: int) -> list[Path]:
    """Case folders work/cases/phantom-001.. (seeds 1..count), prepared ``jobs`` at a time."""
    folders = [work / "cases" / f"phantom-{seed:03d}" for seed in range(1, count + 1)]
    pending = [(seed, f) for seed, f in enumerate(folders, start=1) if not (f / "case.json").is_file()]
    running: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            seed, folder = pending.pop(0)
            running.append(subprocess.Popen([HIPAS, "prepare-training", "--phantom-seed", str(seed),
                                             "--case-id", folder.name, "--out", str(folder)],
                                            stdout=subprocess.DEVNULL, env=env))
        for process in list(running):
            if process.poll() is not None:
                if process.returncode:
                    raise SystemExit(f"hipas prepare-training failed ({process.args})")
                running.remove(process)
        time.sleep(0.2)
    print(f"prepared {count} phantom cases in {work / 'cases'} ({time.perf_counter() - started:.0f} s)")
    return folders


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the process may have ended meanwhile
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def _memory_kb(pids: list[int]) -> dict[str, int]:
    total = dict.fromkeys(PAGE_FIELDS, 0)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in total:
                    total[key] += int(value.split()[0])
        except OSError:
            continue
    return total


def train_and_measure(manifest: Path, out: Path, args) -> dict:
    command = [HIPAS, "train", "--prepared", str(manifest), "--workers", str(args.workers),
               "--patch-stream", "per-patch", "--out", str(out), "--patch", *map(str, args.patch),
               "--width", str(args.width), "--steps", str(args.steps), "--val-every", str(args.steps),
               "--checkpoint-every", str(args.steps), "--threads", str(args.threads), "--no-progress",
               "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak_pss = peak_anon = 0
    while process.poll() is None:
        memory = _memory_kb(_tree(process.pid))
        peak_pss = max(peak_pss, sum(memory.values()))
        peak_anon = max(peak_anon, memory["Pss_Anon"] + memory["Pss_Shmem"])
        time.sleep(0.05)
    log = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"hipas train failed:\n{log}")
    rows = list(csv.DictReader(out.with_name(f"{out.stem}.log.csv").open()))
    waits = [float(r["data_wait_fraction"]) for r in rows[1:]] or [float(rows[0]["data_wait_fraction"])]
    rates = [float(r["patches_per_s"]) for r in rows[1:]] or [float(rows[0]["patches_per_s"])]
    return {"peak_pss_mb": peak_pss / 1024, "peak_anon_mb": peak_anon / 1024, "data_wait": statistics.mean(waits),
            "patches_per_s": statistics.median(rates), "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=(48, 96, 96))
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--jobs", type=int, default=2, help="phantoms prepared at a time")
    parser.add_argument("--work", type=Path, help="keep (and reuse) the prepared cases here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        folders = prepare_phantoms(work, max(args.cases), jobs=args.jobs)
        results = {}
        for count in sorted(args.cases):
            manifest = work / f"manifest-{count}.tsv"
            subprocess.run([HIPAS, "training-manifest", "--cases", *map(str, folders[:count]), "-o", str(manifest)],
                           check=True, stdout=subprocess.DEVNULL)
            results[count] = train_and_measure(manifest, Path(tmp) / f"run-{count}" / "sts.pt", args)
        print(f"\nhipas train --prepared: {args.steps} steps, batch {args.batch_size}, patch {tuple(args.patch)}, "
              f"width {args.width}, {args.workers} workers, {args.threads} torch thread(s)")
        print(f"{'cases':>6} {'peak PSS MB':>12} {'peak anon MB':>13} {'data wait':>10} {'patches/s':>10} {'wall s':>7}")
        for count, r in results.items():
            print(f"{count:>6} {r['peak_pss_mb']:>12.0f} {r['peak_anon_mb']:>13.0f} {r['data_wait']:>10.1%} "
                  f"{r['patches_per_s']:>10.2f} {r['wall_s']:>7.0f}")
        low, high = min(results), max(results)
        if low != high:
            for key in ("peak_pss_mb", "peak_anon_mb"):
                growth = results[high][key] / results[low][key] - 1
                print(f"{key}: {high} cases vs {low}: {growth:+.1%}")


if __name__ == "__main__":
    main()
