"""Seconds per optimizer step of stage-wise cascade training: frozen stages rerun on every patch
(the obvious way) against their prior map read from the per-case cache (``--cached-priors``).

One phantom case (``--case`` NPZ, or small phantom seed 1 prepared with
``hipas_core.sts.phantom_cases.phantom_case`` into ``results/sts_cache`` when absent, as ``hipas train``
does), the demo stage (width 8, blocks ``--blocks``, default 0 0 1 1 1), dice stage
loss with cross-entropy, Adam. For each stage s >= 1: ``--warmup`` steps, then the median of
``--steps`` timed steps, each way, in the same process; the one-off cost of filling the cache
(the frozen stages over the whole crop) is printed separately.

    .venv/bin/python benchmarks/bench_training_step.py [--patch 48 96 96] [--threads 2] [--steps 8]
                                                       [--blocks 1 1 1 1 1] [--case CASE.npz]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, help="a prepared case (.npz); default: small phantom 1, prepared once")
    parser.add_argument("--blocks", type=int, nargs=5, default=(0, 0, 1, 1, 1), help="residual blocks per resolution")
    parser.add_argument("--patch", type=int, nargs=3, default=(48, 96, 96))
    parser.add_argument("--window", type=int, nargs=3, default=(160, 192, 224))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from hipas_core.sts.batches import make_batch
    from hipas_core.sts.cascade import CascadeConfig
    from hipas_core.sts.checkpoint import build_model
    from hipas_core.sts.data import TrainingCase
    from hipas_core.sts.network import StageConfig
    from hipas_core.sts.objective import batch_loss
    from hipas_core.sts.phantom_cases import phantom_case
    from hipas_core.sts.prior_cache import cached_prior
    from hipas_core.sts.train_config import TrainConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    case = (TrainingCase.load(args.case) if args.case
            else phantom_case(1, protocol="ncct", cache_dir=REPO / "results" / "sts_cache"))
    model_config = CascadeConfig(stage=StageConfig(width=8, blocks_per_level=tuple(args.blocks))).to_dict()
    model = build_model("cascade", model_config)
    config = TrainConfig(model_config=model_config, patch=tuple(args.patch), mode="stagewise", stage_loss="dice",
                         bce_weight=1.0, lr=1e-3, inference_window=tuple(args.window))
    print(f"case {case.name} {case.shape}, patch {tuple(args.patch)}, {args.threads} threads, "
          f"median of {args.steps} steps after {args.warmup}")
    print("| stage | rerun frozen stages (s/step) | cached prior (s/step) | speed-up | filling the cache (s) |")
    print("| --- | --- | --- | --- | --- |")
    for stage in (1, 2, 3):
        for index, net in enumerate(model.stages):
            net.requires_grad_(index == stage)
        for index, transmission in enumerate(model.transmissions):
            transmission.requires_grad_(index + 1 == stage)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        cache = {"stage": stage}
        started = time.perf_counter()
        cached_prior(model, cache, case, config=config, device=torch.device("cpu"), autocast=("cpu", torch.bfloat16, False))
        fill_seconds = time.perf_counter() - started

        def prior_of(c, cache=cache):
            return cached_prior(model, cache, c, config=config, device=torch.device("cpu"),
                                 autocast=("cpu", torch.bfloat16, False))

        medians = {}
        for way, source in (("rerun", None), ("cached", prior_of)):
            rng = np.random.default_rng(0)
            times = []
            for step in range(args.warmup + args.steps):
                started = time.perf_counter()
                batch = make_batch([case], config, rng, prior_of=source)
                optimizer.zero_grad(set_to_none=True)
                batch_loss(model, batch, config, stages=[stage]).backward()
                optimizer.step()
                if step >= args.warmup:
                    times.append(time.perf_counter() - started)
            medians[way] = statistics.median(times)
        print(f"| {stage} | {medians['rerun']:.2f} | {medians['cached']:.2f} | "
              f"{medians['rerun'] / medians['cached']:.2f}x | {fill_seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
