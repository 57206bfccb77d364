"""Branch levels from an annotation (``hipas_core.levels.vessel_levels``) against the phantom's
own level map: voxel agreement per phantom and pooled, per tree, and the confusion of levels.

Small phantoms (``PhantomSpec.from_seed(seed, size="small")``), generated once and cached as
.npz under ``--cache``. Acceptance (issue 3): agreement >= 0.90 of vessel voxels.

    .venv/bin/python benchmarks/validate_levels.py [--seeds 1-10] [--cache results/bench_cache]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(seed: int, cache: Path) -> dict:
    path = cache / f"levels_small_{seed}.npz"
    if not path.is_file():
        import SimpleITK as sitk

        from hipas_core.atomic import atomic_path
        from hipas_core.phantom import PhantomSpec, generate_phantom

        phantom = generate_phantom(PhantomSpec.from_seed(seed, size="small"))
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, labels=sitk.GetArrayFromImage(phantom.labels), levels=sitk.GetArrayFromImage(phantom.levels),
                lungs=sitk.GetArrayFromImage(phantom.lungs), spacing=np.array(phantom.labels.GetSpacing()[::-1]),
            )
    return dict(np.load(path))


def main(argv: list[str] | None = None) -> int:
    from hipas_core.levels import level_agreement, vessel_levels
    from hipas_core.sts.phantom_cases import parse_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--cache", type=Path, default=Path("results/bench_cache"))
    args = parser.parse_args(argv)
    confusion = np.zeros((4, 4), np.int64)
    scores = []
    for seed in parse_seeds(args.seeds):
        case = load(seed, args.cache)
        started = time.perf_counter()
        levels = vessel_levels(case["labels"], spacing=tuple(case["spacing"]), lungs=case["lungs"])
        seconds = time.perf_counter() - started
        truth = case["levels"]
        per_tree = [level_agreement(levels * (case["labels"] == t), truth * (case["labels"] == t)) for t in (1, 2)]
        scores.append(level_agreement(levels, truth))
        vessel = truth > 0
        np.add.at(confusion, (truth[vessel] - 1, np.clip(levels[vessel], 1, 4) - 1), 1)
        print(f"seed {seed:3d}: agreement {scores[-1]:.3f} (artery {per_tree[0]:.3f}, vein {per_tree[1]:.3f}), "
              f"{seconds:.1f} s", flush=True)
    pooled = np.trace(confusion) / confusion.sum()
    print(f"mean {np.mean(scores):.3f}, min {np.min(scores):.3f}, pooled over {confusion.sum()} vessel voxels "
          f"{pooled:.3f}; phantoms >= 0.90: {sum(s >= 0.90 for s in scores)}/{len(scores)}")
    print("confusion (rows: phantom level 0-3, columns: derived level 0-3):")
    for level, row in enumerate(confusion):
        print(f"  {level}: " + " ".join(f"{v:7d}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
