"""glibc allocator settings for large-tensor workloads, applied when ``hipas`` starts.

With glibc's defaults every block larger than the (dynamic, at most 32 MB) mmap threshold is
mapped fresh from the kernel and unmapped when freed, and the top of the heap is trimmed after
large frees; a 3D network allocates and frees such blocks for every layer, so each allocation
pays its page faults again (a `hipas segment` run on a full-size phantom spent as much time in
the kernel as in user space). Raising both thresholds keeps freed blocks in the heap for reuse:
the same run took half the wall time with identical labels (`benchmarks/bench_segment_cpu.py`).

glibc reads these settings from the environment only when a process starts, and ``mallopt``
cannot raise the trim threshold past 2 GiB, so the ``hipas`` command re-executes itself once
with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set. Values the user set already
are kept, ``HIPAS_MALLOC_TUNING=0`` turns this off, and other C libraries are left alone.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping, Sequence

SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),  # blocks up to 4 GiB come from (and return to) the heap
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),  # the heap top is given back only past 64 GiB free
}


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart with, or None when there is nothing to do: not glibc,
    ``HIPAS_MALLOC_TUNING=0``, or a ``MALLOC_*_THRESHOLD_`` variable already set."""
    if environ.get("HIPAS_MALLOC_TUNING", "1") == "0" or any(k in environ for k in SETTINGS):
        return None
    if not _is_glibc():
        return None
    return {**environ, **SETTINGS}


def _is_glibc() -> bool:
    """Whether this process runs on glibc (a constant query, unlike ``platform.libc_ver``, which
    reads the interpreter binary)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):
        return False


def restart_with_tuned_allocator(argv: Sequence[str] | None = None) -> None:
    """Re-execute this Python program (``argv``, default ``sys.argv``) with the tuned environment;
    returns without doing anything when ``tuned_environment`` says so or the program is not a
    file that Python can run again (``python -c``, an interactive session)."""
    argv = list(sys.argv if argv is None else argv)
    environment = tuned_environment(os.environ)
    if environment is None or not argv or not os.path.isfile(argv[0]):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], environment)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel now (glibc ``malloc_trim``; nothing elsewhere).

    With the raised thresholds freed blocks stay in the heap, which is what makes the network's
    per-layer allocations cheap, but a large temporary of one step (the lung mask of the whole
    scan, a stage's activations) would otherwise stay resident for the rest of the run. Called at
    a few step boundaries, it keeps the peak at what one step needs, for one system call each."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once; None off glibc."""
    if not _is_glibc():
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None

