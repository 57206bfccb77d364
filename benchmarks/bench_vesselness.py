"""Vesselness speed on CPU: hipas_core.vesselness (torch, fp32) vs skimage.filters.frangi.

Usage: .venv/bin/python benchmarks/bench_vesselness.py [--shape 256 256 256] [--repeats 3]

Both run the same scales on the same synthetic windowed CT (random tubes + noise). skimage works
in voxel units and float64; it is given the same sigmas in voxels of an isotropic 1 mm grid, so
the work is comparable (our filter converts mm per axis; here spacing is 1 mm everywhere).
Prints the median wall time of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import ndimage as ndi


def synthetic_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(12):  # tubes along z with random centres and radii
        cy, cx = rng.uniform(0.1, 0.9, 2) * shape[1:]
        radius = rng.uniform(1.0, 5.0)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    vol = 0.09 + 0.55 * ndi.gaussian_filter(mask.astype(np.float32), 0.7)
    vol += 0.01 * rng.standard_normal(shape).astype(np.float32)
    return vol.astype(np.float32)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 256))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-skimage", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hipas_core.vesselness import DEFAULT_SIGMAS_MM, vesselness

    shape = tuple(args.shape)
    vol = synthetic_volume(shape)
    sigmas = DEFAULT_SIGMAS_MM
    ours = median_time(
        lambda: vesselness(vol, spacing=(1.0, 1.0, 1.0), sigmas_mm=sigmas), args.repeats
    )
    voxels = np.prod(shape) / 1e6
    print(f"volume {shape} ({voxels:.1f} Mvoxel), sigmas {sigmas}, threads {args.threads}")
    print(
        f"hipas vesselness (torch fp32, CPU): median {ours:.2f} s over {args.repeats} runs "
        f"({voxels / ours:.2f} Mvoxel/s)"
    )
    if not args.no_skimage:
        from skimage.filters import frangi

        theirs = median_time(
            lambda: frangi(vol, sigmas=sigmas, alpha=0.5, beta=0.5, gamma=0.05, black_ridges=False),
            args.repeats,
        )
        print(
            f"skimage.filters.frangi (float32 input): median {theirs:.2f} s over {args.repeats} runs"
        )
        print(f"speed-up (skimage / hipas): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
