"""I2SR checkpoints: config, weights, package versions, training record (and resume state).

A checkpoint is a ``torch.save`` dict ``{"format": "hipas-i2sr/1", "config": I2SRConfig fields,
"state_dict", "versions", "training": JSON text}``; one written by ``hipas train-i2sr`` also holds
``"resume"`` (step, optimizer, O_F weights, RNG state, losses so far), which inference ignores.
Checkpoints hold tensors and plain data only and are read with ``torch.load(weights_only=True)``:
loading one never runs code. Anything wrong with a file is an ``InvalidInputError`` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hipas_core.errors import InvalidInputError
from hipas_core.i2sr.network import I2SRConfig, I2SRNet

CHECKPOINT_FORMAT = "hipas-i2sr/1"
RESUME_KEYS = frozenset({"step", "optimizer", "vesselness_net", "rng"})  # what a resumable checkpoint holds


def save_model(model: I2SRNet, path: str | os.PathLike, *, training: dict | None = None,
               resume: dict | None = None) -> None:
    """Write a checkpoint (config, weights, package versions, ``training`` record, and the
    ``resume`` state when given: tensors and plain data only) atomically to ``path``."""
    from hipas_core.atomic import atomic_path
    from hipas_core.provenance import package_versions

    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": package_versions(),
        "training": json.dumps(training or {}, sort_keys=True),
    }
    if resume is not None:
        payload["resume"] = resume
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read_checkpoint(path: Path, use: Callable[[dict], Any]) -> Any:
    """``use(payload)`` of the checkpoint ``path`` (read as tensors and plain data only: never
    runs code from the file); ``InvalidInputError`` for anything wrong with the file."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such I2SR model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("format")
        return use(payload)
    except Exception as error:  # noqa: BLE001 - anything wrong with the file is the user's input
        raise InvalidInputError(f"{path}: not an I2SR checkpoint ({type(error).__name__})") from None


def _build(payload: dict) -> I2SRNet:
    model = I2SRNet(I2SRConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(memory_format=torch.channels_last_3d)


def load_model(path: str | os.PathLike, *, device: str = "cpu") -> I2SRNet:
    """The model (eval mode, on ``device``) of a checkpoint written by ``save_model``;
    ``InvalidInputError`` when the file is not one."""
    return _read_checkpoint(Path(path), _build).to(device).eval()


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Config, versions and training record of a checkpoint (no weights)."""
    return _read_checkpoint(Path(path), lambda payload: {
        "config": payload["config"], "versions": payload["versions"], "training": json.loads(payload["training"])})


def load_training_state(path: str | os.PathLike) -> tuple[I2SRNet, dict, dict]:
    """(model in train mode on the CPU, training record, resume state) of a checkpoint that
    ``hipas train-i2sr`` wrote; ``InvalidInputError`` when the file is not one or holds no
    resume state (a checkpoint written for inference only)."""
    def read(payload: dict) -> tuple[I2SRNet, dict, dict] | None:
        resume = payload.get("resume")
        if resume is None:
            return None
        if not isinstance(resume, dict) or not set(resume) >= RESUME_KEYS:
            raise KeyError("resume")
        return _build(payload).train(), json.loads(payload["training"]), resume

    state = _read_checkpoint(Path(path), read)
    if state is None:
        raise InvalidInputError(f"{path}: this I2SR checkpoint holds no training state to resume from")
    return state
