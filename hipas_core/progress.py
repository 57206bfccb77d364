"""Progress of long commands: a tqdm bar when stderr is a terminal, plain log lines otherwise.

``Progress(description, total=N, unit="windows")`` counts work done (``update``). On a terminal
it is a tqdm bar; elsewhere (a log file, a Snakemake or SLURM job) it writes a line
``description: windows k/N (12.3 s)`` to stderr at most every ``LINE_INTERVAL_S`` seconds and
once at the end, as nnU-Net and TotalSegmentator do. ``stage(description)`` reports a step
without a count (``description: done (0.4 s)``) and ``log(message)`` one line of its own.

The mode is ``"bar"``, ``"lines"`` or ``"off"`` (nothing at all): the ``mode`` argument where
it is given and not ``"auto"``, else ``$HIPAS_PROGRESS``, else bar on a terminal, lines otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hipas_core.errors import InvalidInputError

MODES = ("auto", "bar", "lines", "off")
MODE_ENV = "HIPAS_PROGRESS"
LINE_INTERVAL_S = 10.0  # lines mode: at most one line per this many seconds (plus the last one)


def resolve_mode(mode: str | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for ``mode`` (None or ``"auto"``: ``$HIPAS_PROGRESS``,
    else bar when stderr is a terminal, else lines)."""
    if mode in (None, "auto"):
        mode = os.environ.get(MODE_ENV, "").strip().lower() or "auto"
        if mode not in MODES:
            raise InvalidInputError(f"${MODE_ENV}={mode!r}: one of {', '.join(MODES)} expected")
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: one of {MODES} expected")
    if mode == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"
    return mode


def log(message: str, *, mode: str | None = None) -> None:
    """Write ``message`` as one line on stderr (above any bar on a terminal); nothing when off."""
    mode = resolve_mode(mode)
    if mode == "bar":
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    elif mode == "lines":
        print(message, file=sys.stderr, flush=True)


@contextmanager
def stage(description: str, *, mode: str | None = None) -> Iterator[None]:
    """Report one step without a count: ``description: done (0.4 s)`` once it has finished."""
    mode = resolve_mode(mode)
    started = time.perf_counter()
    yield
    log(f"{description}: done ({time.perf_counter() - started:.1f} s)", mode=mode)


class Progress:
    """Work done of ``total`` (``update(n)``), a bar or log lines; use it as a context manager.

    ``unit`` names what is counted ("windows", "tiles", "steps"); ``initial`` is work already
    done (a resumed run); ``set_postfix(loss=...)`` adds values to the bar and to the lines;
    ``log(message)`` writes a line of its own (in every mode but off).
    """

    def __init__(self, description: str, *, total: int | None = None, unit: str = "steps", initial: int = 0,
                 mode: str | None = None) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.mode = resolve_mode(mode)
        self.done = int(initial)
        self._postfix: dict[str, object] = {}
        self._started = self._last_line = time.perf_counter()
        self._reported: int | None = None
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=description, unit=f" {unit}", dynamic_ncols=True,
                             file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and time.perf_counter() - self._last_line >= LINE_INTERVAL_S:
            self._line()

    def set_postfix(self, **values: object) -> None:
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix({k: str(v) for k, v in values.items()}, refresh=False)

    def log(self, message: str) -> None:
        log(message, mode=self.mode)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self._reported != self.done:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _line(self) -> None:
        now = time.perf_counter()
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        extras = "".join(f", {k} {v}" for k, v in self._postfix.items())
        print(f"{self.description}: {self.unit} {count} ({now - self._started:.1f} s){extras}", file=sys.stderr,
              flush=True)
        self._last_line, self._reported = now, self.done
