"""glibc allocator settings for large-tensor workloads, applied once at ``hipas`` start-up.

With glibc's defaults every tensor larger than the (dynamic, at most 32 MB) mmap threshold is
mapped fresh from the kernel and unmapped again when freed, and the top of the heap is trimmed
back after every large free; a 3D network allocates and frees such blocks for every layer, so
each allocation pays its page faults again. On this project's CPU a `hipas segment` run spent as
much time in the kernel as in user space (`benchmarks/bench_segment_cpu.py`). Raising both
thresholds keeps freed blocks in the heap for reuse. ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment (the user's own choice) take precedence, and
``HIPAS_MALLOC_TUNING=0`` turns the settings off.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from (and return to) the heap


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds to ``THRESHOLD_BYTES``; returns whether they were set
    (False off glibc, when ``HIPAS_MALLOC_TUNING=0``, or when the environment already sets them)."""
    if os.environ.get("HIPAS_MALLOC_TUNING", "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
