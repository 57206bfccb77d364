"""Export a training checkpoint as a shipped demo model: optimizer and RNG state dropped, the
inference window 160 x 192 x 224 with overlap 0.25, and per-class thresholds calibrated on the
validation phantoms (default 501-508, never used for training: odd NCCT, even CTPA, 501-504 thin
and 505-508 thick slices; written once to results/sts_validation), segmented as `hipas segment`
does and scored in their own grid (``hipas_core.sts.predictor.calibrate_thresholds``). At those
thresholds the pooled validation Dice is measured per voxel and with branch-consistent labels
(``hipas_core.sts.branch_labels``) at parent couplings 0, 0.3, 1, 3 and 10; the model's default is the
setting with the highest mean of the artery and vein Dice; with that setting the Dice with tree
fragments attached (``hipas_core.sts.fragments``) is printed too, and ``--attach-fragments``
makes that the model's default (the network runs once per phantom for all of them).
``--protocol-thresholds CTPA=0.9,0.65`` (repeatable) gives scans of that protocol their own
thresholds (``Predictor.thresholds_for``); choose them on the validation phantoms by the
end-to-end morphometry (``benchmarks/end_to_end_morphometry.py --seeds 501-508``), not the Dice:
the validation Dice printed here is at the calibrated thresholds.
``--slice-thickness-thresholds 4:NCCT=0.4,0.4`` (repeatable; without ``:PROTOCOL`` any protocol)
gives scans with slices at least that thick their own (chosen the same way, with
``benchmarks/protocol_thresholds.py --slice-thickness``).

    .venv/bin/python models/export_demo_model.py TRAIN.pt OUT.pt [--val-seeds 501-508] [--threads 1] [--half]
        [--i2sr-model I2SR.pt] [--attach-fragments] [--protocol-thresholds CTPA=A,V ...]
        [--slice-thickness-thresholds MM[:PROTOCOL]=A,V ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ((False, 0.0), (True, 0.0), (True, 0.3), (True, 1.0), (True, 3.0), (True, 10.0))  # (branch-consistent, coupling)
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "sts_validation")
    parser.add_argument("--val-seeds", default="501-508", help="validation phantom seeds for the thresholds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--half", action="store_true", help="store the weights as float16")
    parser.add_argument("--attach-fragments", action="store_true",
                        help="make attached tree fragments (hipas_core.sts.fragments) the model's default")
    parser.add_argument("--i2sr-model", help="I2SR checkpoint the thick validation scans go through (default: the "
                        "shipped i2sr-demo.pt, as hipas segment)")
    parser.add_argument("--protocol-thresholds", action="append", default=[], metavar="PROTOCOL=A,V",
                        help="artery and vein thresholds for scans of PROTOCOL (NCCT or CTPA), repeatable")
    parser.add_argument("--slice-thickness-thresholds", action="append", default=[], metavar="MM[:PROTOCOL]=A,V",
                        help="artery and vein thresholds for scans with slices at least MM thick (of PROTOCOL "
                        "only, NCCT or CTPA, where given), repeatable")
    args = parser.parse_args()
    by_thickness = []
    for item in args.slice_thickness_thresholds:
        scope, _, pair = item.partition("=")
        minimum, _, protocol = scope.partition(":")
        try:
            by_thickness.append({"min_slice_thickness_mm": float(minimum), **({"protocol": protocol} if protocol else {}),
                                 "thresholds": tuple(float(t) for t in pair.split(","))})
        except ValueError:
            parser.error(f"--slice-thickness-thresholds {item!r}: MM[:PROTOCOL]=ARTERY,VEIN")
    by_protocol = {}
    for item in args.protocol_thresholds:
        protocol, _, pair = item.partition("=")
        try:
            by_protocol[protocol.strip().upper()] = tuple(float(t) for t in pair.split(","))
        except ValueError:
            parser.error(f"--protocol-thresholds {item!r}: PROTOCOL=ARTERY,VEIN")

    import SimpleITK as sitk
    import torch

    from hipas_core.resources import shipped_model
    from hipas_core.sts.checkpoint import export_for_inference
    from hipas_core.sts.phantom_cases import parse_seeds, phantom_plan, phantom_scan_folder
    from hipas_core.sts.predictor import Predictor, calibrate_thresholds, pooled_dice

    torch.set_num_threads(args.threads)
    settings = {"window": (160, 192, 224), "overlap": 0.25, "half": args.half}
    export_for_inference(args.source, args.destination, **settings)
    scans = []
    for seed, protocol, thickness in phantom_plan(parse_seeds(args.val_seeds)):
        folder = phantom_scan_folder(seed, protocol=protocol, slice_thickness_mm=thickness, work=args.work)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
        scans.append((sitk.ReadImage(str(folder / "ct.nii.gz")), truth))
    predictor = Predictor(args.destination, device="cpu", branch_consistent=False,  # per voxel for the thresholds
                          i2sr_model=args.i2sr_model or shipped_model("i2sr-demo.pt"))  # I2SR above 2 mm
    network_output: dict = {}
    run_network = predictor.predict_probabilities

    def once_per_scan(ct_window, timings=None):
        key = (ct_window.shape, float(ct_window.sum()))
        if key not in network_output:
            network_output[key] = run_network(ct_window, timings=timings)
        return network_output[key].copy()

    predictor.predict_probabilities = once_per_scan  # calibration and every variant share one pass
    thresholds = calibrate_thresholds(predictor, scans)
    predictor.thresholds = thresholds
    scores = {}
    for consistent, coupling in VARIANTS:
        predictor.branch_consistent, predictor.branch_coupling = consistent, coupling
        scores[(consistent, coupling)] = pooled_dice(predictor, scans)
        print(f"  branch-consistent {consistent} coupling {coupling:g}: pooled validation Dice artery "
              f"{scores[(consistent, coupling)][0]:.4f} vein {scores[(consistent, coupling)][1]:.4f}", flush=True)
    consistent, coupling = max(VARIANTS, key=lambda v: sum(scores[v]))
    predictor.branch_consistent, predictor.branch_coupling = consistent, coupling
    predictor.attach_fragments = True
    attached = pooled_dice(predictor, scans)
    # printed, not chosen by: the validation Dice barely moves with it, while the end-to-end
    # morphometry can (benchmarks/RESULTS.md, session 11), so it is the caller's decision
    print(f"  + tree fragments attached: pooled validation Dice artery {attached[0]:.4f} vein {attached[1]:.4f}",
          flush=True)
    attach = args.attach_fragments
    export_for_inference(args.source, args.destination, thresholds=thresholds, branch_consistent=consistent,
                         branch_coupling=coupling, attach_fragments=attach, thresholds_by_protocol=by_protocol,
                         thresholds_by_slice_thickness=by_thickness, **settings)
    print(f"{args.destination}: thresholds artery {thresholds[0]}, vein {thresholds[1]} "
          f"(validation phantoms {args.val_seeds}); default branch-consistent {consistent}, coupling {coupling:g}, "
          f"tree fragments attached {attach}"
          + "".join(f"; {p} artery {a:g}, vein {v:g}" for p, (a, v) in sorted(by_protocol.items()))
          + "".join(f"; slices >= {r['min_slice_thickness_mm']:g} mm {r.get('protocol', 'any protocol')} artery "
                    f"{r['thresholds'][0]:g}, vein {r['thresholds'][1]:g}" for r in by_thickness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
