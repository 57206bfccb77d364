"""Held-out evaluation of an STS cascade against a single-stage baseline (default: the shipped demo models).

Phantom seeds never used in training or validation (default 1001-1016: odd NCCT, even CTPA; the
first half thin 0.8-1.25 mm, the second thick 2.5-3 mm slices, ``hipas_core.sts.phantom_cases.phantom_plan``)
are generated,
segmented by each model through ``Predictor.segment_file`` (the path ``hipas segment`` takes:
read, normalize, lung crop, sliding window, back to the input grid), and scored against the
phantom truth in the input grid with ``hipas_core.metrics.evaluate_labels`` (DSC, sensitivity,
MCS, HD95 in the input grid; TD, BD in the standardized grid; intrapulmonary rows from the
phantom lung mask). Summary: mean with t-based 95 % CI, paired two-sided Wilcoxon signed-rank
(cascade vs baseline). Each model is scored at its checkpoint's calibrated thresholds (its thresholds
for the phantom's protocol where its card has them, as the workflow), or both at
``--fixed-threshold``. Writes a markdown table (default ``benchmarks/demo_model_eval.md``) and
the per-scan rows as CSV in the work folder.

The table starts with what each compared checkpoint is (parameters, optimizer steps, training
time), so a comparison's budget is visible next to its result.

    .venv/bin/python benchmarks/evaluate_demo_model.py [--seeds 1001-1016] [--threads 2]
    .venv/bin/python benchmarks/evaluate_demo_model.py --fixed-threshold 0.5 \
        --work results/sts_heldout_t05 --out benchmarks/demo_model_eval_t05.md
    .venv/bin/python benchmarks/evaluate_demo_model.py --cascade C.pt --baseline B.pt --out OTHER.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--baseline", default=str(REPO / "models" / "baseline-demo.pt"))
    parser.add_argument("--seeds", default="1001-1016")
    parser.add_argument("--work", default=str(REPO / "results" / "sts_heldout"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "demo_model_eval.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--i2sr-model", help="I2SR checkpoint for the thick scans (default: the shipped one)")
    parser.add_argument("--no-skeleton", action="store_true", help="skip TD/BD (faster)")
    parser.add_argument("--only", choices=("cascade", "baseline"),
                        help="segment and score one model only (writes WORK/per_scan_<method>.csv; run both, "
                        "possibly in parallel, then --combine)")
    parser.add_argument("--combine", action="store_true", help="only build the table from the per-method CSVs")
    parser.add_argument("--title", default="Demo models: STS cascade vs single-stage baseline (held-out synthetic phantoms)")
    parser.add_argument("--fixed-threshold", type=float, metavar="T",
                        help="score both models at this threshold instead of their calibrated per-class thresholds")
    args = parser.parse_args()

    import pandas as pd
    import SimpleITK as sitk
    import torch

    from hipas_core.atomic import write_text
    from hipas_core.metric_summary import paired_comparison, summarize
    from hipas_core.metrics import evaluate_labels
    from hipas_core.resources import shipped_model
    from hipas_core.sts.phantom_cases import parse_seeds, phantom_plan, phantom_scan_folder
    from hipas_core.sts.predictor import Predictor

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    plan = phantom_plan(parse_seeds(args.seeds))
    scans = []
    for seed, protocol, thickness in plan:
        folder = phantom_scan_folder(seed, protocol=protocol, slice_thickness_mm=thickness, work=work)
        ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
        thick_mm = float(ct.GetSpacing()[2])
        scans.append({"seed": seed, "protocol": protocol.upper(), "slice_mm": thick_mm,
                      "slices": "thin" if thick_mm <= 1.5 else "thick", "folder": folder})

    frames, timings = {}, []
    methods = (("cascade", args.cascade), ("baseline", args.baseline))
    if args.only:
        methods = tuple(m for m in methods if m[0] == args.only)
    for method, model in ([] if args.combine else methods):
        i2sr = args.i2sr_model or shipped_model("i2sr-demo.pt")
        predictor = Predictor(model, device="cpu", i2sr_model=i2sr)  # as hipas segment: I2SR above 2 mm
        fixed = None if args.fixed_threshold is None else (args.fixed_threshold, args.fixed_threshold)
        rows = []
        for scan in scans:
            started = time.perf_counter()
            result = predictor.segment_file(scan["folder"] / "ct.nii.gz", protocol=scan["protocol"], thresholds=fixed)
            seconds = time.perf_counter() - started
            pred = sitk.GetArrayFromImage(result.labels)
            truth_image = sitk.ReadImage(str(scan["folder"] / "labels.nii.gz"))
            truth = sitk.GetArrayFromImage(truth_image)
            lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(scan["folder"] / "lungs.nii.gz")))
            frame = evaluate_labels(pred, truth, spacing=truth_image.GetSpacing()[::-1], lungs=lungs,
                                    scan_id=f"phantom-{scan['seed']}", skeleton_metrics=not args.no_skeleton)
            frame["method"], frame["protocol"], frame["slices"] = method, scan["protocol"], scan["slices"]
            rows.append(frame)
            timings.append({"method": method, "seed": scan["seed"], "seconds": seconds})
            whole = frame[frame["region"] == "whole"].set_index("tree")["dsc"]
            print(f"{method} seed {scan['seed']} {scan['protocol']} {scan['slice_mm']:g} mm: "
                  f"DSC artery {whole['artery']:.3f} vein {whole['vein']:.3f} ({seconds:.1f} s)", flush=True)
        frames[method] = pd.concat(rows, ignore_index=True)
        frames[method]["seconds"] = frames[method]["scan_id"].map(
            {f"phantom-{t['seed']}": t["seconds"] for t in timings if t["method"] == method})
        frames[method].to_csv(work / f"per_scan_{method}.csv", index=False)
    if args.only:
        return 0
    for method, _ in methods:
        frames[method] = pd.read_csv(work / f"per_scan_{method}.csv")
        timings += [{"method": method, "seconds": v} for v in frames[method].groupby("scan_id")["seconds"].first()]

    per_scan = pd.concat(frames.values(), ignore_index=True)
    per_scan.to_csv(work / "per_scan_metrics.csv", index=False)
    metrics = [("dsc", "artery", "whole"), ("dsc", "vein", "whole"), ("dsc", "artery", "intrapulmonary"),
               ("dsc", "vein", "intrapulmonary"), ("sensitivity", "artery", "whole"),
               ("sensitivity", "vein", "whole"), ("mcs", "vessels", "whole"), ("td", "artery", "whole"),
               ("td", "vein", "whole"), ("bd", "artery", "whole"), ("bd", "vein", "whole"),
               ("hd95_mm", "artery", "whole"), ("hd95_mm", "vein", "whole")]
    summaries = {m: summarize(f) for m, f in frames.items()}

    def cell(method, metric, tree, region):
        s = summaries[method]
        row = s[(s.metric == metric) & (s.tree == tree) & (s.region == region)]
        if row.empty or not np.isfinite(row["mean"].iloc[0]):
            return "n/a"
        r = row.iloc[0]
        return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    lines = [
        f"# {args.title}",
        "",
        f"Generated by `benchmarks/evaluate_demo_model.py --seeds {args.seeds}` on "
        f"{len(scans)} phantoms never used in training (size small; "
        + ", ".join(f"{s['seed']} {s['protocol']} {s['slice_mm']:g} mm" for s in scans) + ").",
        "Synthetic data only: these numbers say nothing about real CT.",
        "",
        "Models compared (from the checkpoints):",
        "",
        "| method | checkpoint | parameters | optimizer steps | training time | trained on | thresholds (artery, vein) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[model_row(method, path, args.fixed_threshold) for method, path in methods],
        "",
        "Mean [95 % CI, t-based]; p: paired two-sided Wilcoxon signed-rank, cascade vs baseline.",
        "DSC/SEN/MCS/HD95 in the input grid, TD/BD in the standardized grid (hipas_core.metrics).",
        "",
        "| metric | tree | region | STS cascade | baseline U-Net | p |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for metric, tree, region in metrics:
        test = paired_comparison(frames["cascade"], frames["baseline"], metric=metric, tree=tree, region=region)
        p = f"{test['p']:.3g}" if np.isfinite(test["p"]) else "n/a"
        lines.append(f"| {metric} | {tree} | {region} | {cell('cascade', metric, tree, region)} | "
                     f"{cell('baseline', metric, tree, region)} | {p} |")
    lines += ["", "Whole-tree DSC per protocol and slice thickness (mean over the scans of each cell):", "",
              "| protocol | slices | n | cascade artery | cascade vein | baseline artery | baseline vein |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    whole = per_scan[per_scan.region == "whole"]
    for (protocol, slices), group in whole.groupby(["protocol", "slices"]):
        def mean(method, tree, group=group):
            return group[(group.method == method) & (group.tree == tree)]["dsc"].mean()
        n = group[(group.method == "cascade") & (group.tree == "artery")].shape[0]
        lines.append(f"| {protocol} | {slices} | {n} | {mean('cascade', 'artery'):.3f} | {mean('cascade', 'vein'):.3f} | "
                     f"{mean('baseline', 'artery'):.3f} | {mean('baseline', 'vein'):.3f} |")
    t = pd.DataFrame(timings).groupby("method")["seconds"].median()
    lines += ["", f"Median time per scan (Predictor.segment_file, CPU, {args.threads} threads, shared machine): "
              + ", ".join(f"{m} {v:.1f} s" for m, v in t.items()) + "."]
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def model_row(method: str, path: str, fixed_threshold: float | None = None) -> str:
    """One markdown row describing a checkpoint: size, training budget and the thresholds used."""
    from hipas_core.sts.checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(path)
    parameters = sum(p.numel() for p in model_from_checkpoint(payload).parameters())
    try:
        shown = Path(path).resolve().relative_to(REPO)
    except ValueError:
        shown = Path(path).name
    minutes = float(payload.get("train_seconds", float("nan"))) / 60
    trained_on = payload.get("train_device")
    trained_on = f"{trained_on['device']}, {trained_on['threads']} threads" if trained_on else "not recorded"
    if fixed_threshold is None:
        calibrated = payload.get("inference", {}).get("thresholds", (0.5, 0.5))
        thresholds = f"{calibrated[0]:g}, {calibrated[1]:g} (the checkpoint's)"
    else:
        thresholds = f"{fixed_threshold:g}, {fixed_threshold:g} (fixed)"
    return (f"| {method} | `{shown}` | {parameters:,} | {int(payload.get('step', 0)):,} | "
            f"{minutes:.1f} min | {trained_on} | {thresholds} |")


if __name__ == "__main__":
    raise SystemExit(main())
