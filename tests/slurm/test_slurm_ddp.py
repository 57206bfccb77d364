"""Distributed training on a real (single-node) SLURM cluster: a 2-task ``srun hipas train`` (each
task one gloo rank, from SLURM's variables) and the example batch script
``workflow/profiles/slurm/train_ddp.sbatch`` (LAUNCHER=srun, CPU; the job asks for the CI node's one fake GPU in place of the script's four)
each train a few steps.

CI starts the cluster with .ci/setup-slurm.sh. Without a reachable SLURM (`sinfo` missing or
failing) the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import slurm_missing_reason

from hipas_core.sts.checkpoint import load_checkpoint

MISSING = slurm_missing_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

REPO = Path(__file__).resolve().parents[2]
HIPAS = shutil.which("hipas", path=str(Path(sys.executable).parent)) or "hipas"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(tmp_path: Path, out: Path) -> list[str]:
    """A tiny cascade, one small phantom (cached here first, so the two ranks only read it), 3 steps."""
    from hipas_core.sts.phantom_cases import phantom_case

    cache = tmp_path / "cache"
    phantom_case(1, protocol="ncct", cache_dir=cache)
    return ["--out", str(out), "--phantom-seeds", "1", "--val-seeds", "1", "--cache", str(cache),
            "--patch", "16", "32", "32", "--width", "4", "--blocks", "0", "0", "1", "1", "1", "--steps", "3",
            "--lr", "1e-3", "--val-every", "3", "--checkpoint-every", "3", "--global-batch-size", "2",
            "--device", "cpu", "--no-progress"]


def _env() -> dict:
    # one node: the ranks meet on the loopback interface at a free port
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0"}


def _check(out: Path) -> None:
    state = load_checkpoint(out)
    assert state["step"] == 3 and state["finished"]
    assert state["distributed"] == {"world_size": 2, "batch_per_rank": 1, "global_batch": 2}


def test_two_task_srun_training_completes(tmp_path):
    out = tmp_path / "srun.pt"
    command = ["srun", "--ntasks=2", "--cpus-per-task=1", "--mem=3000", "--time=15", "-p", "main",
               "--kill-on-bad-exit=1", HIPAS, "train", *_train_args(tmp_path, out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=_env(), cwd=tmp_path)
    (tmp_path / "srun.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(f"{out}: 3 steps") == 1  # rank 0 alone reports
    assert "2 ranks (gloo)" in result.stderr
    _check(out)


def test_the_example_batch_script_trains_with_srun_ranks(tmp_path):
    out = tmp_path / "sbatch.pt"
    log = tmp_path / "job.out"
    env = {**_env(), "LAUNCHER": "srun", "HIPAS": HIPAS, "HIPAS_DEVICE": "cpu"}
    command = ["sbatch", "--wait", "-p", "main", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
               "--gpus-per-node=1", "--mem=3000", "--time=15", f"--output={log}", f"--chdir={tmp_path}",
               str(REPO / "workflow/profiles/slurm/train_ddp.sbatch"), *_train_args(tmp_path, out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    text = log.read_text() if log.is_file() else ""
    assert result.returncode == 0, result.stderr[-2000:] + text[-3000:]
    assert "launcher srun, device cpu" in text and text.count(f"{out}: 3 steps") == 1
    _check(out)
