"""Normalization time for a full-size scan: hipas_core.normalize (SimpleITK resampler) vs scipy.

A synthetic 512 x 512 x 400 CT (0.7 mm in-plane, 1.25 mm slices, float32 HU) is resampled to the
standardized grid (1.0 x 334/512 x 334/512 mm). The alternative is ``scipy.ndimage.zoom`` with
linear interpolation (order=1) to the same output shape. Each method runs in a fresh process
(so its peak RSS is its own); the time is the median of ``--repeats`` runs inside that process.

    .venv/bin/python benchmarks/bench_normalize.py [--repeats 3] [--threads 2] [--slices 400]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

SPACING_ZYX = (1.25, 0.7, 0.7)


def synthetic_ct(slices: int, size: int = 512):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:slices, :size, :size]
    body = ((y - size / 2) / (0.42 * size)) ** 2 + ((x - size / 2) / (0.47 * size)) ** 2 < 1
    lungs = (((y - size / 2) / (0.3 * size)) ** 2 + ((np.abs(x - size / 2) - 0.22 * size) / (0.15 * size)) ** 2) < 1
    plane = np.where(body[0], 40.0, -1000.0).astype(np.float32)
    plane[lungs[0]] = -850.0
    plane += rng.normal(0, 20, size=plane.shape).astype(np.float32)
    hu = np.empty((slices, size, size), np.float32)
    hu[:] = plane
    hu += (0.01 * z).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING_ZYX[::-1])
    return image


def run_method(method: str, repeats: int, threads: int, slices: int) -> dict:
    import SimpleITK as sitk

    from hipas_core.normalize import normalize_ct, standard_reference

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    image = synthetic_ct(slices)
    times = []
    if method == "hipas":
        for _ in range(repeats):
            start = time.perf_counter()
            standard, _ = normalize_ct(image)
            times.append(time.perf_counter() - start)
        shape = sitk.GetArrayViewFromImage(standard).shape
    else:
        from scipy.ndimage import zoom

        array = sitk.GetArrayFromImage(image)
        shape = tuple(standard_reference(image).GetSize()[::-1])
        factors = [o / i for o, i in zip(shape, array.shape, strict=True)]
        for _ in range(repeats):
            start = time.perf_counter()
            out = zoom(array, factors, order=1, grid_mode=True, mode="nearest")
            times.append(time.perf_counter() - start)
        shape = out.shape
    return {
        "method": method, "median_s": statistics.median(times), "runs_s": [round(t, 2) for t in times],
        "output_shape": list(shape), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--method", choices=("hipas", "scipy"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, args.repeats, args.threads, args.slices)))
        return 0
    results = {}
    for method in ("hipas", "scipy"):
        command = [sys.executable, __file__, "--method", method, "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--slices", str(args.slices)]
        results[method] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    print(f"input 512 x 512 x {args.slices} float32, spacing (z, y, x) {SPACING_ZYX} mm; "
          f"{args.threads} threads; median of {args.repeats}")
    for method, label in (("hipas", "hipas normalize_ct (SimpleITK linear)"), ("scipy", "scipy.ndimage.zoom order=1")):
        r = results[method]
        print(f"  {label:<40} {r['median_s']:7.2f} s  runs {r['runs_s']}  peak RSS {r['peak_rss_gb']:.2f} GB  "
              f"output {r['output_shape']}")
    print(f"  speed-up vs scipy: {results['scipy']['median_s'] / results['hipas']['median_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
