"""The in-silico population study: a phantom cohort through the workflow itself, measured vs truth.

The phantoms plant the paper's demographic effects (women about +6 % vessel density at equal lung
volume, -0.3 % per year over 40, lung volume from sex, height and age; ``hipas_core.phantom``).
This script writes a phantom cohort config (default 6 sites x 20 small phantoms, NCCT and CTPA,
a third at 2.5-5 mm slices, cohort seed 7: phantom seeds 70000-75019, never used in training,
validation or the held-out tests) into a work folder, runs ``snakemake`` there with the repo's
Snakefile (the real workflow: phantom, normalize with I2SR, segment, lungs, morphometry, cohort
table, Figure 4 and ``phantom_truth``), and reports from the workflow's own outputs:

- per index (SLPA, SLPV in mm; BCPA, BCPV; lung volume): bias, worst error, share within 10 %,
  Pearson r between measured and true values (``results/figure4/agreement.csv``), also by slices;
- the Figure 4 full model fitted on measured indices beside the same model on the true indices:
  each coefficient, SE, and their difference in SE (``fig4ef_measured_vs_truth.csv``).

It writes ``benchmarks/insilico_study.md`` (the tables, with the command, date and machine) and
``benchmarks/insilico_study.png`` (measured vs truth, one panel per index). Rerunning continues
where the workflow stopped (Snakemake's own bookkeeping).

    .venv/bin/python benchmarks/insilico_study.py [--work results/insilico] [--sites 6]
        [--scans-per-site 20] [--seed 7] [--thick-fraction 0.33] [--cores 2] [--model M]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_study_config(work: Path, *, sites: int, scans_per_site: int, seed: int, thick_fraction: float,
                       model: Path) -> Path:
    """The phantom cohort's manifests and config under ``work/config``; returns the config path."""
    from hipas_core.phantom.cohort import demo_cohort_rows, workflow_manifest_text

    rows = demo_cohort_rows(sites=sites, scans_per_site=scans_per_site, seed=seed, thick_fraction=thick_fraction)
    folder = work / "config" / "sites"
    folder.mkdir(parents=True, exist_ok=True)
    config = {"sites": {}, "models": {"sts": str(model), "i2sr": str(REPO / "models" / "i2sr-demo.pt")},
              "segmentation": {"batch_size": 10, "device": "cpu"}, "analysis": {"qc_sample": 0}}
    for site in dict.fromkeys(r["site"] for r in rows):
        manifest = folder / f"{site}.tsv"
        manifest.write_text(workflow_manifest_text([r for r in rows if r["site"] == site]))
        config["sites"][site] = {"manifest": f"config/sites/{site}.tsv", "phantom": True}
    path = work / "config" / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def markdown(frame, columns, formats) -> str:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in frame.itertuples(index=False):
        values = row._asdict()
        lines.append("| " + " | ".join(formats.get(c, "{}").format(values[c]) for c in columns) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "results" / "insilico"))
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--scans-per-site", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--thick-fraction", type=float, default=0.33)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--model", default=str(REPO / "models" / "sts-demo.pt"))
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "insilico_study.md"))
    parser.add_argument("--plot", default=str(REPO / "benchmarks" / "insilico_study.png"))
    args = parser.parse_args()

    import pandas as pd

    from analysis.truth import agreement

    work = Path(args.work).resolve()
    config = write_study_config(work, sites=args.sites, scans_per_site=args.scans_per_site, seed=args.seed,
                                thick_fraction=args.thick_fraction, model=Path(args.model).resolve())
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(config), "--cores", str(args.cores), "--rerun-incomplete",
               "--keep-going", "results/figure4/measured_vs_truth.png"]
    started = time.perf_counter()
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(command, cwd=work, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    minutes = (time.perf_counter() - started) / 60
    if run.returncode != 0:
        print(run.stderr[-4000:], file=sys.stderr)
        print(f"snakemake failed ({run.returncode}); rerun to continue", file=sys.stderr)
        return 1
    figures = work / "results" / "figure4"
    errors = pd.read_csv(figures / "measured_vs_truth.csv")
    summary = pd.read_csv(figures / "agreement.csv")
    coefficients = pd.read_csv(figures / "fig4ef_measured_vs_truth.csv")
    exclusions = pd.read_csv(work / "results" / "cohort" / "exclusions.csv")
    thick = errors["slice_thickness_mm"] > 2.0
    by_slices = pd.concat([agreement(errors[~thick]).assign(slices="<= 2 mm"),
                           agreement(errors[thick]).assign(slices="> 2 mm")], ignore_index=True)
    shutil.copyfile(figures / "measured_vs_truth.png", args.plot)

    n_scans = errors["scan_id"].nunique()
    pct = "{:+.1f} %"
    report = [
        "# In-silico population study (`benchmarks/insilico_study.py`)", "",
        f"{datetime.date.today().isoformat()}, {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores, CPU), {minutes:.1f} min wall for the workflow run (--cores {args.cores}; "
        "0 if it had already finished). Command:", "",
        f"    .venv/bin/python benchmarks/insilico_study.py --sites {args.sites} --scans-per-site "
        f"{args.scans_per_site} --seed {args.seed} --thick-fraction {args.thick_fraction} --cores {args.cores}"
        f" --model {os.path.relpath(args.model, REPO)}", "",
        f"{n_scans} phantoms in the cohort table ({int(thick.groupby(errors['scan_id']).first().sum())} at > 2 mm "
        f"slices), {len(exclusions)} excluded. SLPA/SLPV compared in mm (centreline length), BCPA/BCPV as "
        "bifurcation counts, lung volume in litres; truth: the generator's intrapulmonary figures.", "",
        "## Measured vs truth, per index", "",
        markdown(summary, ["index", "n", "bias_pct", "mean_abs_pct", "worst_pct", "within_10pct", "pearson_r"],
                 {"bias_pct": pct, "mean_abs_pct": "{:.1f} %", "worst_pct": pct, "within_10pct": "{:.0%}",
                  "pearson_r": "{:.3f}"}), "",
        "By slice thickness:", "",
        markdown(by_slices, ["slices", "index", "n", "bias_pct", "worst_pct", "pearson_r"],
                 {"bias_pct": pct, "worst_pct": pct, "pearson_r": "{:.3f}"}), "",
        "![measured vs truth](insilico_study.png)", "",
        "## Figure 4 full model: measured vs true indices", "",
        "`index ~ lung_volume_l + sex + age + 6 diseases` (OLS), fitted on the measured and on the true "
        "indices of the same scans; difference = (measured - truth) / SE of the truth fit.", "",
        markdown(coefficients, ["index", "term", "coef_measured", "se_measured", "coef_truth", "se_truth",
                                "difference_in_se", "within_2se"],
                 {c: "{:.4g}" for c in ("coef_measured", "se_measured", "coef_truth", "se_truth")}
                 | {"difference_in_se": "{:+.2f}"}), "",
        f"Coefficients within 2 SE of the truth fit: {int(coefficients['within_2se'].sum())} of "
        f"{int(coefficients['difference_in_se'].notna().sum())}.",
    ]
    Path(args.report).write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
