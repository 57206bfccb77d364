"""``hipas train``: train an STS cascade (or, with ``--baseline``, the single-stage U-Net).

    hipas train --out CKPT.pt --phantom-seeds 1-12 --val-seeds 501-502 [--cache results/sts_cache]
                [--patch 64 96 96] [--width 8] [--blocks 0 1 1 1 1] [--steps 400] [--lr 1e-3]
                [--mode joint|stagewise] [--seed 0] [--device cpu|cuda] [--max-minutes 25]
    hipas train --out CKPT.pt --data FOLDER ...     # real scans with artery/vein masks
    hipas train --out CKPT.pt --prepared MANIFEST.tsv|DIR [--workers N] ...   # prepared training set
    hipas train --out BASE.pt --baseline ...        # plain 3D U-Net, about the cascade's parameters

``--prepared``: a training set written by ``hipas prepare-training`` (+ ``hipas training-manifest``):
the cases stay on disk, memory-mapped, and the patches are drawn in ``--workers`` DataLoader
processes (``hipas_core.sts.streaming``), exactly the patches the in-memory path draws for the
same cases; the manifest's val split gives the validation Dice (a folder holding ``manifest.tsv``,
such as the workflow's ``results/training_set``, uses it; a folder of cases: all train).
``--workers`` > 1 needs ``--patch-stream per-patch``; with ``--cached-priors`` the frozen stages'
priors are written beside the checkpoint (``CKPT folder/priors``, named by a digest of the frozen
weights) and memory-mapped by the workers; ``--synthetic-ncct`` needs CTPA cases prepared with
``--synthetic-ncct``. Every run writes a CSV log beside the checkpoint (CKPT.log.csv:
step, loss, validation Dice, patches/s, data-wait fraction).

Phantoms: odd seeds NCCT, even CTPA; the second half of the seed list gets 2.5/3 mm slices
(``hipas_core.sts.phantom_cases.phantom_plan``); ``--full-phantom-seeds`` adds full-size phantoms (adult
chests, as real scans are), planned the same way. ``--resume`` continues from CKPT.pt's saved state.
``--domain-randomization default`` randomizes the patches' appearance (``hipas_core.sts.
randomization``), so that weights trained on phantoms depend less on how phantoms look (meant
for real CT); its settings are stored in the checkpoint's training config.
Checkpoints read (``--encoder-init``, ``--init-from``, ``--resume``) are checked before any data
is prepared: a file that is not one (or carries code, which never runs) is one error line, exit 2.
Progress: a bar on a terminal, else (and with ``--no-progress``) log lines, and a line at every
validation and checkpoint.

Distributed data-parallel (``hipas_core.sts.distributed``): started by ``torchrun --nproc-per-node N
hipas train ...`` (or as N tasks of one ``srun`` step) the run trains on N ranks, NCCL with
``--device cuda`` (one GPU per rank), gloo on the CPU. ``--batch-size`` is per rank, or give
``--global-batch-size`` (split evenly over the ranks, so a resumed run on another number of ranks
continues the same patch stream). Rank 0 writes ``--out`` and reports; every rank reads the same
data and checkpoints (a shared file system on several nodes).
"""

from __future__ import annotations

import argparse

from hipas_core.cli._training_options import (
    add_i2sr_option,
    add_training_run_options,
    i2sr_model_path,
    i2sr_record,
)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    parser.add_argument("--baseline", action="store_true", help="train the single-stage U-Net baseline (plain Dice)")
    parser.add_argument("--phantom-seeds", default="1-12", help="training phantom seeds, e.g. 1-12 (default)")
    parser.add_argument("--full-phantom-seeds", metavar="SEEDS",
                        help="full-size phantom seeds (adult chest, 512 matrix) added to the training phantoms, "
                        "e.g. 201-208 (planned as --phantom-seeds: odd NCCT, even CTPA, second half thick); "
                        "default none")
    parser.add_argument("--val-seeds", default="501-502", help="validation phantom seeds (default 501-502)")
    parser.add_argument("--data", help="folder of real annotated scans instead of phantoms")
    parser.add_argument("--prepared", metavar="MANIFEST_OR_DIR",
                        help="a prepared training set (hipas training-manifest TSV, a folder holding manifest.tsv, "
                        "or a folder of case folders) "
                        "instead of phantoms: cases memory-mapped, patches drawn in --workers processes")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="with --prepared: DataLoader worker processes drawing the patches (default 0: in the "
                        "training process; > 1 needs --patch-stream per-patch)")
    parser.add_argument("--cache", default="results/sts_cache", help="cache folder for prepared phantoms")
    add_i2sr_option(parser)
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 192, 192), metavar=("Z", "Y", "X"))
    parser.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="inference window (default: patch)")
    parser.add_argument("--width", type=int, default=24, help="stage base width (paper 24)")
    parser.add_argument("--blocks", type=int, nargs=5, default=(1, 1, 2, 2, 1), help="residual blocks per resolution")
    parser.add_argument("--stage-blocks", nargs="+", metavar="B,B,B,B,B",
                        help="cascade: residual blocks per resolution for each stage (one comma list per stage, "
                        "e.g. 0,0,1,1,1 0,0,1,1,1 0,0,1,1,1 1,1,1,1,1); default: --blocks for every stage")
    parser.add_argument("--baseline-widths", type=int, nargs=5, help="U-Net widths per resolution (default: full "
                        "resolution = --width, deep levels widened to match the cascade's parameter count)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1, help="patches per step (per rank in a distributed run)")
    parser.add_argument("--global-batch-size", type=int, metavar="G",
                        help="distributed: patches per step over all ranks (G / ranks each; instead of --batch-size)")
    parser.add_argument("--patch-stream", choices=("sequential", "per-patch"), default="sequential",
                        help="sequential: one random stream as a single process draws it (default; every rank "
                        "advances it over the whole global batch); per-patch: each patch from its own seed "
                        "(seed, step, position), each rank draws only its own (for many GPUs)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-schedule", choices=("constant", "poly"), default="constant",
                        help="poly: lr x (1 - step/steps)^0.9 (nnU-Net); default constant")
    parser.add_argument("--betas", type=float, nargs=2, default=(0.99, 0.999))
    parser.add_argument("--mode", choices=("joint", "stagewise"), default="joint")
    parser.add_argument("--stage-steps", type=int, nargs="+", metavar="N",
                        help="stagewise: optimizer steps per stage (must sum to --steps; default: even split)")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="stagewise: start each stage from scratch (default: from the previous stage's weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level-weight-cap", type=float, help="clip w^i of eq. 15 at this value (default: exact)")
    parser.add_argument("--bce-weight", type=float, default=0.0,
                        help="add this weight x voxel-wise cross-entropy to eq. 17 (cascade) or to the plain Dice (baseline) (default 0: the paper's losses)")
    parser.add_argument("--stage-loss", choices=("paper", "dice"), default="paper",
                        help="cascade: paper = eq. 17 per stage (default); dice = plain soft Dice per tree on the "
                        "stage's targets (faster to rise on a small CPU budget)")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--encoder-init", metavar="CKPT", help="start every stage's encoder from a `hipas pretrain` checkpoint")
    parser.add_argument("--no-freeze-encoder", action="store_true", help="with --encoder-init: train the encoder too (default: frozen)")
    parser.add_argument("--synthetic-ncct", type=float, default=0.0, metavar="P",
                        help="probability of replacing a CTPA training patch's case by its synthetic non-contrast copy")
    parser.add_argument("--domain-randomization", choices=("off", "default"), default="off",
                        help="randomize the appearance of training patches, labels exact (hipas_core.sts."
                        "randomization): tissue intensities, contrast phase, bias field, blur, noise, sharp kernel, "
                        "truncated field of view; the vesselness channel is recomputed from the randomized CT "
                        "(about 0.3 s CPU per 48x96x96 patch on one thread; with --cached-priors the frozen stages' "
                        "priors still come from the clean case). default: every transform with its own "
                        "probability; off (default): none. The settings are recorded in the checkpoint")
    parser.add_argument("--domain-randomization-probability", type=float, default=0.8, metavar="P",
                        help="with --domain-randomization default: probability that a patch is randomized at all "
                        "(default 0.8)")
    parser.add_argument("--cached-priors", action="store_true",
                        help="stagewise: stage s >= 1 reads the frozen stages' prior map from a per-case cache "
                        "computed over the whole crop (as inference does) instead of rerunning them on every patch; "
                        "training on phantoms, the priors are also kept on disk under --cache/priors, with --prepared "
                        "in a priors folder beside --out (named by case, stage and a digest of the frozen weights), "
                        "so a resumed run reads them")
    parser.add_argument("--skeleton-recall-weight", type=float, default=0.0, metavar="W",
                        help="add W x Skeleton Recall (Kirchhoff et al. 2024) on the tubed centrelines of the targets "
                        "(default 0: off)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last 3D memory format for weights and batches (faster steps on CPUs)")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start from this checkpoint's weights (matched by name; residual blocks it lacks start "
                        "as identities); every stage counts as trained, so stagewise warm start keeps them")
    add_training_run_options(parser)


def _stage_blocks(text: list[str] | None, stages: int) -> tuple[tuple[int, ...], ...] | None:
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.network import DOWNSAMPLINGS

    if not text:
        return None
    try:
        blocks = tuple(tuple(int(b) for b in item.split(",")) for item in text)
    except ValueError:
        raise InvalidInputError(f"--stage-blocks {' '.join(text)}: comma-separated integers expected") from None
    if len(blocks) != stages or any(len(b) != DOWNSAMPLINGS + 1 or min(b) < 0 for b in blocks):
        raise InvalidInputError(f"--stage-blocks {' '.join(text)}: {stages} lists of {DOWNSAMPLINGS + 1} "
                                "non-negative counts are needed")
    return blocks


def _check_checkpoints(args: argparse.Namespace) -> None:
    """Read every checkpoint this run starts from (``InvalidInputError`` for a bad one) before the
    slow data preparation, so a wrong file fails at once and leaves nothing behind."""
    from pathlib import Path

    from hipas_core.sts.checkpoint import load_checkpoint
    from hipas_core.sts.pretrain import CHECKPOINT_KIND

    kind = "baseline" if args.baseline else "cascade"
    if args.encoder_init:
        load_checkpoint(args.encoder_init, kind=CHECKPOINT_KIND)
    if args.init_from:
        load_checkpoint(args.init_from, kind=kind)
    if args.resume and Path(args.out).is_file():
        load_checkpoint(args.out, kind=kind)


def _prior_cache_dir(args: argparse.Namespace) -> str | None:
    """Where ``--cached-priors`` keeps the priors on disk: the phantom cache's ``priors`` folder;
    beside the checkpoint with ``--prepared`` (the workers read them there); none with ``--data``
    (in memory). As the options give it (relative stays relative): the checkpoint records it, and
    a machine's absolute path does not belong in a model file."""
    from pathlib import Path

    if not args.cached_priors or args.data:
        return None
    if args.prepared:
        return str(Path(args.out).parent / "priors")
    return str(Path(args.cache) / "priors")


def _prepared_set(args: argparse.Namespace):
    """(training cases, validation cases, data description, patch source) of ``--prepared``;
    the cases are memory-mapped (nothing is read until a patch is cut)."""
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.prepared import load_prepared_case, read_case_record
    from hipas_core.sts.streaming import PreparedPatches
    from hipas_core.sts.training_set import resolve_training_set

    if args.workers < 0:
        raise InvalidInputError(f"--workers {args.workers}: 0 or more is needed")
    training_set = resolve_training_set(args.prepared)
    cases = [load_prepared_case(folder) for folder in training_set.train]
    val_cases = [load_prepared_case(folder) for folder in training_set.val]
    wanted = tuple(float(s) for s in args.vesselness_sigmas)
    for folder in training_set.train + training_set.val:  # the input channels inference will compute
        used = tuple(float(s) for s in read_case_record(folder)["settings"]["vesselness_sigmas_mm"])
        if used != wanted:
            raise InvalidInputError(f"{folder}: prepared with vesselness sigmas {used}, this run uses "
                                    f"{wanted} (--vesselness-sigmas)")
    description = {"prepared": {"cases": [c.name for c in cases], "validation": [c.name for c in val_cases],
                                "excluded": [list(item) for item in training_set.excluded]}}
    return cases, val_cases, description, PreparedPatches(training_set.train, workers=args.workers)


def _batch_per_rank(args: argparse.Namespace, world: int) -> int:
    from hipas_core.errors import InvalidInputError

    if args.global_batch_size is None:
        if args.batch_size < 1:
            raise InvalidInputError(f"--batch-size {args.batch_size}: at least 1 is needed")
        return args.batch_size
    if args.global_batch_size < world or args.global_batch_size % world:
        raise InvalidInputError(f"--global-batch-size {args.global_batch_size}: a multiple of the {world} ranks is needed")
    return args.global_batch_size // world


def run(args: argparse.Namespace) -> int:
    from hipas_core.sts import distributed

    world = distributed.detect()
    batch_size = _batch_per_rank(args, world.world_size if world else 1)  # every rank fails alike, before joining
    env, device = distributed.setup(args.device)
    try:
        return _run(args, batch_size=batch_size, device=device, main=env is None or env.rank == 0)
    finally:
        distributed.teardown()


def _run(args: argparse.Namespace, *, batch_size: int, device: str, main: bool) -> int:
    from dataclasses import asdict

    import torch

    from hipas_core.errors import InvalidInputError
    from hipas_core.sts import data as sts_data
    from hipas_core.sts import phantom_cases
    from hipas_core.sts.baseline import UNetConfig, matching_unet_config
    from hipas_core.sts.cascade import CascadeConfig, STSCascade
    from hipas_core.sts.network import SIZE_MULTIPLE, StageConfig, count_parameters
    from hipas_core.sts.randomization import DomainRandomization
    from hipas_core.sts.training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    for name, size in (("--patch", args.patch), ("--window", args.window or args.patch)):
        if any(s % SIZE_MULTIPLE for s in size):
            raise InvalidInputError(f"{name} {tuple(size)}: every side must be a multiple of {SIZE_MULTIPLE}")
    sigmas = tuple(args.vesselness_sigmas)
    if args.encoder_init and args.baseline:
        raise InvalidInputError(f"{args.encoder_init}: --encoder-init applies to the cascade, not to --baseline")
    if args.cached_priors and (args.baseline or args.mode != "stagewise"):
        raise InvalidInputError("--cached-priors needs a cascade trained with --mode stagewise")
    if not 0.0 <= args.synthetic_ncct <= 1.0:
        raise InvalidInputError(f"--synthetic-ncct {args.synthetic_ncct}: a probability in [0, 1] is needed")
    if not 0.0 <= args.domain_randomization_probability <= 1.0:
        raise InvalidInputError(f"--domain-randomization-probability {args.domain_randomization_probability}: "
                                "a probability in [0, 1] is needed")
    randomization = DomainRandomization.preset(args.domain_randomization,
                                               patch_probability=args.domain_randomization_probability)
    _check_checkpoints(args)
    patch_source = None
    if args.data and args.prepared:
        raise InvalidInputError("give --data or --prepared, not both")
    if args.workers and not args.prepared:
        raise InvalidInputError("--workers applies to --prepared")
    if args.full_phantom_seeds and (args.data or args.prepared):
        raise InvalidInputError("--full-phantom-seeds adds phantoms to --phantom-seeds: not with --data or --prepared")
    if args.prepared:
        cases, val_cases, description, patch_source = _prepared_set(args)
    elif args.data:
        i2sr = i2sr_model_path(args)
        cases = sts_data.folder_cases(args.data, vesselness_sigmas_mm=sigmas, i2sr_model=i2sr)
        val_cases = []
        description = {"folder": str(args.data), "cases": [c.name for c in cases], "i2sr": i2sr_record(i2sr)}
    else:
        i2sr = i2sr_model_path(args)
        train_plan = phantom_cases.phantom_plan(phantom_cases.parse_seeds(args.phantom_seeds))
        val_plan = phantom_cases.phantom_plan(phantom_cases.parse_seeds(args.val_seeds))
        full_plan = phantom_cases.phantom_plan(phantom_cases.parse_seeds(args.full_phantom_seeds)) if args.full_phantom_seeds else []
        cases = [phantom_cases.phantom_case(s, protocol=p, slice_thickness_mm=t, size=size, cache_dir=args.cache,
                                            vesselness_sigmas_mm=sigmas, i2sr_model=i2sr)
                 for size, plan in (("small", train_plan), ("full", full_plan)) for s, p, t in plan]
        val_cases = [phantom_cases.phantom_case(s, protocol=p, slice_thickness_mm=t, cache_dir=args.cache,
                                                vesselness_sigmas_mm=sigmas, i2sr_model=i2sr) for s, p, t in val_plan]
        description = {"phantoms": {"size": "small", "train": train_plan, "validation": val_plan},
                       "i2sr": i2sr_record(i2sr)}
        if full_plan:
            description["phantoms"]["full_size_train"] = full_plan
    cascade_config = CascadeConfig(stage=StageConfig(width=args.width, blocks_per_level=tuple(args.blocks)),
                                   stage_blocks=_stage_blocks(args.stage_blocks, CascadeConfig().stages))
    if args.stage_blocks and args.baseline:
        raise InvalidInputError("--stage-blocks applies to the cascade, not to --baseline")
    if args.baseline:
        target = count_parameters(STSCascade(cascade_config))
        model_config = (UNetConfig(widths=tuple(args.baseline_widths)) if args.baseline_widths
                        else matching_unet_config(target, base_width=args.width)).to_dict()
    else:
        model_config = cascade_config.to_dict()
    config = TrainConfig(
        kind="baseline" if args.baseline else "cascade", model_config=model_config, patch=tuple(args.patch),
        batch_size=batch_size, steps=args.steps, lr=args.lr, betas=tuple(args.betas), mode=args.mode,
        warm_start=not args.no_warm_start, stage_steps=tuple(args.stage_steps) if args.stage_steps else None, seed=args.seed, level_weight_cap=args.level_weight_cap, bce_weight=args.bce_weight, stage_loss=args.stage_loss, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes, device=device,
        inference_window=tuple(args.window) if args.window else None, vesselness_sigmas_mm=sigmas,
        encoder_init=args.encoder_init, freeze_encoder=not args.no_freeze_encoder, cached_priors=args.cached_priors,
        prior_cache_dir=_prior_cache_dir(args),
        augmentation={**TrainConfig().augmentation, "synthetic_ncct_probability": args.synthetic_ncct,
                      "domain_randomization": asdict(randomization)},
        skeleton_recall_weight=args.skeleton_recall_weight, init_from=args.init_from,
        lr_schedule=args.lr_schedule, channels_last=args.channels_last, patch_stream=args.patch_stream,
    )
    if patch_source is not None:
        try:
            patch_source.check(config)
        except ValueError as error:
            raise InvalidInputError(str(error)) from None
    summary = train(config, cases, output=args.out, validation_cases=val_cases, data_description=description,
                    resume=args.resume, progress=not args.no_progress, patch_source=patch_source)
    if not main:  # rank 0 reports
        return 0
    last = summary["history"][-1] if summary["history"] else {}
    print(f"{args.out}: {summary['step']} steps in {summary['train_seconds'] / 60:.1f} min; "
          f"last loss {last.get('loss', float('nan')):.4f}; validation Dice artery "
          f"{last.get('val_dice_artery', float('nan')):.3f} vein {last.get('val_dice_vein', float('nan')):.3f}")
    return 0
