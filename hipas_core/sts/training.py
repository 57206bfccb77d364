"""Training of the STS cascade (or the single-stage baseline) on ``TrainingCase`` patches.

Per step: a batch of patches (vessel-biased sampling, augmentation, optional domain randomization
with the vesselness recomputed: ``hipas_core.sts.randomization``), the cascade's per-stage
logits, the loss of eq. 17 for each stage against its own targets (levels <= stage) summed over
stages (``mode="joint"``), or one stage at a time with the earlier stages frozen
(``mode="stagewise"``: the steps are split evenly over the stages; with ``warm_start`` stage s
starts from stage s-1's weights, which on a small compute budget gets the last stage far
further than training it from scratch). The baseline is trained with
plain Dice on the whole trees (plus ``bce_weight`` x cross-entropy when set, the same term the
cascade gets). Adam (paper: lr 1e-4, betas (0.99, 0.999)); AMP (bf16, or fp16
with loss scaling) on CUDA. A checkpoint (model + training config + data + versions + optimizer
+ RNG state) is written every ``checkpoint_every`` steps and at the end; ``resume=True`` continues
from it. For a fixed seed, data and number of steps the run is deterministic on the CPU.
Progress (``hipas_core.progress``): a bar on a terminal (``progress=False``: never a bar), else
log lines every few seconds; a line at every validation and every checkpoint in both cases.

Distributed data-parallel (``hipas_core.sts.distributed``; the caller joins the process group,
``torchrun``/``srun`` + ``hipas train`` do): ``batch_size`` is per rank, a step's global batch is
``world_size x batch_size`` patches and rank r trains on positions r*B..(r+1)*B-1 of it, the
patches one process with the global batch would draw there; DistributedDataParallel averages the
gradients (every loss is a mean over the batch, and the networks normalize per sample with
GroupNorm, so that is the gradient of the global batch). ``patch_stream="sequential"`` (default):
the one numpy stream a single process draws, which every rank advances over the whole global batch
(it cuts and augments the others' patches only as far as their random draws need), so any world
size with the same global batch continues the same stream, a single-process run included;
``"per-patch"``: patch i of step t from its own generator (seed, t, i), each rank draws only its
own (no replay: for many GPUs). Rank 0 alone validates, logs and writes checkpoints; the others
wait for it at a barrier. The logged loss is the mean over the ranks.

A prepared training set (``hipas_core.sts.streaming.PreparedPatches`` as ``patch_source``) gives
the same batches from memory-mapped case folders, drawn in DataLoader worker processes. Every run
writes a CSV log beside the checkpoint (``write_training_log``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hipas_core.errors import InvalidInputError
from hipas_core.progress import Progress
from hipas_core.sts import distributed
from hipas_core.sts.batches import make_batch, patch_seed_batch
from hipas_core.sts.checkpoint import FORMAT, build_model, load_checkpoint, save_checkpoint
from hipas_core.sts.data import TrainingCase
from hipas_core.sts.network import load_matching_weights
from hipas_core.sts.objective import Objective, batch_loss, validation_dice
from hipas_core.sts.prior_cache import cached_prior, prior_files
from hipas_core.sts.train_config import TrainConfig
from hipas_core.sts.training_log import training_log_path, write_training_log
from hipas_core.training_loop import TrainingRun, resume_check

__all__ = ["TrainConfig", "train", "training_log_path"]


def train(
    config: TrainConfig,
    cases: Sequence[TrainingCase],
    *,
    output: str | os.PathLike,
    validation_cases: Sequence[TrainingCase] = (),
    data_description: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    patch_source=None,
) -> dict:
    """Train and write the checkpoint ``output``; returns the final checkpoint payload (no weights).

    ``cases``: training cases; ``validation_cases``: for the validation Dice shown in the
    progress bar (fixed patches; the training cases are used when none are given). ``progress``
    False: log lines only, no bar. ``patch_source``: where the training batches come from instead
    of drawing them from ``cases`` in this process (``hipas_core.sts.streaming.PreparedPatches``:
    the same patches, from memory-mapped case folders in DataLoader workers; ``cases`` are then
    those folders' memory-mapped cases). Beside ``output`` a CSV log (``training_log_path``) gets
    step, loss, validation Dice, patches/s and the share of the step spent waiting for data.
    ``InvalidInputError`` when ``init_from``, ``encoder_init`` or (with ``resume``) ``output`` is
    not a checkpoint this run can start from; nothing is written then.

    In a process group (``hipas_core.sts.distributed.setup``) every rank calls this with the same
    arguments (``config.device`` its own device); rank 0 writes ``output``, every rank returns the
    same summary.
    """
    if not cases:
        raise ValueError("no training cases")
    if config.cached_priors and (config.kind != "cascade" or config.mode != "stagewise"):
        raise ValueError("cached_priors needs a cascade trained stagewise")
    if patch_source is not None:
        patch_source.check(config)
    rank, world = distributed.world()
    main = rank == 0
    run = TrainingRun(seed=config.seed, max_minutes=config.max_minutes)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = run.rng
    device = torch.device(config.device)
    model = build_model(config.kind, config.model_config).to(device)
    if config.encoder_init:  # MAE pre-training transfer, before the optimizer and any resume state
        from hipas_core.sts.pretrain import load_pretrained_encoder

        load_pretrained_encoder(model, config.encoder_init, freeze=config.freeze_encoder)
    warm_started = []
    throughput: list[dict] = []  # per step: seconds of the step and of its wait for data
    if config.init_from:
        initial = load_checkpoint(config.init_from)
        if initial.get("kind") != config.kind:
            raise InvalidInputError(f"{config.init_from}: a {initial.get('kind')} checkpoint cannot start a {config.kind}")
        try:
            load_matching_weights(model, initial["state_dict"])
        except ValueError as error:
            raise InvalidInputError(f"{config.init_from}: does not fit the model ({error})") from None
        if config.kind == "cascade":
            warm_started = list(range(1, len(model.stages)))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=tuple(config.betas))
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    output = Path(output)
    if resume and output.is_file():
        state = load_checkpoint(output, kind=config.kind)
        with resume_check(output):
            model.load_state_dict(state["state_dict"])
            throughput = list(state.get("throughput", []))
            warm_started = list(state.get("warm_started", []))
            first_batch = state.get("training_config", {}).get("batch_size", config.batch_size)
            resumed_from = dict(state.get("distributed", {"world_size": 1, "global_batch": first_batch}))
        run.resume_from(state, source=output, optimizer=optimizer)
        for group in optimizer.param_groups:  # a resumed run may lower the learning rate
            group["lr"], group["betas"] = config.lr, tuple(config.betas)
    else:
        resumed_from = None
    history = run.history
    global_config = config if world == 1 else TrainConfig(**{**config.to_dict(), "batch_size": world * config.batch_size})
    positions = distributed.rank_positions(rank, world, config.batch_size)
    val_rng = np.random.default_rng(config.seed + 1_000_003)
    val_source = list(validation_cases) or list(cases)
    val_config = TrainConfig(**{**config.to_dict(), "batch_size": 1})
    val_batches = ([make_batch(val_source, val_config, val_rng, augment=False) for _ in range(config.val_patches)]
                   if main else [])  # only rank 0 validates

    stage_count = len(model.stages) if config.kind == "cascade" else 1
    per_stage = math.ceil(config.steps / stage_count)
    if config.kind == "cascade" and config.mode == "stagewise" and config.stage_steps:
        if len(config.stage_steps) != stage_count or sum(config.stage_steps) != config.steps:
            raise ValueError(f"stage_steps {tuple(config.stage_steps)} must give {stage_count} counts summing to steps")
        stage_ends = np.cumsum(config.stage_steps)
    else:
        stage_ends = np.array([per_stage * (i + 1) for i in range(stage_count)])

    def payload(final: bool) -> dict:
        inference_window = config.inference_window or config.patch
        return run.payload(
            format=FORMAT, kind=config.kind, model_config=model.config.to_dict(),
            state_dict={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            training_config=config.to_dict(), optimizer=optimizer, finished=final,
            inference={
                "window": list(inference_window), "overlap": config.inference_overlap,
                "thresholds": [0.5, 0.5], "vesselness_sigmas_mm": list(config.vesselness_sigmas_mm),
            },
            data=data_description or {"cases": [c.name for c in cases]},
            validation_cases=[c.name for c in validation_cases],
            throughput=throughput,
            warm_started=list(warm_started),
            # what the training time was measured on (the CLI's --threads / --device)
            train_device={"device": str(device), "threads": torch.get_num_threads()},
            # the patch stream continues from "rng" (sequential) or the step (per-patch) on any
            # number of ranks; the same global batch continues it exactly
            **({"distributed": {"world_size": world, "batch_per_rank": config.batch_size,
                                "global_batch": world * config.batch_size}} if world > 1 else {}),
        )

    def save(payload_now: dict | None) -> None:  # rank 0 writes, the others wait until it has
        if main:
            save_checkpoint(output, payload_now)
            write_training_log(training_log_path(output), history, throughput,
                               global_batch=world * config.batch_size)
        distributed.barrier()

    prior_cache: dict = {}  # cached_priors: {"stage": s, case name: P^{s-1} (2, Z, Y, X) float16}
    run.start()
    model.train()
    bar = Progress(f"train {config.kind}", total=config.steps, initial=run.step, unit="steps",
                   mode=("off" if not main else None if progress else "lines"))
    if world > 1:
        bar.log(f"train {config.kind}: {world} ranks ({'nccl' if device.type == 'cuda' else 'gloo'}), "
                f"{config.batch_size} patches per rank, global batch {world * config.batch_size}, "
                f"{config.patch_stream} patch stream")
    if run.step:
        bar.log(f"train {config.kind}: resumed from {output} at step {run.step}/{config.steps}")
        if resumed_from is not None and resumed_from.get("global_batch") != world * config.batch_size:
            bar.log(f"train {config.kind}: the checkpoint's global batch was {resumed_from.get('global_batch')}, "
                    f"now {world * config.batch_size}: the patch stream goes on, but not as the first run's would")
    val = (float("nan"), float("nan"))
    stopped_early = False
    ddp, ddp_key = None, None  # DistributedDataParallel over the parameters trained now (world > 1)
    objective = Objective(model, config) if world > 1 else None
    stream, stream_prior_stage = None, None  # patch_source's batches, and the stage whose prior they carry
    while run.step < config.steps:
        if config.max_minutes is not None:
            late = run.out_of_time()
            if world > 1:  # every rank stops at the same step when any one is out of time
                late = distributed.all_sum([float(late)], device)[0] > 0
            if late:
                stopped_early = True
                break
        stages = None
        if config.kind == "cascade" and config.mode == "stagewise":
            current = min(int(np.searchsorted(stage_ends, run.step, side="right")), stage_count - 1)
            stages = [current]
            # stages reached for the first time start from their predecessor (in order, so a
            # schedule that jumps over a stage still hands the trained weights on)
            for later in range(1, current + 1) if config.warm_start else ():
                if later not in warm_started:
                    load_matching_weights(model.stages[later], model.stages[later - 1].state_dict())
                    warm_started.append(later)
            for index, stage_net in enumerate(model.stages):
                stage_net.requires_grad_(index == current)
            for index, transmission in enumerate(model.transmissions):
                transmission.requires_grad_(index + 1 == current)
            if config.encoder_init and config.freeze_encoder:  # MAE transfer: keep encoders frozen
                from hipas_core.sts.pretrain import refreeze_encoders

                refreeze_encoders(model)
        prior_of = None
        prior_stage = stages[0] if config.cached_priors and stages is not None and stages[0] >= 1 else None
        if prior_stage is not None and patch_source is None:
            if prior_cache.get("stage") != prior_stage:  # the frozen stages changed: recompute lazily
                prior_cache.clear()
                prior_cache["stage"] = prior_stage
            prior_of = partial(cached_prior, model, prior_cache, config=config, device=device,
                               autocast=(device.type, amp_dtype, use_amp))
        if patch_source is not None and (stream is None or prior_stage != stream_prior_stage):
            # a new stream at each stage whose frozen stages' prior it carries, the last one
            # dropped (per-patch and sequential streams both continue exactly from this step and
            # generator state)
            files = None
            if prior_stage is not None:
                if not main:  # rank 0 writes the files, the others then find them
                    distributed.barrier()
                files = prior_files(model, prior_stage, cases, config=config, device=device,
                                    autocast=(device.type, amp_dtype, use_amp))
                if main:
                    distributed.barrier()
            stream = patch_source.batches(config, global_config, first_step=run.step, rng=rng, positions=positions,
                                          prior_files=files)
            stream_prior_stage = prior_stage
        step_started = time.perf_counter()
        if stream is not None:
            cpu_batch, stream_state = next(stream)
            if stream_state is not None:  # the sequential stream's generator, where it now stands
                rng.bit_generator.state = stream_state
        elif config.patch_stream == "per-patch":
            cpu_batch = patch_seed_batch(cases, config, run.step, positions, prior_of=prior_of)
        elif world == 1:
            cpu_batch = make_batch(cases, config, rng, prior_of=prior_of)
        else:  # the whole global batch's draws, this rank's patches
            cpu_batch = make_batch(cases, global_config, rng, prior_of=prior_of, keep=positions)
        data_seconds = time.perf_counter() - step_started
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        if world > 1:  # (re)wrap when the trained parameters change (stagewise: a new stage)
            key = tuple(p.requires_grad for p in model.parameters())
            if key != ddp_key:
                ddp, ddp_key = distributed.wrap(objective, device, previous=ddp), key
        if config.channels_last:
            for key in ("image", "prior"):
                if key in batch:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last_3d)
        if config.lr_schedule == "poly":
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1 - run.step / config.steps) ** 0.9
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            loss = batch_loss(model, batch, config, stages=stages) if ddp is None else ddp(batch, stages=stages)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        run.step += 1
        record = {"step": run.step, "loss": float(loss.detach())}
        throughput.append({"step": run.step, "seconds": time.perf_counter() - step_started, "data_seconds": data_seconds})
        validate = run.step % config.val_every == 0 or run.step == config.steps
        if validate and main:
            val = validation_dice(model, val_batches, config)
        if world > 1:  # the mean loss over the ranks, and rank 0's validation for every rank
            total = distributed.all_sum([record["loss"], *(val if validate and main else (0.0, 0.0))], device)
            record["loss"] = total[0] / world
            if validate:
                val = (total[1], total[2])
        if validate:
            record.update(val_dice_artery=val[0], val_dice_vein=val[1])
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", dsc_a=f"{val[0]:.3f}", dsc_v=f"{val[1]:.3f}")
        if "val_dice_artery" in record:
            bar.log(f"train {config.kind}: step {run.step}/{config.steps}, loss {record['loss']:.4f}, "
                    f"validation Dice artery {val[0]:.3f} vein {val[1]:.3f}")
        if run.step % config.checkpoint_every == 0:
            save(payload(final=False) if main else None)
            if run.step < config.steps:  # (the last one is reported below)
                bar.log(f"train {config.kind}: step {run.step}/{config.steps}, checkpoint {output}")
    bar.close()
    del stream  # ends the loader's worker processes
    if stopped_early:
        bar.log(f"train {config.kind}: stopped after {config.max_minutes:g} min at step {run.step}/{config.steps}")
    if stopped_early and config.kind == "cascade" and config.mode == "stagewise" and config.warm_start:
        # a run stopped before the last stage still ends with a usable cascade: stages never
        # reached carry their predecessor's weights, as warm start would have given them
        for later in range(1, stage_count):
            if later not in warm_started:
                load_matching_weights(model.stages[later], model.stages[later - 1].state_dict())
                warm_started.append(later)
    if stopped_early and (not history or "val_dice_artery" not in history[-1]):
        val = validation_dice(model, val_batches, config) if main else (0.0, 0.0)
        if world > 1:
            val = tuple(distributed.all_sum(val, device))
        if history:
            history[-1].update(val_dice_artery=val[0], val_dice_vein=val[1])
    final = payload(final=True)
    final["stopped_early"] = stopped_early
    save(final)
    bar.log(f"train {config.kind}: step {run.step}/{config.steps}, checkpoint {output} ({'stopped early' if stopped_early else 'finished'})")
    return {k: v for k, v in final.items() if k not in ("state_dict", "optimizer", "rng")}
