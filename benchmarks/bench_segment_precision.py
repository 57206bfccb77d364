"""CPU inference layout and precision: the same scans segmented with float32 channels-first (the
default on a CPU without native bf16), float32 channels-last, and bf16 autocast channels-last (oneDNN uses AMX /
AVX-512 BF16 where the CPU has them).

Builds its own inputs: small held-out phantoms (default seeds 1001 NCCT thin and 1010 CTPA 2.5 mm,
never used in training), or with ``--size full`` one full-size phantom. Each setting segments each
scan ``--repeats`` times through ``Predictor.segment`` (normalize and I2SR included, as
``hipas segment`` does); printed: median wall time of the network stages and of the whole call,
the ratio to float32 channels-first, the whole-tree Dice against the phantom truth in the input
grid, and the share of voxels whose label differs from float32 channels-first.

    .venv/bin/python benchmarks/bench_segment_precision.py [--seeds 1001 1010] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETTINGS = (("fp32 channels-first", "fp32", False), ("fp32 channels-last", "fp32", True), ("bf16 channels-last", "bf16", True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1001, 1010])
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from hipas_core.allocator import restart_with_tuned_allocator

    restart_with_tuned_allocator()  # as the hipas command runs (glibc thresholds raised)

    import SimpleITK as sitk
    import torch

    from hipas_core.phantom import PhantomSpec, generate_phantom
    from hipas_core.resources import shipped_model
    from hipas_core.sts.phantom_cases import phantom_plan
    from hipas_core.sts.predictor import Predictor

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, AMX {torch.cpu._is_amx_tile_supported()}, "
          f"AVX-512 BF16 {torch.cpu._is_avx512_bf16_supported()}")
    scans = []
    with tempfile.TemporaryDirectory() as work:
        for seed, protocol, thickness in phantom_plan(args.seeds):
            spec = PhantomSpec.from_seed(seed, size=args.size, protocol=protocol, slice_thickness_mm=thickness)
            phantom = generate_phantom(spec)
            folder = Path(work) / f"phantom-{seed}"
            phantom.write(folder)
            scans.append((seed, sitk.ReadImage(str(folder / "ct.nii.gz")), sitk.GetArrayFromImage(phantom.labels)))
        results = {}
        for name, precision, channels_last in SETTINGS:
            predictor = Predictor(args.model, device="cpu", precision=precision, channels_last=channels_last,
                                  i2sr_model=shipped_model("i2sr-demo.pt"), progress="off")
            for seed, ct, truth in scans:
                walls, nets = [], []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    result = predictor.segment(ct)
                    walls.append(time.perf_counter() - started)
                    nets.append(sum(v for k, v in result.timings.items() if k.startswith("stage")))
                labels = sitk.GetArrayFromImage(result.labels)
                dice = [2 * ((labels == c) & (truth == c)).sum() / max((labels == c).sum() + (truth == c).sum(), 1)
                        for c in (1, 2)]
                results[(name, seed)] = {"wall": statistics.median(walls), "net": statistics.median(nets),
                                         "dice": dice, "labels": labels}
    reference = SETTINGS[0][0]
    print(f"{'setting':22s} {'seed':>5s} {'stages s':>9s} {'x':>5s} {'call s':>7s} {'x':>5s} "
          f"{'DSC A':>6s} {'DSC V':>6s} {'labels differ':>13s}")
    for name, _, _ in SETTINGS:
        for seed, _, _ in scans:
            r, base = results[(name, seed)], results[(reference, seed)]
            differ = float(np.mean(r["labels"] != base["labels"]))
            print(f"{name:22s} {seed:5d} {r['net']:9.1f} {base['net'] / r['net']:5.2f} {r['wall']:7.1f} "
                  f"{base['wall'] / r['wall']:5.2f} {r['dice'][0]:6.3f} {r['dice'][1]:6.3f} {differ:13.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
