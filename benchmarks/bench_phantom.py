"""Phantom generation time: small vs full, smooth vs sharp kernel (median of several runs), printed.

    .venv/bin/python benchmarks/bench_phantom.py [--runs-small 5] [--runs-full 3]

Reports wall and CPU seconds per phantom (generation in memory, no writing) with each
reconstruction kernel, the sharp/smooth and small/full ratios, the grid sizes and the tree sizes,
and the time to write the files of one phantom.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def _time(spec, runs: int):
    from hipas_core.phantom import generate_phantom

    walls, cpus, phantom = [], [], None
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        phantom = generate_phantom(spec)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-small", type=int, default=5)
    parser.add_argument("--runs-full", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from hipas_core.phantom import PhantomSpec
    from hipas_core.phantom.spec import KERNELS

    results = {}
    for size, runs in (("small", args.runs_small), ("full", args.runs_full)):
        for kernel in KERNELS:
            spec = PhantomSpec.from_seed(args.seed, size=size, protocol="ctpa", slice_thickness_mm=1.0, kernel=kernel)
            wall, cpu, ph = _time(spec, runs)
            results[size, kernel] = wall
            shape = ph.truth["grid"]["shape_zyx"]
            a, v = ph.truth["artery"], ph.truth["vein"]
            print(f"{size:5s} {kernel:6s}: median {wall:6.2f} s wall, {cpu:6.2f} s CPU over {runs} runs; grid {shape} "
                  f"({shape[0] * shape[1] * shape[2] / 1e6:.1f} M voxels); bifurcations artery {a['bifurcations']} "
                  f"vein {v['bifurcations']}; branches artery {a['branches']} vein {v['branches']}")
        print(f"{size:5s}: sharp/smooth generation time {results[size, 'sharp'] / results[size, 'smooth']:.3f}")
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            ph.write(tmp)
            print(f"{size:5s}: writing the five files took {time.perf_counter() - start:.2f} s")
    results = {size: results[size, "smooth"] for size in ("small", "full")}
    print(f"ratio small/full generation time: {results['small'] / results['full']:.3f} "
          f"(full is {results['full'] / results['small']:.1f}x slower)")


if __name__ == "__main__":
    main()
