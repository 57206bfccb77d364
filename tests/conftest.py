"""Shared fixtures. Volumes are tiny and seeded; arrays are (z, y, x) with spacing in mm."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_hipas(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run the ``hipas`` console script in a subprocess (as users do)."""
    exe = shutil.which("hipas", path=str(Path(sys.executable).parent)) or "hipas"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"hipas {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def hipas():
    """``run_hipas`` as a fixture (session-scoped, so module-scoped fixtures can use it too)."""
    return run_hipas
