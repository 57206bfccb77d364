"""Whether a SLURM controller answers here (the SLURM tests skip with this reason otherwise)."""

from __future__ import annotations

import functools
import shutil
import subprocess


@functools.cache
def slurm_missing_reason() -> str | None:
    """None when `sinfo` lists a partition, else why not (asked once per session)."""
    if shutil.which("sinfo") is None:
        return "no SLURM here: `sinfo` not found (CI starts a cluster with .ci/setup-slurm.sh)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "no SLURM here: `sinfo` timed out"
    if result.returncode != 0 or not result.stdout.strip():
        return f"no SLURM here: `sinfo` failed ({result.stderr.strip()[:200]})"
    return None
