"""A user's config file stands on its own: the demo cohort is never merged into it."""

from __future__ import annotations

import pytest
from workflow_copy import job_counts, make_working_copy, snakemake

pytestmark = pytest.mark.integration
HEADER = "scan_id\tpath\tsex\tage\tprotocol\tcardiomegaly\tcalcification\tpah\tnodule\tembolism\tcopd\n"


def _user_cohort(root, sites):
    """Manifests of placeholder scans under ``root/data`` and a config naming only them."""
    config = ["sites:"]
    for site, n in sites.items():
        folder = root / "data" / site
        folder.mkdir(parents=True)
        rows = [HEADER]
        for k in range(n):
            (folder / f"{site}{k}.nii.gz").write_bytes(b"placeholder")
            rows.append(f"{site}{k}\t{site}{k}.nii.gz\tF\t55\tNCCT\t0\t0\t0\t0\t0\t0\n")
        (folder / "manifest.tsv").write_text("".join(rows))
        config += [f"  {site}:", f"    manifest: {folder / 'manifest.tsv'}"]
    path = root / "my.yaml"
    path.write_text("\n".join(config) + "\nsegmentation:\n  batch_size: 8\n")
    return path


def test_own_config_plans_exactly_its_scans_even_with_the_papers_site_names(tmp_path):
    copy = make_working_copy(tmp_path / "wc")
    config = _user_cohort(tmp_path, {"harbin": 3, "nanjing": 2})  # harbin is also a demo site
    result = snakemake(copy, "-n", "--configfile", str(config))
    counts = job_counts(result.stdout)
    assert counts["normalize"] == 5 and counts["lungs"] == 5 and counts["morphometry"] == 5
    assert counts["segment"] == 2  # one batch per site
    assert "demo_phantom" not in counts and "phantom_truth" not in counts
    planned = {line.split("results/scans/")[1].split("/")[0] for line in result.stdout.splitlines()
               if "output: results/scans/" in line}
    assert planned == {"harbin0", "harbin1", "harbin2", "nanjing0", "nanjing1"}


def test_without_a_config_file_the_demo_cohort_is_planned(tmp_path):
    copy = make_working_copy(tmp_path / "wc", demo_scans_per_site=None)
    counts = job_counts(snakemake(copy, "-n").stdout)
    assert counts["demo_phantom"] == 40 and counts["phantom_truth"] == 1
