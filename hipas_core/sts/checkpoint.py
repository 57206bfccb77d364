"""Checkpoints: weights plus everything needed to rebuild, run and reproduce a model.

A checkpoint is a ``torch.save`` dict with ``format`` ("hipas-sts/1"), ``kind`` ("cascade" or
"baseline"), ``model_config``, ``state_dict``, ``inference`` (window (z, y, x), overlap,
thresholds per class, vesselness scales), ``training_config``, ``data`` (case seeds / files),
``versions`` (package versions), ``history`` (loss/validation per step) and, for resuming,
``optimizer``, ``step`` and ``rng`` (dropped by ``export_for_inference``): the layout every
training loop writes (``hipas_core.training_loop``), with STS's own ``inference``, ``data``,
``throughput``, ``warm_started`` and ``distributed``. Written atomically.

Checkpoints hold tensors and plain data only (dicts, lists, tuples, strings, numbers; the numpy
RNG state is numpy's own dict of ints): they are read with ``torch.load(weights_only=True)``, so
loading a file never runs code from it. Anything wrong with a file (not found, not a torch file,
code in it, not ours, keys missing, another kind, weights that do not fit) is an
``InvalidInputError`` naming the file: the CLI prints that one line and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipas_core.errors import InvalidInputError
from hipas_core.training_loop import error_summary, load_payload, write_checkpoint

__all__ = ["FORMAT", "MODEL_KEYS", "build_model", "error_summary", "export_for_inference", "load_checkpoint",
           "model_from_checkpoint", "save_checkpoint"]

FORMAT = "hipas-sts/1"
MODEL_KEYS = ("kind", "model_config", "state_dict")  # what every checkpoint holds


def build_model(kind: str, model_config: dict) -> nn.Module:
    """A fresh model of ``kind`` ("cascade" or "baseline") from its config dict."""
    if kind == "cascade":
        from hipas_core.sts.cascade import CascadeConfig, STSCascade

        return STSCascade(CascadeConfig.from_dict(model_config))
    if kind == "baseline":
        from hipas_core.sts.baseline import UNet3D, UNetConfig

        return UNet3D(UNetConfig(**model_config))
    raise ValueError(f"unknown model kind {kind!r}")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (must hold kind, model_config, state_dict) atomically, ``format``
    ``FORMAT`` unless it names its own; returns None."""
    write_checkpoint(path, {"format": FORMAT, **payload})


def load_checkpoint(
    path: str | os.PathLike, *, kind: str | Sequence[str] | None = None, require: Sequence[str] = MODEL_KEYS
) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only: never runs code from the file).

    ``kind``: the kind (or kinds) accepted; ``require``: keys that must be present (default:
    kind, model_config, state_dict, the latter a dict of tensors). ``InvalidInputError`` (one line
    naming the file) when it is missing, unreadable, not one of ours or lacks what is asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: model checkpoint not found")
    try:
        payload = load_payload(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file (or one carrying code) is a user error here
        raise InvalidInputError(f"{path}: not a readable model checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InvalidInputError(f"{path}: not a HiPaS STS checkpoint (format {FORMAT} expected)")
    missing = [key for key in require if key not in payload]
    if missing:
        raise InvalidInputError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    if "state_dict" in require and not (
        isinstance(payload["state_dict"], dict) and all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    ):
        raise InvalidInputError(f"{path}: checkpoint state_dict is not a dict of tensors")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and payload.get("kind") not in kinds:
        raise InvalidInputError(f"{path}: a {payload.get('kind')!r} checkpoint, {' or '.join(map(repr, kinds))} needed")
    return payload


def model_from_checkpoint(payload: dict[str, Any], *, source: str | os.PathLike = "checkpoint") -> nn.Module:
    """The model a checkpoint holds, weights loaded, in eval mode on the CPU; ``InvalidInputError``
    naming ``source`` when its config or weights do not make a model."""
    try:
        model = build_model(payload["kind"], payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InvalidInputError(f"{source}: checkpoint does not make a model ({error_summary(error)})") from None
    return model.eval()


def export_for_inference(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    thresholds: tuple[float, float] | None = None,
    window: tuple[int, int, int] | None = None,
    overlap: float | None = None,
    half: bool = False,
    branch_consistent: bool | None = None,
    branch_coupling: float | None = None,
    attach_fragments: bool | None = None,
    thresholds_by_protocol: dict[str, tuple[float, float]] | None = None,
    thresholds_by_slice_thickness: list[dict] | None = None,
) -> None:
    """Copy a training checkpoint without optimizer and RNG state (weights as float32, or
    float16 with ``half`` to halve the file; loading casts them back to the model's float32),
    optionally with per-class thresholds (artery, vein) chosen on validation data, a new
    inference window (z, y, x) / overlap, and whether the predictor makes the labels
    branch-consistent by default, and with which coupling (``hipas_core.sts.branch_labels``),
    and whether it attaches tree fragments (``hipas_core.sts.fragments``).
    ``thresholds_by_protocol`` ({"NCCT" or "CTPA": (artery, vein)}) replaces the thresholds for
    scans of those protocols (``Predictor.thresholds_for``); ``{}`` removes them.
    ``thresholds_by_slice_thickness`` (rules ``{"min_slice_thickness_mm": T, "protocol": P
    (optional), "thresholds": (artery, vein)}``) replaces them for scans with slices at least T
    thick; ``[]`` removes them."""
    payload = load_checkpoint(source)
    payload = {k: v for k, v in payload.items() if k not in ("optimizer", "rng", "format")}
    if half:
        payload["state_dict"] = {
            k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()
        }
    inference = dict(payload.get("inference", {}))
    if thresholds is not None:
        inference["thresholds"] = [float(t) for t in thresholds]
    if window is not None:
        inference["window"] = [int(w) for w in window]
    if overlap is not None:
        inference["overlap"] = float(overlap)
    if branch_consistent is not None:
        inference["branch_consistent"] = bool(branch_consistent)
    if branch_coupling is not None:
        inference["branch_coupling"] = float(branch_coupling)
    if attach_fragments is not None:
        inference["attach_fragments"] = bool(attach_fragments)
    if thresholds_by_protocol is not None:
        from hipas_core.sts.predictor import protocol_thresholds

        checked = protocol_thresholds(thresholds_by_protocol, source="thresholds_by_protocol")
        inference["thresholds_by_protocol"] = {key: [float(t) for t in pair] for key, pair in sorted(checked.items())}
        if not checked:
            del inference["thresholds_by_protocol"]
    if thresholds_by_slice_thickness is not None:
        from hipas_core.sts.predictor import slice_thickness_thresholds

        rules = slice_thickness_thresholds(list(thresholds_by_slice_thickness), source="thresholds_by_slice_thickness")
        inference["thresholds_by_slice_thickness"] = [
            {"min_slice_thickness_mm": minimum, **({"protocol": protocol} if protocol else {}),
             "thresholds": [float(t) for t in pair]}
            for minimum, protocol, pair in sorted(rules, key=lambda rule: (rule[0], rule[1] or ""))]
        if not rules:
            del inference["thresholds_by_slice_thickness"]
    payload["inference"] = inference
    save_checkpoint(destination, payload)
