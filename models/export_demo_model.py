"""Export a training checkpoint as a shipped demo model: optimizer and RNG state dropped, the
inference window 160 x 192 x 224 with overlap 0.25, and per-class thresholds calibrated on the
validation phantoms 501 and 502 (their cached cases in results/sts_cache).

    .venv/bin/python models/export_demo_model.py TRAIN.pt OUT.pt [--threads 1] [--half]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VALIDATION_CASES = ("phantom-501-ncct-seedmm-v0.7-1.5.npz", "phantom-502-ctpa-2.5mm-v0.7-1.5.npz")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--cache", type=Path, default=REPO / "results" / "sts_cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--half", action="store_true", help="store the weights as float16")
    args = parser.parse_args()

    import torch

    from hipas_core.sts.checkpoint import export_for_inference
    from hipas_core.sts.data import TrainingCase
    from hipas_core.sts.predictor import Predictor, calibrate_thresholds

    torch.set_num_threads(args.threads)
    settings = {"window": (160, 192, 224), "overlap": 0.25, "half": args.half}
    export_for_inference(args.source, args.destination, **settings)
    cases = [TrainingCase.load(args.cache / name) for name in VALIDATION_CASES]
    thresholds = calibrate_thresholds(Predictor(args.destination, device="cpu"), cases)
    export_for_inference(args.source, args.destination, thresholds=thresholds, **settings)
    print(f"{args.destination}: thresholds artery {thresholds[0]}, vein {thresholds[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
