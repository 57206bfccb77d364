"""A temporary working copy of the workflow for integration tests (never the repo's results/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tiny_sts_model(path: Path) -> Path:
    """A small, untrained STS cascade: the real code path, fast on CPU. Its thresholds are set
    so that it finds no vessels (an untrained net would call the whole lung a vein, leaving no
    lung volume for Figure 4); the demo model (models/sts-demo.pt) finds real trees."""
    import torch

    from hipas_core.sts.cascade import CascadeConfig
    from hipas_core.sts.checkpoint import build_model, save_checkpoint
    from hipas_core.sts.network import StageConfig

    torch.manual_seed(0)
    config = CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1))).to_dict()
    save_checkpoint(path, {
        "kind": "cascade", "model_config": config, "state_dict": build_model("cascade", config).state_dict(),
        "inference": {"window": [64, 128, 128], "overlap": 0.25, "thresholds": [0.999, 0.999],
                      "vesselness_sigmas_mm": [1.0]},
    })
    return path


def make_working_copy(root: Path, *, sts_model: Path | None = None, demo_scans_per_site: int | None = 2) -> Path:
    """Snakefile, workflow/ (+ the profiles link) and config/ copied to ``root``; models/ linked.
    The copy's demo manifests keep their first ``demo_scans_per_site`` scans (None: all 10).
    Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    (root / "profiles").symlink_to("workflow/profiles")  # as in the repo: the workflow profile
    shutil.copytree(REPO / "config", root / "config")
    if demo_scans_per_site is not None:
        for manifest in (root / "config/sites").glob("demo_*.tsv"):
            lines = manifest.read_text().splitlines()
            manifest.write_text("\n".join(lines[: 1 + demo_scans_per_site]) + "\n")
    (root / "models").mkdir()
    for model in (REPO / "models").glob("*.pt"):
        (root / "models" / model.name).symlink_to(model)
    if sts_model is not None:
        config = yaml.safe_load((root / "config/config.yaml").read_text())
        config["models"]["sts"] = str(sts_model)
        (root / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def write_config(root: Path, sites: dict, **overrides) -> Path:
    """Replace the working copy's config sites (and other sections) and write it back."""
    path = root / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["sites"] = sites
    config.update(overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_env() -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONHASHSEED": "0"}


def snakemake(root: Path, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake in ``root`` (bounded by ``timeout -k``); returns the completed process."""
    command = ["timeout", "-k", "10", str(timeout), str(VENV_BIN / "snakemake"), "--directory", str(root),
               "--snakefile", str(root / "Snakefile"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=snakemake_env())
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """rule -> count from the 'Job stats' table of a dry run."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                break
    return counts
