"""``hipas train-i2sr``: train the I2SR slice super-resolution network, or evaluate checkpoints.

    hipas train-i2sr --out I2SR.pt [--data phantoms] [--phantom-seeds 2001-2032] [--thicknesses 2.5 3 4 5]
                     [--cache DIR] [--steps 240] [--lr 3e-3] [--lr-schedule constant|cosine] [--seed 0]
                     [--batch-size 2] [--patch 21 32] [--max-minutes M] [--resume] [--threads 1]
    hipas train-i2sr --out I2SR.pt --data synthetic ...          # six synthetic vessel volumes
    hipas train-i2sr --evaluate A.pt [B.pt ...] [--eval-data phantoms synthetic phantoms-box]

Training data (``--data``): ``phantoms``: each seed's small phantom (odd seeds NCCT, even CTPA)
acquired by the generator at 1 mm (the target, at its highest dose) and at each ``--thicknesses``
(input: its slice profile and noise, the seed's dose); ``synthetic``: six synthetic 1 mm vessel
volumes made thick by box averaging, with Poisson-law noise (``--no-noise``: without).

Evaluation (after training unless ``--no-eval``, or of the ``--evaluate`` checkpoints only): PSNR
(all voxels and vessel voxels) of I2SR and of linear interpolation at ``--eval-thicknesses`` on
each ``--eval-data``: ``phantoms`` (pairs of ``--eval-seeds``, NCCT and CTPA each, the central
48 x 128 x 128 target voxels), ``phantoms-box`` (1 mm NCCT phantoms of ``--eval-seeds`` made thick
by box averaging, central 48 x 112 x 112), ``synthetic`` (``--eval-volumes`` held-out synthetic
volumes). The means are printed as JSON; ``--report`` writes every row too. Held-out seeds may
not also train. A checkpoint is written every ``--checkpoint-every`` steps and at the end, with
the state ``--resume`` continues from (checked before any data is prepared).
"""

from __future__ import annotations

import argparse

DATA_SOURCES = ("phantoms", "synthetic")
EVAL_SOURCES = ("phantoms", "phantoms-box", "synthetic")
DEFAULT_TRAIN_SEEDS = "2001-2032"
DEFAULT_EVAL_SEEDS = "2101-2104"
_SYNTHETIC_EVAL_SEED = 900_000  # held-out synthetic volumes (training uses 1000 + seed * 100 + i)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="checkpoint to write (.pt); not needed with --evaluate")
    parser.add_argument("--data", choices=DATA_SOURCES, default="phantoms", help="training data (default phantoms)")
    parser.add_argument("--phantom-seeds", default=DEFAULT_TRAIN_SEEDS,
                        help=f"training phantom seeds, e.g. 2001-2032 (default {DEFAULT_TRAIN_SEEDS})")
    parser.add_argument("--thicknesses", type=float, nargs="+", default=(2.5, 3.0, 4.0, 5.0), metavar="MM",
                        help="phantoms: thick acquisitions per seed (mm, > 1 and <= 5; default 2.5 3 4 5)")
    parser.add_argument("--thicknesses-per-seed", type=int, metavar="K",
                        help="phantoms: K of --thicknesses per seed, in rotation over the seeds (default: all)")
    parser.add_argument("--cache", help="folder keeping the phantom pairs (.npz) for later runs")
    parser.add_argument("--no-noise", action="store_true", help="synthetic: no Poisson-law noise on the thick slices")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="cosine: lr decayed to 0 over --steps (default constant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2, help="crops per step")
    parser.add_argument("--patch", type=int, nargs=2, default=(21, 32), metavar=("Z", "XY"),
                        help="crop: 1 mm target slices and in-plane voxels (default 21 32)")
    parser.add_argument("--vesselness-steps", type=int, default=200, help="steps fitting O_F to the vesselness")
    parser.add_argument("--evaluate", nargs="+", metavar="CKPT", help="evaluate these checkpoints instead of training")
    parser.add_argument("--eval-data", choices=EVAL_SOURCES, nargs="+",
                        help="held-out data to evaluate on (default: the --data source)")
    parser.add_argument("--eval-seeds", default=DEFAULT_EVAL_SEEDS,
                        help=f"held-out phantom seeds (default {DEFAULT_EVAL_SEEDS})")
    parser.add_argument("--eval-thicknesses", type=float, nargs="+", default=(2.5, 3.0, 5.0), metavar="MM",
                        help="slice thicknesses evaluated (mm; default 2.5 3 5)")
    parser.add_argument("--eval-volumes", type=int, default=3, help="held-out synthetic volumes (default 3)")
    parser.add_argument("--no-eval", action="store_true", help="no evaluation after training")
    parser.add_argument("--report", help="write the evaluation (every row and the means) to this JSON file")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: at the end only)")
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this much training time")
    parser.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _seeds(option: str, text: str) -> list[int]:
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.phantom_cases import parse_seeds

    try:
        seeds = parse_seeds(text)
    except ValueError:
        seeds = []
    if not seeds:
        raise InvalidInputError(f"{option} {text}: seeds such as 2001-2032 or 1,5,9 are needed")
    return seeds


def _check_options(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """(training seeds, held-out seeds) after checking every option (``InvalidInputError``)."""
    from hipas_core.errors import InvalidInputError

    if not args.evaluate and not args.out:
        raise InvalidInputError("--out CKPT is needed (or --evaluate CKPT to evaluate checkpoints only)")
    for name, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--threads", args.threads, 1), ("--checkpoint-every", args.checkpoint_every, 0),
                             ("--eval-volumes", args.eval_volumes, 1), ("--vesselness-steps", args.vesselness_steps, 1)):
        if value < low:
            raise InvalidInputError(f"{name} {value}: at least {low} is needed")
    if not args.lr > 0:
        raise InvalidInputError(f"--lr {args.lr}: a positive learning rate is needed")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise InvalidInputError(f"--max-minutes {args.max_minutes}: a positive time is needed")
    if args.thicknesses_per_seed is not None and not 1 <= args.thicknesses_per_seed <= len(args.thicknesses):
        raise InvalidInputError(f"--thicknesses-per-seed {args.thicknesses_per_seed}: between 1 and the "
                                f"{len(args.thicknesses)} --thicknesses is needed")
    if args.patch[0] < 6 or args.patch[1] < 8:
        raise InvalidInputError(f"--patch {args.patch[0]} {args.patch[1]}: at least 6 slices and 8 voxels are needed")
    for name, values in (("--thicknesses", args.thicknesses), ("--eval-thicknesses", args.eval_thicknesses)):
        if any(not 1.0 < t <= 5.0 for t in values):
            raise InvalidInputError(f"{name} {' '.join(f'{t:g}' for t in values)}: each must lie in (1, 5] mm")
    train_seeds = _seeds("--phantom-seeds", args.phantom_seeds)
    eval_seeds = _seeds("--eval-seeds", args.eval_seeds)
    both = sorted(set(train_seeds) & set(eval_seeds))
    if not args.evaluate and args.data == "phantoms" and both:
        raise InvalidInputError(f"--eval-seeds {args.eval_seeds}: seeds {both[:5]} also train (--phantom-seeds)")
    return train_seeds, eval_seeds


def _phantom_plan(seeds: list[int], thicknesses: tuple[float, ...], per_seed: int | None) -> list:
    """[(seed, protocol, thicknesses)]: odd seeds NCCT, even CTPA; seed number i of the list gets
    ``per_seed`` of the thicknesses from position i on, in rotation (all when None), so that each
    protocol meets every thickness."""
    count = len(thicknesses) if per_seed is None else per_seed
    return [(seed, "ncct" if seed % 2 else "ctpa",
             tuple(thicknesses[(i + j) % len(thicknesses)] for j in range(count)))
            for i, seed in enumerate(seeds)]


def _held_out(args: argparse.Namespace, eval_seeds: list[int]) -> dict:
    """Evaluation source name -> (evaluate(model) -> rows) on the held-out data."""
    from hipas_core.i2sr import data, evaluation

    sources = args.eval_data or [args.data]
    thicknesses = tuple(args.eval_thicknesses)
    runs = {}
    if "phantoms" in sources:
        pairs = data.phantom_pairs([(s, p) for s in eval_seeds for p in ("ncct", "ctpa")], thicknesses,
                                   cache_dir=args.cache)
        runs["phantoms"] = lambda model: evaluation.evaluate_pairs(model, pairs)
    if "phantoms-box" in sources:
        volumes, labels = data.phantom_volumes(eval_seeds)
        runs["phantoms-box"] = lambda model: evaluation.evaluate(model, volumes, thicknesses, vessel_masks=labels)
    if "synthetic" in sources:
        synthetic = [data.synthetic_vessel_volume(_SYNTHETIC_EVAL_SEED + i, shape=(41, 96, 96))
                     for i in range(args.eval_volumes)]
        runs["synthetic"] = lambda model: evaluation.evaluate(model, synthetic, thicknesses)
    return runs


def _evaluate(runs: dict, model) -> dict:
    return {name: run(model) for name, run in runs.items()}


def _print_summary(results: dict) -> dict:
    """Means per source (and per checkpoint, for several) as JSON on stdout; returns them."""
    import json

    from hipas_core.i2sr.evaluation import summarize

    means = {name: summarize(rows) for name, rows in results.items()}
    print(json.dumps(means, indent=2))
    return means


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import torch

    from hipas_core.atomic import write_json
    from hipas_core.conventions import resolve_device
    from hipas_core.errors import InvalidInputError
    from hipas_core.i2sr import checkpoint

    train_seeds, eval_seeds = _check_options(args)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda: no CUDA device available")
    if args.evaluate:  # every checkpoint is read before any data is prepared
        models = {path: checkpoint.load_model(path, device=device) for path in args.evaluate}
        runs = _held_out(args, eval_seeds)
        results = {path: _evaluate(runs, model) for path, model in models.items()}
        means = _print_summary({f"{path} {name}": rows for path, per in results.items() for name, rows in per.items()})
        if args.report:
            write_json(args.report, {"checkpoints": list(args.evaluate), "eval_seeds": eval_seeds, "means": means,
                                     "rows": results})
        return 0
    out = Path(args.out)
    if args.resume and out.is_file():
        checkpoint.load_training_state(out)
    from hipas_core.i2sr import data
    from hipas_core.i2sr.training import train

    runs = {} if args.no_eval else _held_out(args, eval_seeds)
    if args.data == "phantoms":
        plan = _phantom_plan(train_seeds, tuple(args.thicknesses), args.thicknesses_per_seed)
        pairs = [pair for seed, protocol, thicknesses in plan
                 for pair in data.phantom_pairs([(seed, protocol)], thicknesses, cache_dir=args.cache)]
        source = {"source": "phantoms", "size": "small", "plan": plan,
                  "target_dose_mgy": data.TARGET_DOSE_MGY, "input_dose": "the seed's own"}
        options = {"pairs": pairs}
    else:
        source = {"source": "synthetic", "volumes": 6, "noise": not args.no_noise}
        options = {"noise_counts": None if args.no_noise else (2000.0, 50000.0)}
    model, record = train(
        steps=args.steps, seed=args.seed, lr=args.lr, lr_schedule=args.lr_schedule, batch=args.batch_size,
        patch_depth=args.patch[0], patch_size=args.patch[1], vesselness_steps=args.vesselness_steps,
        device=device, progress="lines" if args.no_progress else None, output=out, checkpoint_every=args.checkpoint_every,
        resume=args.resume, max_minutes=args.max_minutes,
        data_description={**source, "eval_seeds": eval_seeds, "options": dict(vars(args))},
        evaluation=(lambda m: _evaluate(runs, m)) if runs else None, **options,
    )
    if not record["finished"]:
        print(f"{out}: stopped at step {record['step']}/{args.steps} after {record['seconds'] / 60:.1f} min; "
              "continue with --resume", file=sys.stderr)
        return 0
    if "evaluation" in record:
        means = _print_summary(record["evaluation"])
        if args.report:
            write_json(args.report, {"checkpoint": str(out), "eval_seeds": eval_seeds, "means": means,
                                     "rows": record["evaluation"]})
    print(f"{out}: {record['step']} steps in {record['seconds'] / 60:.1f} min; loss / linear "
          f"{record.get('loss_ratio_to_linear_last_50', float('nan')):.3f} (last 50 steps)", file=sys.stderr)
    return 0
