"""I2SR checkpoints: config, weights, package versions, training record (and resume state).

A checkpoint is a ``torch.save`` dict in the layout every training loop writes
(``hipas_core.training_loop``): ``{"format": "hipas-i2sr/2", "kind": "i2sr", "model_config":
I2SRConfig fields, "state_dict", "versions", "training": the training record as JSON text}``; one
written by ``hipas train-i2sr`` also holds the run's ``training_config``, ``step``, ``history``
(``{"step", "loss", "linear_loss"}`` per step), ``finished``, ``train_seconds``, ``optimizer``,
``rng`` and ``vesselness_net`` (the O_F weights), which inference ignores. Files of the format
before, "hipas-i2sr/1" (``"config"`` instead of ``model_config``, the resume state nested under
``"resume"``; the shipped ``i2sr-demo.pt``), are read as well: for inference, ``checkpoint_info``
and resuming. Checkpoints hold tensors and plain data only and are read with
``torch.load(weights_only=True)``: loading one never runs code. Anything wrong with a file is an
``InvalidInputError`` naming it.
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
from hipas_core.training_loop import cpu_weights, load_payload, write_checkpoint

CHECKPOINT_FORMAT = "hipas-i2sr/2"
FORMAT_1 = "hipas-i2sr/1"  # read, no longer written
KIND = "i2sr"
# what a resumable checkpoint holds (format 2; format 1 nested the first four under "resume")
RESUME_KEYS = frozenset({"step", "optimizer", "vesselness_net", "rng", "history", "train_seconds"})
_RESUME_KEYS_1 = frozenset({"step", "optimizer", "vesselness_net", "rng"})


def save_model(model: I2SRNet, path: str | os.PathLike, *, training: dict | None = None) -> None:
    """Write a checkpoint for inference (config, weights, package versions, ``training`` record)
    atomically to ``path``; returns None. ``hipas train-i2sr`` writes its checkpoints with the
    run's state as well (``hipas_core.i2sr.training``)."""
    from hipas_core.provenance import package_versions

    write_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "kind": KIND, "model_config": dataclasses.asdict(model.config),
        "state_dict": cpu_weights(model), "versions": package_versions(),
        "training": json.dumps(training or {}, sort_keys=True),
    })


def _model_config(payload: dict) -> dict:
    return payload["config"] if payload["format"] == FORMAT_1 else payload["model_config"]


def _read_checkpoint(path: Path, use: Callable[[dict], Any]) -> Any:
    """``use(payload)`` of the checkpoint ``path`` (read as tensors and plain data only: never
    runs code from the file); ``InvalidInputError`` for anything wrong with the file."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such I2SR model file")
    try:
        payload = load_payload(path)
        if payload.get("format") not in (FORMAT_1, CHECKPOINT_FORMAT):
            raise ValueError("format")
        return use(payload)
    except Exception as error:  # noqa: BLE001 - anything wrong with the file is the user's input
        raise InvalidInputError(f"{path}: not an I2SR checkpoint ({type(error).__name__})") from None


def _build(payload: dict) -> I2SRNet:
    model = I2SRNet(I2SRConfig(**_model_config(payload)))
    model.load_state_dict(payload["state_dict"])
    return model.to(memory_format=torch.channels_last_3d)


def load_model(path: str | os.PathLike, *, device: str = "cpu") -> I2SRNet:
    """The model (eval mode, on ``device``) of a checkpoint written by ``save_model`` or
    training (either format); ``InvalidInputError`` when the file is not one."""
    return _read_checkpoint(Path(path), _build).to(device).eval()


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Config, versions and training record of a checkpoint (no weights), either format: the dict
    ``{"config", "versions", "training"}``."""
    return _read_checkpoint(Path(path), lambda payload: {
        "config": _model_config(payload), "versions": payload["versions"],
        "training": json.loads(payload["training"])})


def _resume_state_1(resume: dict) -> dict:
    """The resume state nested in a "hipas-i2sr/1" file, in the keys of format 2."""
    history = [{"step": index + 1, "loss": loss, "linear_loss": linear}
               for index, (loss, linear) in enumerate(zip(resume["losses"], resume["baselines"], strict=True))]
    return {"step": resume["step"], "history": history, "train_seconds": resume["seconds"],
            "optimizer": resume["optimizer"], "rng": {"numpy": resume["rng"], "torch": resume["torch_rng"]},
            "vesselness_net": resume["vesselness_net"]}


def load_training_state(path: str | os.PathLike) -> tuple[I2SRNet, dict, dict]:
    """(model in train mode on the CPU, training record, run state: ``step``, ``history``,
    ``train_seconds``, ``optimizer``, ``rng``, ``vesselness_net`` as format 2 stores them) of a
    checkpoint that ``hipas train-i2sr`` wrote (either format); ``InvalidInputError`` when the
    file is not one or holds no state to resume from (a checkpoint written for inference only)."""
    def read(payload: dict) -> tuple[I2SRNet, dict, dict] | None:
        if payload["format"] == FORMAT_1:
            resume = payload.get("resume")
            if resume is None:
                return None
            if not isinstance(resume, dict) or not set(resume) >= _RESUME_KEYS_1:
                raise KeyError("resume")
            state = _resume_state_1(resume)
        else:
            if "optimizer" not in payload:
                return None
            if not set(payload) >= RESUME_KEYS:
                raise KeyError("resume")
            state = {key: payload[key] for key in RESUME_KEYS}
        return _build(payload).train(), json.loads(payload["training"]), state

    state = _read_checkpoint(Path(path), read)
    if state is None:
        raise InvalidInputError(f"{path}: this I2SR checkpoint holds no training state to resume from")
    return state
