"""The workflow plans on a controller that has Snakemake but not the hipas package or its
dependencies (torch, SimpleITK, scipy; a login node, a SLURM controller job): nothing of hipas_core but the
standard-library manifest reader is loaded while the DAG is built."""

from __future__ import annotations

import shutil
import subprocess
import sys

from workflow_copy import REPO, job_counts, make_working_copy, snakemake_env

BLOCKED = ("hipas_core", "torch", "SimpleITK", "scipy", "skimage")  # numpy, pandas: Snakemake plugins use them

# a meta-path finder that makes the blocked packages unimportable, then Snakemake's own CLI
CONTROLLER = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"{{name}} is not installed on this controller")
        return None
sys.meta_path.insert(0, Blocked())
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


def test_dry_run_plans_without_the_package(tmp_path):
    copy = make_working_copy(tmp_path / "wc")
    (copy / "hipas_core").mkdir()
    shutil.copy(REPO / "hipas_core" / "manifest.py", copy / "hipas_core" / "manifest.py")  # as in a checkout
    result = subprocess.run(
        [sys.executable, "-c", CONTROLLER, "--directory", str(copy), "--snakefile", str(copy / "Snakefile"),
         "-n", "--cores", "1"],
        capture_output=True, text=True, env=snakemake_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = job_counts(result.stdout)
    assert counts["demo_phantom"] == counts["normalize"] == counts["morphometry"] == 8  # 4 sites x 2 scans
    assert counts["cohort_table"] == 1 and counts["figure4"] == 1
