"""Thresholds per protocol chosen by the end-to-end morphometry on validation phantoms.

The Dice-calibrated thresholds of ``models/export_demo_model.py`` are one pair for all scans, but
what reaches Figure 4 is SL and BC, and on CTPA the contrast-filled artery's probabilities run
higher than on NCCT (benchmarks/RESULTS.md, session 11: CTPA artery over-segmented, predicted /
true volume 1.30). For each validation phantom (default 501-508, never used for training or
for the held-out figures) this runs the chain of ``benchmarks/end_to_end_morphometry.py``
(normalize with I2SR above 2 mm, ``Predictor.segment`` with the record, threshold lungs,
``morphometry_row`` of the standardized-grid labels), with the network run once per scan and
every (artery, vein) pair of the grid applied after it (branch labels and fragments as the
model's card says). Per protocol it prints the mean absolute relative error of the four
figures (artery/vein SL in mm and BC) and the lung volume's for each pair, and the pair with
the smallest mean; give that to ``models/export_demo_model.py --protocol-thresholds``.

    .venv/bin/python benchmarks/protocol_thresholds.py [--model models/sts-demo.pt]
        [--seeds 501-508] [--work results/sts_validation] [--artery 0.65,0.8,0.9,0.95]
        [--vein 0.55,0.65,0.75] [--threads 1] [--csv OUT.csv] [--slice-thickness MM]

``--slice-thickness``: every phantom at that slice thickness instead of the plan's (give a work
folder of its own: a phantom folder is named by its seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIGURES = (("artery_sl_mm", "artery", "intrapulmonary_centerline_length_mm"),
           ("vein_sl_mm", "vein", "intrapulmonary_centerline_length_mm"),
           ("artery_bc", "artery", "intrapulmonary_bifurcations"),
           ("vein_bc", "vein", "intrapulmonary_bifurcations"))


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--seeds", default="501-508")
    parser.add_argument("--work", default=str(REPO / "results" / "sts_validation"))
    parser.add_argument("--artery", default="0.5,0.65,0.8,0.85,0.9,0.95", help="artery thresholds to try")
    parser.add_argument("--vein", default="0.5,0.65,0.8", help="vein thresholds to try")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", help="write the per-scan, per-pair errors here")
    parser.add_argument("--slice-thickness", type=float, metavar="MM",
                        help="every phantom at this slice thickness (default: the plan's, thin and 2.5-3 mm)")
    parser.add_argument("--i2sr-model", default=str(REPO / "models" / "i2sr-demo.pt"),
                        help="I2SR for slices > 2 mm, as the workflow (default); 'none': trilinear")
    args = parser.parse_args()

    import pandas as pd
    import SimpleITK as sitk
    import torch

    from hipas_core.lungs import threshold_lungs
    from hipas_core.morphometry import morphometry_row
    from hipas_core.normalize import normalize_ct
    from hipas_core.sts.phantom_cases import parse_seeds, phantom_plan, phantom_scan_folder
    from hipas_core.sts.predictor import Predictor

    torch.set_num_threads(args.threads)
    predictor = Predictor(args.model, device="cpu")
    pairs = [(a, v) for a in _floats(args.artery) for v in _floats(args.vein)]
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
        standard, record = normalize_ct(ct, i2sr_model=i2sr)
        lungs = threshold_lungs(standard)
        probabilities = {}
        run_network = predictor.predict_probabilities

        def once(ct_window, timings=None, _cache=probabilities, _run=run_network):
            """The network's probabilities of this scan, computed for the first pair only."""
            if "p" not in _cache:
                _cache["p"] = _run(ct_window, timings=timings)
            return _cache["p"].copy()

        predictor.predict_probabilities = once
        for artery, vein in pairs:
            segmentation = predictor.segment(standard, record=record, thresholds=(artery, vein))
            measured, _ = morphometry_row(segmentation.standard_labels, lungs, scan_id=f"phantom-{seed}")
            row = {"seed": seed, "protocol": protocol.upper(), "slice_mm": round(float(ct.GetSpacing()[2]), 3),
                   "artery_threshold": artery, "vein_threshold": vein}
            for column, tree, key in FIGURES:
                row[column] = measured.loc[0, column] / truth[tree][key] - 1
            row["lung_volume_ml"] = measured.loc[0, "lung_volume_ml"] / truth["lung_volume_ml"] - 1
            rows.append(row)
        del predictor.predict_probabilities  # the network again for the next scan
        best = min((r for r in rows if r["seed"] == seed),
                   key=lambda r: np.mean([abs(r[c]) for c, _, _ in FIGURES]))
        print(f"seed {seed} {protocol.upper()}: best pair here artery {best['artery_threshold']:g}, "
              f"vein {best['vein_threshold']:g}", flush=True)
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    columns = [c for c, _, _ in FIGURES]
    frame["mean_abs_error"] = frame[columns].abs().mean(axis=1)
    frame["within_10"] = (frame[columns].abs() <= 0.10).sum(axis=1)
    print(f"\nmodel {Path(args.model).name}, validation phantoms {args.seeds}: mean absolute relative error of "
          "SL (mm) and BC of both trees, per protocol and threshold pair")
    print("| protocol | artery | vein | mean abs. error | cells within 10 % | lung volume mean abs. error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for protocol, part in frame.groupby("protocol"):
        table = part.groupby(["artery_threshold", "vein_threshold"]).agg(
            error=("mean_abs_error", "mean"), within=("within_10", "sum"), cells=("within_10", "size"),
            lung=("lung_volume_ml", lambda x: np.abs(x).mean()))
        for (artery, vein), cell in table.iterrows():
            print(f"| {protocol} | {artery:g} | {vein:g} | {100 * cell.error:.1f} % | "
                  f"{int(cell.within)}/{4 * int(cell.cells)} | {100 * cell.lung:.1f} % |")
        (artery, vein) = table["error"].idxmin()
        print(f"| {protocol} | **{artery:g}** | **{vein:g}** | best | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
