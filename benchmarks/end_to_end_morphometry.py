"""End-to-end morphometry against the phantom truth: what reaches Figure 4 from a model.

For each held-out phantom (default seeds 1001-1016, ``hipas_core.sts.phantom_cases.phantom_plan``: odd
NCCT, even CTPA, the first half thin 0.8-1.25 mm, the second thick 2.5-3 mm slices) the chain the
workflow runs, in one process: normalize (``normalize_ct``: the record of ``hipas normalize``;
slices thicker than 2 mm through the I2SR model of ``config/config.yaml`` as the workflow does,
or trilinear with ``--i2sr-model none``, as ``hipas segment`` alone does),
segment the normalized CT with that record and the phantom's protocol (``Predictor.segment``, as
``hipas segment --record --std-output --protocol``), lungs on the normalized CT (threshold method, as ``rules/measure.smk``), and
morphometry of the standardized-grid labels (``morphometry_row``). Each figure is compared with
the generator's intrapulmonary truth (``truth.json``): SL (centreline mm) and BC (bifurcations) of
both trees, and the lung volume (lungs minus intrapulmonary vessels). The same chain on the true
labels (resampled to the standardized grid) is printed beside it: the part of the error that
morphometry itself makes.

    .venv/bin/python benchmarks/end_to_end_morphometry.py [--model models/sts-demo.pt]
        [--seeds 1001-1016] [--work results/sts_heldout] [--threads 1] [--csv OUT.csv]
        [--i2sr-model models/i2sr-demo.pt | none] [--slice-thickness MM]

``--slice-thickness``: every phantom at that slice thickness instead of the plan's (give a work
folder of its own: a phantom folder is named by its seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIGURES = (("artery_sl_mm", "artery", "intrapulmonary_centerline_length_mm"),
           ("vein_sl_mm", "vein", "intrapulmonary_centerline_length_mm"),
           ("artery_bc", "artery", "intrapulmonary_bifurcations"),
           ("vein_bc", "vein", "intrapulmonary_bifurcations"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--seeds", default="1001-1016")
    parser.add_argument("--work", default=str(REPO / "results" / "sts_heldout"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", help="write the per-scan errors here")
    parser.add_argument("--slice-thickness", type=float, metavar="MM",
                        help="every phantom at this slice thickness (default: the plan's, thin and 2.5-3 mm)")
    parser.add_argument("--i2sr-model", default=str(REPO / "models" / "i2sr-demo.pt"),
                        help="I2SR for slices > 2 mm, as the workflow (default); 'none': trilinear")
    args = parser.parse_args()

    import pandas as pd
    import SimpleITK as sitk
    import torch

    from hipas_core.lungs import threshold_lungs
    from hipas_core.morphometry import labels_onto_grid, morphometry_row
    from hipas_core.normalize import normalize_ct
    from hipas_core.sts.phantom_cases import parse_seeds, phantom_plan, phantom_scan_folder
    from hipas_core.sts.predictor import Predictor

    torch.set_num_threads(args.threads)
    predictor = Predictor(args.model, device="cpu")
    i2sr = None
    if args.i2sr_model != "none":
        from hipas_core.i2sr import load_model

        i2sr = load_model(args.i2sr_model)
    rows = []
    for seed, protocol, thickness in phantom_plan(parse_seeds(args.seeds)):
        thickness = args.slice_thickness or thickness
        folder = phantom_scan_folder(seed, protocol=protocol, slice_thickness_mm=thickness, work=args.work)
        truth = json.loads((folder / "truth.json").read_text())
        ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
        started = time.perf_counter()
        standard, record = normalize_ct(ct, i2sr_model=i2sr)
        segmentation = predictor.segment(standard, record=record, protocol=protocol)  # as the workflow
        lungs = threshold_lungs(standard)
        measured, _ = morphometry_row(segmentation.standard_labels, lungs, scan_id=f"phantom-{seed}")
        seconds = time.perf_counter() - started
        true_std = labels_onto_grid(sitk.ReadImage(str(folder / "labels.nii.gz")), standard)  # as morphometry resamples
        on_truth, _ = morphometry_row(true_std, lungs, scan_id=f"phantom-{seed}")
        row = {"seed": seed, "protocol": protocol.upper(), "slice_mm": round(float(ct.GetSpacing()[2]), 3),
               "seconds": round(seconds, 1)}
        for column, tree, key in FIGURES:
            row[column] = measured.loc[0, column] / truth[tree][key] - 1
            row[f"{column}_on_truth"] = on_truth.loc[0, column] / truth[tree][key] - 1
        row["lung_volume_ml"] = measured.loc[0, "lung_volume_ml"] / truth["lung_volume_ml"] - 1
        rows.append(row)
        print(f"seed {seed} {protocol.upper()} {row['slice_mm']:g} mm: " + "  ".join(
            f"{c} {100 * row[c]:+.1f} % (truth labels {100 * row[c + '_on_truth']:+.1f} %)" for c, _, _ in FIGURES)
            + f"  lung volume {100 * row['lung_volume_ml']:+.1f} %  ({seconds:.0f} s)", flush=True)
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    print(f"\nmodel {Path(args.model).name}, I2SR {Path(args.i2sr_model).name}, {len(frame)} phantoms: relative "
          "error of the segmentation's figures (truth-label figures in brackets)")
    print("| figure | slices | mean | worst | within 10 % |")
    print("| --- | --- | --- | --- | --- |")
    for column in [c for c, _, _ in FIGURES] + ["lung_volume_ml"]:
        for name, part in (("thin", frame[frame.slice_mm <= 1.5]), ("thick", frame[frame.slice_mm > 1.5])):
            if part.empty:
                continue
            values = part[column].to_numpy()
            worst = values[np.argmax(np.abs(values))]
            bound = 0.03 if column == "lung_volume_ml" else 0.10
            extra = "" if column == "lung_volume_ml" else f" ({100 * part[column + '_on_truth'].mean():+.1f} %)"
            print(f"| {column} | {name} | {100 * values.mean():+.1f} %{extra} | {100 * worst:+.1f} % | "
                  f"{int((np.abs(values) <= bound).sum())}/{len(values)}{' (3 %)' if bound == 0.03 else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
