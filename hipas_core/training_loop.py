"""What the three training loops share: seeding, step and history, the time budget, RNG state,
resume, and one checkpoint layout.

The STS cascade/baseline (``hipas_core.sts.training``), MAE pre-training
(``hipas_core.sts.pretrain``) and I2SR (``hipas_core.i2sr.training``) each keep their own model,
data and loss; a ``TrainingRun`` keeps the rest: ``torch.manual_seed(seed)`` and the numpy
Generator drawn from ``seed`` (plus any named torch Generators of the loop), ``step``,
``history`` (a dict per step), ``train_seconds`` summed over resumes, the ``max_minutes`` budget
of this process (``out_of_time``), RNG capture and restore, and the checkpoint payload.

Every checkpoint holds ``format``, ``kind``, ``model_config``, ``state_dict``,
``training_config``, ``versions``, ``step``, ``history``, ``finished``, ``train_seconds``,
``optimizer`` and ``rng`` (``{"numpy": bit_generator state, "torch": torch.get_rng_state(),
...the loop's named generators}``), plus each loop's own keys (``TrainingRun.payload``). Files
are written atomically (``write_checkpoint``) and read as tensors and plain data only
(``load_payload``: never runs code from the file); what goes wrong while a run continues from a
file is one ``InvalidInputError`` line naming it (``resume_check``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from hipas_core.atomic import atomic_path
from hipas_core.errors import InvalidInputError

# what a checkpoint that cannot be continued from raises while it is read back into a run
resume_errors: tuple[type[Exception], ...] = (AttributeError, KeyError, TypeError, ValueError, RuntimeError)
# names older checkpoints gave to the shared keys (MAE pre-training wrote "pretrain_config")
_OLD_NAMES = {"pretrain_config": "training_config"}


def error_summary(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for one-line errors."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


@contextlib.contextmanager
def resume_check(path: str | os.PathLike) -> Iterator[None]:
    """Turn any of ``resume_errors`` raised inside into ``InvalidInputError`` (one line naming
    ``path``: "cannot resume from this checkpoint (Type: message)"); yields nothing."""
    try:
        yield
    except resume_errors as error:
        raise InvalidInputError(f"{path}: cannot resume from this checkpoint ({error_summary(error)})") from None


def write_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (a killed job leaves the old file); returns None."""
    with atomic_path(path) as tmp:
        torch.save(dict(payload), tmp)


def load_payload(path: str | os.PathLike) -> Any:
    """The object ``torch.save`` wrote to ``path``, read on the CPU as tensors and plain data only
    (``weights_only``: loading never runs code from the file); a dict gets the shared key names
    for keys older files named otherwise (``pretrain_config`` is returned as ``training_config``).
    Raises whatever ``torch.load`` raises: each reader words its own one-line error."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict):
        for old, new in _OLD_NAMES.items():
            if old in payload and new not in payload:
                payload[new] = payload.pop(old)
    return payload


def cpu_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU tensors of ``module.state_dict()`` (layout kept); returns the new dict."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class TrainingRun:
    """Seed, progress, time and RNG bookkeeping of one training run (``hipas_core.training_loop``).

    Created with ``seed``: calls ``torch.manual_seed(seed)`` and holds ``rng``
    (``np.random.default_rng(seed)``) and ``generators`` (named torch Generators, each seeded by
    the caller, whose state checkpoints carry as well). ``max_minutes``: the time budget of this
    process, counted from ``start``.
    """

    def __init__(self, *, seed: int, max_minutes: float | None = None,
                 generators: Mapping[str, torch.Generator] | None = None) -> None:
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.generators = dict(generators or {})
        self.max_minutes = max_minutes
        self.step = 0
        self.history: list[dict] = []
        self.seconds_before = 0.0  # training time of the runs this one continues
        self.created = time.monotonic()
        self._budget_from = self._counted_from = self.created

    def start(self, *, count_setup: bool = False) -> None:
        """Start the clocks as the loop begins: the time budget runs from now, ``train_seconds``
        too, or (``count_setup``) from the run's creation; returns None."""
        self._budget_from = time.monotonic()
        if not count_setup:
            self._counted_from = self._budget_from

    def out_of_time(self) -> bool:
        """True once more than ``max_minutes`` have passed since ``start`` (never without a budget)."""
        return self.max_minutes is not None and (time.monotonic() - self._budget_from) / 60 > self.max_minutes

    @property
    def train_seconds(self) -> float:
        """Seconds of training so far, the resumed runs' included."""
        return self.seconds_before + (time.monotonic() - self._counted_from)

    def capture_rng(self) -> dict:
        """The RNG state to save: ``{"numpy": ..., "torch": ..., name: state of each generator}``."""
        return {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                **{name: generator.get_state() for name, generator in self.generators.items()}}

    def restore_rng(self, state: Mapping[str, Any]) -> None:
        """Set the generators to a ``capture_rng`` state (the global torch RNG only when ``state``
        holds it: older MAE checkpoints do not); KeyError for a named generator it lacks; returns None."""
        self.rng.bit_generator.state = state["numpy"]
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        for name, generator in self.generators.items():
            generator.set_state(state[name])

    def resume_from(self, payload: Mapping[str, Any], *, source: str | os.PathLike,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
        """Continue a checkpoint's run: ``step``, ``history``, ``train_seconds``, the
        ``optimizer`` state (when given and the payload has one) and the RNG state (when it has
        one). ``InvalidInputError`` naming ``source`` when the payload does not fit; returns None."""
        with resume_check(source):
            if optimizer is not None and "optimizer" in payload:
                optimizer.load_state_dict(payload["optimizer"])
            self.step = int(payload.get("step", 0))
            self.history = list(payload.get("history", []))
            self.seconds_before = float(payload.get("train_seconds", 0.0))
            if "rng" in payload:
                self.restore_rng(payload["rng"])

    def payload(self, *, format: str, kind: str, model_config: dict, state_dict: dict, training_config: dict,
                optimizer: torch.optim.Optimizer, finished: bool, **extra: Any) -> dict:
        """The checkpoint payload: the shared keys (this run's step, history, train_seconds,
        RNG state, the package versions, the optimizer's state) followed by the loop's ``extra``
        keys; returns the dict (``history`` is this run's list, not a copy)."""
        from hipas_core.provenance import package_versions

        return {
            "format": format, "kind": kind, "model_config": model_config, "state_dict": state_dict,
            "training_config": training_config, "versions": package_versions(),
            "step": self.step, "history": self.history, "finished": finished, "train_seconds": self.train_seconds,
            "optimizer": optimizer.state_dict(), "rng": self.capture_rng(), **extra,
        }
