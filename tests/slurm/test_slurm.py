"""The workflow on a real (single-node) SLURM cluster through the cluster profile.

CI starts the cluster with .ci/setup-slurm.sh (accounting on, one fake GPU in gres). Without a
reachable SLURM (`sinfo` missing or failing) the test is skipped.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from slurm_cluster import slurm_missing_reason  # noqa: E402
from workflow_copy import make_working_copy, snakemake, tiny_sts_model, write_config  # noqa: E402

pytestmark = pytest.mark.slurm


@pytest.mark.skipif(slurm_missing_reason() is not None, reason=slurm_missing_reason() or "")
def test_workflow_runs_on_slurm_and_segment_gets_a_gpu(tmp_path):
    copy = make_working_copy(tmp_path / "wc", sts_model=tiny_sts_model(tmp_path / "tiny-sts.pt"))
    write_config(copy, {"harbin": {"manifest": "config/sites/demo_harbin.tsv", "phantom": True}})
    target = "results/cohort/metrics.parquet"
    result = snakemake(
        copy, target,  # targets first: --default-resources takes every word after it
        "--profile", str(copy / "workflow/profiles/slurm"),
        "--jobs", "4", "--latency-wait", "10", "--verbose",
        "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-logdir", str(tmp_path / "slurm-logs"),
        "--default-resources", "slurm_partition=main", "runtime=20", "mem_mb=1000",
        timeout=900,
    )
    log = result.stdout + result.stderr
    (tmp_path / "snakemake.log").write_text(log)
    sbatch_calls = [line for line in log.splitlines() if "sbatch call" in line]
    segment_calls = [c for c in sbatch_calls if "--comment rule_segment_" in c]
    assert segment_calls, "no sbatch call for rule segment in the log:\n" + "\n".join(sbatch_calls)
    assert all(re.search(r"--gpus=1\b", c) for c in segment_calls), segment_calls
    assert all(" -p main" in c for c in sbatch_calls)
    cohort = pd.read_parquet(copy / target)
    assert cohort["scan_id"].tolist() == ["harbin_001", "harbin_002"]
    accounting = subprocess.run(["sacct", "-n", "-X", "-o", "JobName%60,AllocTRES%60,State"],
                                capture_output=True, text=True, timeout=30)
    assert accounting.returncode == 0
    assert any("gpu" in line and "COMPLETED" in line for line in accounting.stdout.splitlines())
