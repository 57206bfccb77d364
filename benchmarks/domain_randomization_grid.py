"""Picture grid of domain-randomized training samples (``hipas_core.sts.randomization``).

Builds one small phantom itself (``phantom_case(seed, protocol="ncct", cache_dir=None)``, about
10 s), takes a 48-slice slab of its lung crop around the axial slice with the most vessel voxels,
and shows that slice as stored (CT and vesselness) and under ``--draws`` random draws of the
default preset (every patch randomized), each beside the vesselness recomputed from the
randomized CT, with the artery (red) and vein (blue) outlines of the unchanged labels. Also
prints what a training patch of 48 x 96 x 96 pays for it (CPU time, one thread): the vesselness
recomputation (on the patch alone, and on the patch plus the halo training cuts), the
randomization itself, and a whole patch of ``make_batch`` with the option off and on.

    .venv/bin/python benchmarks/domain_randomization_grid.py [--seed 1] [--draws 8] \
        [--out docs/domain_randomization.png]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

SLAB_SLICES = 48
TRANSFORMS = ("patch", "tissue", "contrast", "bias", "blur", "noise", "sharpen", "fov")
TIMED_PATCH = (48, 96, 96)


def _cpu_ms(function, repeats: int) -> float:
    """Median CPU time (ms, this process, one thread) of ``function()`` after one warm-up call;
    CPU time rather than wall time, since the machine may be shared."""
    import numpy as np

    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return float(np.median(times)) * 1000


def _timings(case, *, repeats: int = 7) -> list[tuple[str, float]]:
    """What domain randomization costs per 48 x 96 x 96 training patch (CPU ms, one thread)."""
    from dataclasses import asdict, replace

    import numpy as np

    from hipas_core.sts.batches import make_batch, randomization_halo
    from hipas_core.sts.data import (
        PATCH_VESSELNESS_CHUNK_VOXELS,
        Augmentation,
        network_input,
        sample_patch,
    )
    from hipas_core.sts.randomization import DomainRandomization, draw_randomization
    from hipas_core.sts.train_config import TrainConfig

    rng = np.random.default_rng(1)
    every_transform = replace(DomainRandomization(), **{f"{name}_probability": 1.0 for name in TRANSFORMS})
    config = TrainConfig(patch=TIMED_PATCH)
    halo = randomization_halo(config)
    with_halo = tuple(p + 2 * h for p, h in zip(TIMED_PATCH, halo, strict=True))
    patch = sample_patch(case, TIMED_PATCH, rng)["image"][0]
    big = sample_patch(case, with_halo, rng)
    rows = [
        (f"vesselness of a {'x'.join(map(str, TIMED_PATCH))} patch, one slab (network_input's default)",
         _cpu_ms(lambda: network_input(patch), repeats)),
        (f"vesselness of a {'x'.join(map(str, TIMED_PATCH))} patch, {PATCH_VESSELNESS_CHUNK_VOXELS:,}-voxel slabs",
         _cpu_ms(lambda: network_input(patch, chunk_voxels=PATCH_VESSELNESS_CHUNK_VOXELS), repeats)),
        (f"vesselness of the patch + halo {'x'.join(map(str, with_halo))}, as training recomputes it",
         _cpu_ms(lambda: network_input(big["image"][0], chunk_voxels=PATCH_VESSELNESS_CHUNK_VOXELS), repeats)),
        ("randomization of the patch + halo (all transforms drawn)",
         _cpu_ms(lambda: draw_randomization(every_transform, with_halo, rng).apply(big["image"][0], big["labels"]),
                 repeats)),
    ]
    for name, probability in (("off", 0.8), ("default", 0.8)):
        augmentation = asdict(Augmentation())
        augmentation["domain_randomization"] = asdict(DomainRandomization.preset(name, patch_probability=probability))
        batch_config = TrainConfig(patch=TIMED_PATCH, augmentation=augmentation)
        stream = np.random.default_rng(2)
        rows.append((f"one training patch (make_batch, batch 1), --domain-randomization {name}",
                     _cpu_ms(lambda c=batch_config, r=stream: make_batch([case], c, r), 4 * repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="phantom seed (NCCT)")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the randomization draws")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "domain_randomization.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from PIL import Image

    from hipas_core.sts.data import network_input
    from hipas_core.sts.phantom_cases import phantom_case
    from hipas_core.sts.randomization import DomainRandomization, draw_randomization

    torch.set_num_threads(1)
    case = phantom_case(args.seed, protocol="ncct", cache_dir=None)
    settings = DomainRandomization.preset("default", patch_probability=1.0)
    rng = np.random.default_rng(args.random_seed)

    per_slice = (case.labels > 0).sum(axis=(1, 2))
    centre = int(per_slice.argmax())
    first = int(np.clip(centre - SLAB_SLICES // 2, 0, max(case.shape[0] - SLAB_SLICES, 0)))
    slab = slice(first, first + SLAB_SLICES)
    row = centre - first
    ct, labels, lungs = case.image[0, slab].astype(np.float32), case.labels[slab], case.lungs[slab]

    panels = [("as stored", case.image[0, centre].astype(np.float32), case.image[1, centre].astype(np.float32))]
    for index in range(args.draws):
        draw = draw_randomization(settings, ct.shape, rng)
        image = network_input(draw.apply(ct, labels, lungs=lungs))
        panels.append((f"draw {index + 1}: {', '.join(draw.applied)}", image[0, row].astype(np.float32),
                       image[1, row].astype(np.float32)))

    columns = 3
    rows = -(-len(panels) // columns)
    height, width = panels[0][1].shape
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(2 * columns * width / 100, rows * (height + 26) / 100),
                                dpi=100, squeeze=False)
    outline = labels[row]
    for ax in axes.ravel():
        ax.set_axis_off()
    for index, (title, ct_slice, vesselness_slice) in enumerate(panels):
        ct_ax, v_ax = axes[index // columns, 2 * (index % columns)], axes[index // columns, 2 * (index % columns) + 1]
        ct_ax.imshow(ct_slice, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        v_ax.imshow(vesselness_slice, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for ax in (ct_ax, v_ax):
            for tree, colour in ((1, "red"), (2, "deepskyblue")):
                if (outline == tree).any():
                    ax.contour(outline == tree, levels=[0.5], colors=colour, linewidths=0.4)
        ct_ax.set_title(title, fontsize=5.5, loc="left")
        v_ax.set_title("vesselness", fontsize=5.5, loc="left")
    figure.subplots_adjust(left=0.002, right=0.998, bottom=0.002, top=0.97, wspace=0.02, hspace=0.12)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    buffer.seek(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # a 128-colour palette keeps the noisy CT panels small (the picture stays < 300 KB)
    Image.open(buffer).convert("RGB").quantize(colors=128).save(args.out, optimize=True)
    print(f"{args.out}: phantom {args.seed} (NCCT), axial slice {centre} of the lung crop, "
          f"{args.draws} draws, {args.out.stat().st_size / 1024:.0f} KB")

    print("CPU time, one thread, median:")
    for name, milliseconds in _timings(case):
        print(f"  {name}: {milliseconds:.0f} ms")


if __name__ == "__main__":
    main()
