"""Where the artery/vein Dice is lost: the network's vessel mask vs its artery/vein split.

On validation phantoms (default 501-508; never trained on), the model's probabilities are taken
in the standardized grid (the lung crop ``hipas segment`` works in: normalized, I2SR above 2 mm,
confined to the thoracic cavity) with the phantom truth brought there by nearest neighbour. On the
same vessel mask (the model's thresholds, exclusive labels) the artery and vein Dice are scored
for: the labels per voxel; one class per skeleton branch (``hipas_core.sts.branch_labels``,
coupling 0 and 1); and three upper bounds that use the truth: every branch takes its true
majority class ("branch oracle"), every branch pair meeting at a junction with the same true class
coupled ("true links", coupling 1 and 10; the network decides the rest), and every voxel of the
mask takes its true class ("mask oracle": what a perfect artery/vein split of this mask scores).

    .venv/bin/python benchmarks/av_assignment_bounds.py [--model M] [--seeds 501-508] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def true_link_labels(probabilities, labels, truth, *, coupling: float) -> np.ndarray:
    """Branch labels where exactly the junction pairs of one true class are coupled."""
    from hipas_core.sts import branch_labels

    vessel = labels > 0
    skeleton, junctions, branch_id, owner = branch_labels.skeleton_branches(vessel)
    count = int(branch_id.max()) + 1
    size = np.bincount(owner, minlength=count)
    true_artery = np.bincount(owner, weights=truth[vessel] == 1, minlength=count)
    true_vein = np.bincount(owner, weights=truth[vessel] == 2, minlength=count)
    true_class = np.where(true_artery >= true_vein, 1, 2)
    share = probabilities[0][vessel] / np.maximum(probabilities[0][vessel] + probabilities[1][vessel], 1e-9)
    cost_vein = np.bincount(owner, weights=share, minlength=count)
    cost_artery = np.bincount(owner, weights=1 - share, minlength=count)
    pairs = branch_labels._junction_pairs(skeleton, junctions, branch_id)
    pairs = pairs[true_class[pairs[:, 0]] == true_class[pairs[:, 1]]]
    weights = coupling * np.minimum(size[pairs[:, 0]], size[pairs[:, 1]])
    is_artery = branch_labels._min_cut_labels(cost_artery, cost_vein, pairs, weights)
    out = labels.copy()
    out[vessel] = np.where(is_artery[owner], 1, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--seeds", default="501-508")
    parser.add_argument("--work", default=str(REPO / "results" / "sts_validation"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch

    from hipas_core.io import read_ct
    from hipas_core.lungs import lung_box_and_cavity
    from hipas_core.normalize import normalize_ct, to_standard_grid, window
    from hipas_core.resources import shipped_model
    from hipas_core.sts.branch_labels import branch_consistent_labels
    from hipas_core.sts.phantom_cases import parse_seeds, phantom_plan, phantom_scan_folder
    from hipas_core.sts.predictor import LUNG_MARGIN_MM, Predictor, exclusive_labels

    torch.set_num_threads(args.threads)
    predictor = Predictor(args.model, device="cpu", i2sr_model=shipped_model("i2sr-demo.pt"), progress="off")
    methods = {
        "per voxel": lambda p, lab, t: lab,
        "branch, coupling 0": lambda p, lab, t: branch_consistent_labels(p, lab, coupling=0),
        "branch, coupling 1": lambda p, lab, t: branch_consistent_labels(p, lab, coupling=1),
        "bound: true links, coupling 1": lambda p, lab, t: true_link_labels(p, lab, t, coupling=1),
        "bound: true links, coupling 10": lambda p, lab, t: true_link_labels(p, lab, t, coupling=10),
        "bound: branch oracle": lambda p, lab, t: branch_consistent_labels(
            np.stack([(t == 1) + 1e-3, (t == 2) + 1e-3]).astype(np.float32), lab, coupling=0),
        "bound: mask oracle": lambda p, lab, t: np.where(lab > 0, np.where(t > 0, t, lab), 0),
    }
    scores = {name: [] for name in methods}
    union = []
    for seed, protocol, thickness in phantom_plan(parse_seeds(args.seeds)):
        folder = phantom_scan_folder(seed, protocol=protocol, slice_thickness_mm=thickness, work=args.work)
        ct = read_ct(folder / "ct.nii.gz")
        standard, _ = normalize_ct(ct, i2sr_model=predictor._i2sr_for(ct), device="cpu")
        box, cavity = lung_box_and_cavity(standard, margin_mm=LUNG_MARGIN_MM)
        probabilities = predictor.predict_probabilities(window(sitk.GetArrayViewFromImage(standard)[box])) * cavity[box]
        truth = sitk.GetArrayFromImage(to_standard_grid(sitk.ReadImage(str(folder / "labels.nii.gz")),
                                                        interpolation="nearest"))[box]
        labels = exclusive_labels(probabilities, predictor.thresholds)
        union.append(dice(labels > 0, truth > 0))
        for name, method in methods.items():
            out = method(probabilities, labels, truth)
            scores[name].append((dice(out == 1, truth == 1), dice(out == 2, truth == 2)))
        print(f"seed {seed} ({protocol}, {thickness or 'thin'}): vessel-mask Dice {union[-1]:.3f}", flush=True)
    print(f"\nmean over {len(union)} phantoms, standardized grid; vessel mask (artery + vein) Dice {np.mean(union):.3f}")
    print(f"{'labels':32s} {'DSC artery':>10s} {'DSC vein':>9s}")
    for name, rows in scores.items():
        rows = np.array(rows)
        print(f"{name:32s} {rows[:, 0].mean():10.3f} {rows[:, 1].mean():9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
