"""I2SR training: O_F (a differentiable vesselness imitation), the loss of eq. 7, the loop.

Each step draws a batch of (thick, 1 mm) crops, either simulated from 1 mm volumes (box slice
profile with thickness drawn in ``thickness_range``, Poisson-law noise; ``hipas_core.i2sr.data``)
or cut from phantom pairs the generator acquired at both thicknesses, and takes one Adam step on
``MSE(SR, GT) + w * MSE(O_F(SR), O_F(GT))`` over windowed intensities, where ``O_F`` is a small
3x3x3 conv network first fitted to the Frangi vesselness of ``hipas_core.vesselness`` and then
frozen. Deterministic for a seed on the CPU. With ``output`` a checkpoint (weights + the run's
state: step, losses, optimizer, O_F, RNG; the layout of ``hipas_core.training_loop``) is written
every ``checkpoint_every`` steps and at the end; ``resume`` continues from it (or from a
"hipas-i2sr/1" file), and the resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hipas_core.i2sr.checkpoint import CHECKPOINT_FORMAT, KIND, load_training_state
from hipas_core.i2sr.data import (
    PhantomPair,
    make_training_pair,
    pair_crops,
    synthetic_vessel_volume,
)
from hipas_core.i2sr.network import I2SRConfig, I2SRNet, VesselnessNet, interpolate_z, window_ct
from hipas_core.progress import Progress, log
from hipas_core.training_loop import TrainingRun, cpu_weights, write_checkpoint

LR_SCHEDULES = ("constant", "cosine")
_VESSELNESS_CROP = (48, 96, 96)  # (z, y, x) voxels of each phantom target O_F is fitted on
_VESSELNESS_VOLUMES = 6  # phantom targets O_F is fitted on


def train_vesselness_net(
    volumes: Sequence[np.ndarray], spacing: Sequence[float], *, steps: int = 60, seed: int = 0, patch: int = 24
) -> tuple[VesselnessNet, float]:
    """Fit O_F to ``hipas_core.vesselness`` on random patches of windowed ``volumes`` (HU, (z, y, x),
    voxel ``spacing`` (z, y, x) mm); returns (frozen net in eval mode, last batch MSE)."""
    from hipas_core.vesselness import vesselness

    rng = np.random.default_rng(seed)
    targets = [vesselness(window_ct(torch.from_numpy(v)).numpy(), spacing=spacing) for v in volumes]
    patch = min(patch, *(min(v.shape) for v in volumes))
    net = VesselnessNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_value = float("nan")
    for _ in range(steps):
        inputs, wanted = [], []
        for _ in range(2):
            index = int(rng.integers(len(volumes)))
            corner = [int(rng.integers(0, n - patch + 1)) for n in volumes[index].shape]
            crop = tuple(slice(c, c + patch) for c in corner)
            inputs.append(window_ct(torch.from_numpy(volumes[index][crop])))
            wanted.append(torch.from_numpy(np.ascontiguousarray(targets[index][crop])))
        x, y = torch.stack(inputs)[:, None], torch.stack(wanted)[:, None]
        loss = F.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    _freeze(net)
    return net.eval(), loss_value


def _freeze(net: torch.nn.Module) -> None:
    for parameter in net.parameters():
        parameter.requires_grad_(False)


def i2sr_loss(
    model: I2SRNet, o_f: VesselnessNet, thick: torch.Tensor, positions: torch.Tensor, truth: torch.Tensor,
    *, vesselness_weight: float = 1.0,
) -> torch.Tensor:
    """Eq. 7: ``MSE(SR, GT) + w * MSE(O_F(SR), O_F(GT))`` on windowed intensities; ``thick``
    (B, 1, K, Y, X), ``positions`` (n,) fractional thick-slice indices, ``truth`` (B, 1, n, Y, X)."""
    prediction = model(thick, positions)
    with torch.no_grad():
        target_vessels = o_f(truth)
    return F.mse_loss(prediction, truth) + vesselness_weight * F.mse_loss(o_f(prediction), target_vessels)


def _loss_and_linear(model: I2SRNet, o_f: VesselnessNet, thick: torch.Tensor, positions: torch.Tensor,
                     truth: torch.Tensor, vesselness_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``i2sr_loss``, the same loss of plain linear interpolation: the reference the training log
    shows), sharing O_F of the target."""
    prediction = model(thick, positions)
    with torch.no_grad():
        target_vessels = o_f(truth)
        linear = interpolate_z(thick, positions)
        baseline = F.mse_loss(linear, truth) + vesselness_weight * F.mse_loss(o_f(linear), target_vessels)
    loss = F.mse_loss(prediction, truth) + vesselness_weight * F.mse_loss(o_f(prediction), target_vessels)
    return loss, baseline


def _batch_losses(model: I2SRNet, o_f: VesselnessNet, items: Sequence[tuple], *, device: str,
                  vesselness_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(I2SR loss, linear loss) of a batch of (thick, positions, truth) crops: one tensor batch
    when the crops share shapes and positions, else the mean of the crops' losses."""
    first = items[0]
    alike = all(item[0].shape == first[0].shape and item[2].shape == first[2].shape
                and torch.equal(item[1], first[1]) for item in items)
    groups = [items] if alike else [[item] for item in items]
    losses, baselines = [], []
    for group in groups:
        thick = torch.stack([item[0] for item in group]).to(device)
        truth = torch.stack([item[2] for item in group]).to(device)
        loss, baseline = _loss_and_linear(model, o_f, thick, group[0][1].to(device), truth, vesselness_weight)
        losses.append(loss)
        baselines.append(baseline)
    return sum(losses) / len(losses), sum(baselines) / len(baselines)


def _vesselness_crops(pairs: Sequence[PhantomPair]) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """Central crops of the 1 mm targets of up to ``_VESSELNESS_VOLUMES`` phantoms (one pair per
    seed and protocol) and their median voxel spacing (z, y, x) mm, for fitting O_F."""
    chosen: dict[tuple[int, str], PhantomPair] = {}
    for pair in pairs:
        chosen.setdefault((pair.seed, pair.protocol), pair)
    crops, inplane = [], []
    for pair in list(chosen.values())[:_VESSELNESS_VOLUMES]:
        box = tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + c)
                    for n, c in zip(pair.thin.shape, _VESSELNESS_CROP, strict=True))
        crops.append(np.ascontiguousarray(pair.thin[box], dtype=np.float32))
        inplane.append(pair.inplane_spacing_mm)
    spacing = float(np.median(inplane))
    return crops, (1.0, spacing, spacing)


def _learning_rate(lr: float, schedule: str, step: int, steps: int) -> float:
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    return lr


def train(
    *,
    steps: int = 240,
    seed: int = 0,
    config: I2SRConfig | None = None,
    volumes: Sequence[np.ndarray] | None = None,
    volume_spacing: Sequence[float] = (1.0, 0.7, 0.7),
    thickness_range: tuple[float, float] = (2.5, 5.0),
    pairs: Sequence[PhantomPair] | None = None,
    patch_depth: int = 21,
    patch_size: int = 32,
    batch: int = 2,
    lr: float = 3e-3,
    lr_schedule: str = "constant",
    vesselness_steps: int = 200,
    vesselness_weight: float = 1.0,
    noise_counts: tuple[float, float] | None = (2000.0, 50000.0),
    device: str = "cpu",
    log_every: int = 20,
    progress: str | None = None,
    output: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    max_minutes: float | None = None,
    data_description: dict | None = None,
    evaluation: Callable[[I2SRNet], list[dict]] | None = None,
) -> tuple[I2SRNet, dict]:
    """Train I2SR; returns (model in eval mode, training record: settings, losses, timings).

    Data: ``pairs`` (phantom pairs acquired at 1 mm and thick, the generator's own noise: per
    step one pair, ``batch`` crops of ``patch_depth`` 1 mm slices x ``patch_size``^2 voxels over
    one z range, half of them centred on vessels; ``hipas_core.i2sr.data.pair_crops``),
    else 1 mm ``volumes`` (HU (z, y, x), voxel ``volume_spacing`` mm; default: 6 synthetic) made
    thick per step (slice spacing uniform in ``thickness_range`` mm, box profile, Poisson-law noise
    with incident counts log-uniform in ``noise_counts``; None: no noise). Loss
    ``MSE(SR, GT) + vesselness_weight * MSE(O_F(SR), O_F(GT))``; Adam with ``lr`` (``lr_schedule``
    "cosine": decayed to 0 over ``steps``). Progress (``hipas_core.progress`` mode ``progress``)
    with a line every ``log_every`` steps (0: no output at all).

    ``output``: checkpoint written every ``checkpoint_every`` steps (0: only at the end) and at the
    end; ``resume``: continue from ``output`` when it exists (``InvalidInputError`` when it is not a
    checkpoint this run can continue); ``max_minutes``: stop (and save) after this much training
    time in this run; ``evaluation``: called with the finished model, its rows go into the record
    (and the final checkpoint). ``data_description`` (plain data) goes into the record.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {lr_schedule!r}: one of {LR_SCHEDULES}")
    run = TrainingRun(seed=seed, max_minutes=max_minutes)
    rng = run.rng
    mode = progress if log_every else "off"
    output = Path(output) if output is not None else None
    state = load_training_state(output) if resume and output is not None and output.is_file() else None
    if pairs is None and volumes is None:
        volumes = [synthetic_vessel_volume(1000 + seed * 100 + i, shape=(40, 80, 80)) for i in range(6)]
    resumed_at = []
    if state is None:
        if pairs is not None:
            o_f_volumes, o_f_spacing = _vesselness_crops(pairs)
        else:
            o_f_volumes, o_f_spacing = volumes, tuple(volume_spacing)
        o_f, o_f_loss = train_vesselness_net(o_f_volumes, o_f_spacing, steps=vesselness_steps, seed=seed)
        log(f"train i2sr: O_F (vesselness imitation) trained, mse {o_f_loss:.5f} "
            f"({time.monotonic() - run.created:.1f} s)", mode=mode)
        model = I2SRNet(config or I2SRConfig())
    else:
        model, previous, run_state = state
        if config is not None and config != model.config:
            from hipas_core.errors import InvalidInputError

            raise InvalidInputError(f"{output}: its network shape differs from the one asked for; cannot resume")
        o_f = VesselnessNet()
        o_f.load_state_dict(run_state["vesselness_net"])
        _freeze(o_f)
        o_f.eval()
        o_f_loss = float(previous.get("vesselness_net_final_mse", float("nan")))
    o_f = o_f.to(device)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    if state is not None:
        run.resume_from(run_state, source=output, optimizer=optimizer)
        resumed_at = [*previous.get("resumed_at_steps", []), run.step]
    settings = {
        "steps": steps, "seed": seed, "batch": batch, "lr": lr, "lr_schedule": lr_schedule,
        "patch_depth": patch_depth, "patch_size": patch_size, "vesselness_steps": vesselness_steps,
        "vesselness_weight": vesselness_weight, "vesselness_net_final_mse": o_f_loss,
        "n_volumes": len(pairs) if pairs is not None else len(volumes),
        **({"data": data_description} if data_description is not None else {}),
        **({"thickness_range_mm": list(thickness_range), "noise_counts": noise_counts} if pairs is None
           else {"pairs": [[p.seed, p.protocol, p.thickness_mm] for p in pairs]}),
    }

    def record(finished: bool) -> dict:
        losses, baselines = [h["loss"] for h in run.history], [h["linear_loss"] for h in run.history]
        out = {
            **settings, "step": run.step, "finished": finished, "first_losses": losses[:10],
            "last_losses": losses[-10:], "seconds": round(run.train_seconds, 1),
            "train_threads": torch.get_num_threads(),
        }
        if losses:
            out["loss_ratio_to_linear_first_50"] = float(np.sum(losses[:50]) / np.sum(baselines[:50]))
            out["loss_ratio_to_linear_last_50"] = float(np.sum(losses[-50:]) / np.sum(baselines[-50:]))
        if resumed_at:
            out["resumed_at_steps"] = resumed_at
        return out

    def save(finished: bool, extra: dict | None = None) -> None:
        if output is None:
            return
        write_checkpoint(output, run.payload(
            format=CHECKPOINT_FORMAT, kind=KIND, model_config=dataclasses.asdict(model.config),
            state_dict=cpu_weights(model),
            training_config=json.loads(json.dumps(settings, sort_keys=True)),  # plain data, as in the record
            optimizer=optimizer, finished=finished, vesselness_net=cpu_weights(o_f),
            training=json.dumps({**record(finished), **(extra or {})}, sort_keys=True)))

    bar = Progress("train i2sr", total=steps, initial=min(run.step, steps), unit="steps", mode=mode)
    if run.step:
        bar.log(f"train i2sr: resumed from {output} at step {run.step}/{steps}")
    run.start(count_setup=True)  # the record's seconds include fitting O_F and preparing the data
    while run.step < steps:
        if run.out_of_time():
            bar.log(f"train i2sr: stopped after {max_minutes:g} min at step {run.step}/{steps} "
                         "(continue with --resume)")
            bar.close()
            save(False)
            return model.eval(), record(False)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(lr, lr_schedule, run.step, steps)
        if pairs is not None:
            items = pair_crops(pairs[int(rng.integers(len(pairs)))], rng, count=batch, depth=patch_depth,
                               size=patch_size)
        else:
            spacing_mm = float(rng.uniform(*thickness_range))
            items = [make_training_pair(volumes[int(rng.integers(len(volumes)))], spacing_mm, rng,
                                        depth=patch_depth, size=patch_size, noise=noise_counts is not None,
                                        counts_range=noise_counts or (1.0, 1.0)) for _ in range(batch)]
        loss, baseline = _batch_losses(model, o_f, items, device=device, vesselness_weight=vesselness_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step += 1
        run.history.append({"step": run.step, "loss": float(loss.detach()), "linear_loss": float(baseline)})
        bar.update(1)
        bar.set_postfix(loss=f"{run.history[-1]['loss']:.6f}")
        if log_every and run.step % log_every == 0:
            recent = np.mean([h["loss"] for h in run.history[-log_every:]])
            reference = np.mean([h["linear_loss"] for h in run.history[-log_every:]])
            bar.log(f"train i2sr: step {run.step}/{steps}, loss {recent:.6f} (linear {reference:.6f}, "
                         f"ratio {recent / reference:.3f})")
        if checkpoint_every and run.step % checkpoint_every == 0 and run.step < steps:
            save(False)
    bar.close()
    model.eval()
    extra = {"evaluation": evaluation(model)} if evaluation is not None else {}
    save(True, extra)
    return model, {**record(True), **extra}
