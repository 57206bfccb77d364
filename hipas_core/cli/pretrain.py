"""``hipas pretrain``: masked-autoencoder pre-training of the STS stage encoder.

    hipas pretrain --out MAE.pt --images FOLDER [--patch 64 96 96] [--mask-cube 32] [--mask-ratio 0.6]
                   [--width 8] [--blocks 0 1 1 1 1] [--steps 1000] [--lr 1e-3] [--seed 0]
    hipas pretrain --out MAE.pt --phantom-seeds 1-12 [--cache results/sts_cache] ...
    hipas train ... --width 8 --blocks 0 1 1 1 1 --encoder-init MAE.pt [--no-freeze-encoder]

``--images``: unlabelled CTs (``*.nii``/``*.nii.gz``, any grid), brought to the standardized grid,
cropped to the lungs and given their vesselness as training does. ``--width``/``--blocks`` must
be those of the cascade trained later. ``--resume`` continues from ``--out`` (checked before any
data is prepared: a file it cannot continue from is one error line, exit 2). Progress: a bar on
a terminal, else (and with ``--no-progress``) log lines, and a line at every checkpoint.
"""

from __future__ import annotations

import argparse

from hipas_core.cli._training_options import add_training_run_options


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of unlabelled CTs (NIfTI, any grid)")
    source.add_argument("--phantom-seeds", help="phantom seeds, e.g. 1-12 (labels unused)")
    parser.add_argument("--cache", help="cache folder for prepared phantoms (as hipas train --cache)")
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 96, 96), metavar=("Z", "Y", "X"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.6, help="fraction of cubes masked (paper 0.6)")
    parser.add_argument("--mask-cube", type=int, default=32, help="mask cube side in voxels (paper 32)")
    parser.add_argument("--width", type=int, default=24, help="stage base width (must match hipas train --width)")
    parser.add_argument("--blocks", type=int, nargs=5, default=(1, 1, 2, 2, 1), help="residual blocks per resolution "
                        "(must match hipas train --blocks)")
    parser.add_argument("--seed", type=int, default=0)
    add_training_run_options(parser)


def _folder_volumes(folder: str, sigmas: tuple[float, ...]) -> list:
    from pathlib import Path

    from hipas_core.errors import InvalidInputError
    from hipas_core.io import read_ct
    from hipas_core.sts.pretrain import prepare_unlabelled

    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a folder")
    files = sorted(p for p in root.iterdir() if p.name.lower().endswith((".nii", ".nii.gz")))
    if not files:
        raise InvalidInputError(f"{root}: no NIfTI CTs (*.nii, *.nii.gz) found")
    return [prepare_unlabelled(read_ct(path), vesselness_sigmas_mm=sigmas) for path in files]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.cascade import IMAGE_CHANNELS, PRIOR_CHANNELS
    from hipas_core.sts.network import SIZE_MULTIPLE, StageConfig
    from hipas_core.sts.pretrain import PretrainConfig, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mask_cube <= 0 or args.mask_cube % SIZE_MULTIPLE:
        raise InvalidInputError(f"--mask-cube {args.mask_cube}: must be a positive multiple of {SIZE_MULTIPLE}")
    if any(p <= 0 or p % args.mask_cube for p in args.patch):
        raise InvalidInputError(f"--patch {tuple(args.patch)}: every side must be a multiple of --mask-cube {args.mask_cube}")
    if not 0.0 < args.mask_ratio < 1.0:
        raise InvalidInputError(f"--mask-ratio {args.mask_ratio}: must lie strictly between 0 and 1")
    if args.resume and Path(args.out).is_file():  # before the slow data preparation
        from hipas_core.sts.checkpoint import load_checkpoint
        from hipas_core.sts.pretrain import CHECKPOINT_KIND, RESUME_KEYS

        load_checkpoint(args.out, kind=CHECKPOINT_KIND, require=RESUME_KEYS)
    sigmas = tuple(args.vesselness_sigmas)
    if args.images:
        volumes = _folder_volumes(args.images, sigmas)
        description = {"images": str(args.images)}
    else:
        from hipas_core.sts import phantom_cases

        plan = phantom_cases.phantom_plan(phantom_cases.parse_seeds(args.phantom_seeds))
        if not plan:
            raise InvalidInputError(f"--phantom-seeds {args.phantom_seeds!r}: no seeds")
        volumes = [phantom_cases.phantom_case(s, protocol=p, slice_thickness_mm=t, cache_dir=args.cache,
                                              vesselness_sigmas_mm=sigmas).image for s, p, t in plan]
        description = {"phantoms": {"size": "small", "plan": plan}}
    stage = StageConfig(in_channels=IMAGE_CHANNELS + PRIOR_CHANNELS, width=args.width, blocks_per_level=tuple(args.blocks))
    config = PretrainConfig(
        stage=stage.to_dict(), patch=tuple(args.patch), batch_size=args.batch_size, steps=args.steps, lr=args.lr,
        mask_ratio=args.mask_ratio, mask_cube=args.mask_cube, seed=args.seed, checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes, device=args.device,
    )
    summary = pretrain(config, volumes, output=args.out, resume=args.resume, progress=not args.no_progress,
                       data_description=description)
    history = summary["history"]
    first = history[0]["loss"] if history else float("nan")
    last = history[-1]["loss"] if history else float("nan")
    print(f"{args.out}: {summary['step']} steps on {len(volumes)} volumes; "
          f"masked L2 {first:.4f} -> {last:.4f}")
    return 0
