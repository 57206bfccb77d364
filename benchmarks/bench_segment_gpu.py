"""GPU benchmark of STS inference: time per stage, TFLOP/s and peak memory.

Default (the paper's setting): a 400 x 512 x 512 (z, y, x) volume, the paper-width cascade
(base width 24, about 14.8 M parameters per stage, 4 stages), 128 x 192 x 192 windows,
overlap 0.25, gaussian blending, autocast in bf16 (or fp16), plus the vesselness filter on the
device. Weights are random (speed does not depend on them). Options: windows per forward pass
(``--window-batch``), channels-last memory format, ``torch.compile``. The obvious alternative
is measured in the same run: fp32 (no autocast) for the same cascade (``--compare-fp32``).

    python benchmarks/bench_segment_gpu.py --device cuda [--dtype bf16|fp16] [--window-batch 2]
                                           [--channels-last] [--compile] [--repeats 3]
    python benchmarks/bench_segment_gpu.py --device cpu --small    # smoke test, tiny sizes

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one window of each stage
and multiplied by the number of windows (2 FLOPs per multiply-add, convolutions dominate).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(width: int, small: bool):
    from hipas_core.sts.cascade import CascadeConfig, STSCascade
    from hipas_core.sts.network import StageConfig, paper_stage_config

    stage = StageConfig(width=width, blocks_per_level=(0, 0, 1, 1, 1)) if small else paper_stage_config()
    if not small and width != 24:
        stage = StageConfig(width=width, blocks_per_level=stage.blocks_per_level, max_width_factor=stage.max_width_factor)
    return STSCascade(CascadeConfig(stage=stage))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(model, image, *, window, overlap, batch, dtype, device, channels_last):
    from hipas_core.sts.sliding_window import sliding_window_predict

    times = []
    prior = None
    autocast = torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    for index in range(len(model.stages)):
        source = image if prior is None else torch.cat([image, prior])

        def predict(x, index=index):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            img, pri = x[:, :2], (x[:, 2:] if x.shape[1] > 2 else None)
            return torch.sigmoid(model.forward_stage(index, img, pri).float())

        sync(device)
        started = time.perf_counter()
        with torch.no_grad(), autocast:
            prior = sliding_window_predict(predict, source, window=window, overlap=overlap, batch_size=batch)
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def flops_per_stage(model, window, device, dtype) -> list[float]:
    from torch.utils.flop_counter import FlopCounterMode

    out = []
    x = torch.rand(1, 2, *window, device=device)
    prior = torch.rand(1, 2, *window, device=device)
    for index in range(len(model.stages)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                                                      enabled=dtype is not None):
            model.forward_stage(index, x, None if index == 0 else prior)
        out.append(float(counter.get_total_flops()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke test")
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--window", type=int, nargs=3, default=(128, 192, 192), metavar=("Z", "Y", "X"))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--window-batch", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each stage network")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-fp32", action="store_true", help="also time fp32 (ratio printed)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from hipas_core.sts.network import count_parameters
    from hipas_core.sts.sliding_window import window_starts
    from hipas_core.vesselness import vesselness

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.small:
        args.shape, args.window, args.width = (48, 80, 80), (32, 48, 48), 4
        args.repeats = min(args.repeats, 2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available (use --device cpu --small for the smoke test)")
    torch.manual_seed(0)
    model = build(args.width, args.small).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if args.compile:
        for index, stage in enumerate(model.stages):
            model.stages[index] = torch.compile(stage)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    ct = torch.rand(*args.shape, device=device)
    windows = 1
    for size, w in zip(args.shape, args.window, strict=True):
        windows *= len(window_starts(max(size, w), w, args.overlap))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"volume {tuple(args.shape)}, window {tuple(args.window)}, overlap {args.overlap}, {windows} windows/stage, "
          f"width {args.width}, {count_parameters(model.stages[0]) / 1e6:.2f} M params/stage, "
          f"{count_parameters(model) / 1e6:.2f} M total, dtype {args.dtype}, window batch {args.window_batch}, "
          f"channels-last {args.channels_last}, compile {args.compile}")

    sync(device)
    started = time.perf_counter()
    enhanced = vesselness(ct, spacing=(1.0, 334 / 512, 334 / 512))
    sync(device)
    print(f"vesselness: {time.perf_counter() - started:.2f} s")
    image = torch.stack([ct, enhanced])
    del enhanced

    per_stage_flops = flops_per_stage(model, args.window, device, dtype)

    def measure(dt) -> list[list[float]]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run_once(model, image, window=args.window, overlap=args.overlap, batch=args.window_batch, dtype=dt,
                 device=device, channels_last=args.channels_last)  # warm-up (and compile)
        return [run_once(model, image, window=args.window, overlap=args.overlap, batch=args.window_batch,
                         dtype=dt, device=device, channels_last=args.channels_last) for _ in range(args.repeats)]

    runs = measure(dtype)
    medians = [statistics.median(r[i] for r in runs) for i in range(len(model.stages))]
    for index, seconds in enumerate(medians):
        tflops = per_stage_flops[index] * windows / seconds / 1e12
        print(f"stage {index}: {seconds:.3f} s (median of {args.repeats}), {tflops:.2f} TFLOP/s "
              f"({per_stage_flops[index] / 1e9:.1f} GFLOP per window)")
    total = sum(medians)
    print(f"cascade total: {total:.3f} s, {sum(per_stage_flops) * windows / total / 1e12:.2f} TFLOP/s")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    if args.compare_fp32 and dtype is not None:
        runs32 = measure(None)
        total32 = sum(statistics.median(r[i] for r in runs32) for i in range(len(model.stages)))
        print(f"fp32 total: {total32:.3f} s; {args.dtype} is {total32 / total:.2f}x faster than fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
