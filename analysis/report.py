"""Write every Figure 4 output (CSV tables, PNG/PDF plots) and one self-contained HTML report.

``write_figure4`` is what ``hipas figure4`` runs. All files are written atomically; none holds a
timestamp, so two runs on the same cohort give byte-identical files.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.cohort import load_cohort
from analysis.figure4 import figure4_tables
from hipas_core.atomic import write_json, write_text
from hipas_core.provenance import file_sha256, provenance

CSV_FLOAT_FORMAT = "%.10g"
FIGURES: tuple[str, ...] = ("fig4a_sex", "fig4b_age", "fig4c_lung_volume", "fig4d_diseases", "fig4ef_regression")
CAPTIONS: dict[str, str] = {
    "table1_sites": "Cohort by site: size, protocol mix, age (mean, sd) and sex ratio (compare the paper's Table 1).",
    "fig4a_sex": "Fig. 4a: indices by sex; two-sided Mann-Whitney U (the groups are unpaired, so not the "
                 "signed-rank test the paper's caption names); effect size = rank-biserial correlation "
                 "(positive: males larger). **** p<0.0001, *** p<0.001, ** p<0.01, * p<0.05, NS.",
    "fig4b_age": "Fig. 4b: mean and SEM of each index by age bin and sex.",
    "fig4c_lung_volume": "Fig. 4c: OLS of each index on lung volume per sex and pooled; the pooled model with "
                         "sex (M=1) gives the sex coefficient with lung volume controlled; the interaction "
                         "term lung_volume_l:sex tests whether the slopes differ by sex.",
    "fig4d_diseases": "Fig. 4d: participants with each confirmed disease state (with, without, missing).",
    "fig4ef_regression": "Fig. 4e/f and Suppl. Table 8: OLS index ~ lung_volume_l + sex + age + six diseases "
                         "(sex M=1, F=0), complete cases, 95% CI.",
    "sensitivity_hc3_site": "Sensitivity: the full model with HC3 robust standard errors, without and with site "
                            "fixed effects (reference: first site alphabetically); coef_ols/se_ols = main model.",
    "chi_square_tertiles": "Chi-square tests: tertiles of each index (whole cohort) against sex and each disease "
                           "(crude, no lung-volume control).",
    "vif": "Variance inflation factors of the full model's covariates.",
    "fdr_bh": "Benjamini-Hochberg FDR (q) over the family of tests in 4a, 4c, 4e/f and the chi-square table.",
}
FIGURE_CAPTIONS: dict[str, str] = {
    "fig4a_sex": "Fig. 4a: distribution of each index by sex (box: quartiles, whiskers 1.5 IQR), Mann-Whitney stars.",
    "fig4b_age": "Fig. 4b: mean \u00b1 SEM of each index across age bins, males solid, females dashed.",
    "fig4c_lung_volume": "Fig. 4c: indices against lung volume with the OLS line per sex (slope \u00b1 SE in the legend).",
    "fig4d_diseases": "Fig. 4d: participants per disease, split by sex.",
    "fig4ef_regression": "Fig. 4e/f: full-model coefficients (colour) with p values, lung volume controlled.",
}


def write_figure4(cohort_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                  age_bin_width: float = 10.0, cohort: pd.DataFrame | None = None) -> list[Path]:
    """Compute every table of the cohort table at ``cohort_path`` and write the CSVs, PNG+PDF
    plots, ``provenance.json`` and ``report.html`` under ``out_dir``. Returns the paths written.

    ``cohort``: the table already loaded with ``load_cohort(cohort_path)`` (it is loaded and
    validated here otherwise); the file itself is still read for its checksum.
    """
    if cohort is None:
        cohort = load_cohort(cohort_path)
    tables = figure4_tables(cohort, age_bin_width=age_bin_width)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, table in tables.items():
        path = out / f"{name}.csv"
        write_text(path, table.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n"))
        written.append(path)
    figures = {
        "fig4a_sex": plots.plot_sex(cohort, tables["fig4a_sex"]),
        "fig4b_age": plots.plot_age(tables["fig4b_age"]),
        "fig4c_lung_volume": plots.plot_lung_volume(cohort, tables["fig4c_lung_volume"]),
        "fig4d_diseases": plots.plot_diseases(tables["fig4d_diseases"]),
        "fig4ef_regression": plots.plot_regression(tables["fig4ef_regression"]),
    }
    for name, figure in figures.items():
        written.extend(plots.save_figure(figure, out / f"{name}.png"))
    record = provenance(cohort=Path(cohort_path).name, cohort_sha256=file_sha256(cohort_path),
                        rows=len(cohort), age_bin_width=age_bin_width)
    write_json(out / "provenance.json", record)
    written.append(out / "provenance.json")
    report = out / "report.html"
    write_text(report, render_report(tables, out, cohort_name=Path(cohort_path).name, rows=len(cohort)))
    written.append(report)
    return written


def render_report(tables: dict[str, pd.DataFrame], figure_dir: str | os.PathLike, *,
                  cohort_name: str, rows: int) -> str:
    """The HTML report: every figure (PNG embedded as base64, so the file stands alone) and every
    table, each with a one-line caption."""
    figure_dir = Path(figure_dir)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>HiPaS Figure 4 report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>HiPaS population analysis (Figure 4)</h1>",
        f"<p>Cohort table <code>{html.escape(cohort_name)}</code>: {rows} rows. Rows missing a model's "
        "variables are dropped for that model only (<code>n_dropped</code> in every table). "
        "Sex is coded M = 1, F = 0.</p>",
        "<h2>Figures</h2>",
    ]
    for name in FIGURES:
        encoded = base64.b64encode((figure_dir / f"{name}.png").read_bytes()).decode("ascii")
        parts.append(f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{encoded}">'
                     f"<figcaption>{html.escape(FIGURE_CAPTIONS[name])} "
                     f'(<a href="{name}.pdf">PDF</a>, <a href="{name}.csv">CSV</a>)</figcaption></figure>')
    parts.append("<h2>Tables</h2>")
    for name, table in tables.items():
        parts.append(f'<section id="table-{name}"><h3>{name}.csv</h3>'
                     f'<p class="caption">{html.escape(CAPTIONS[name])}</p>'
                     f"{_html_table(table)}</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table(table: pd.DataFrame) -> str:
    def fmt(column: str):
        def cell(value) -> str:
            if isinstance(value, bool | np.bool_):
                return "yes" if value else "no"
            if isinstance(value, int | np.integer):
                return str(value)
            if isinstance(value, float | np.floating):
                if not np.isfinite(value):
                    return ""
                if column in ("p", "q_bh"):
                    return "<1e-300" if value == 0 else f"{value:.3g}"
                if value == int(value) and abs(value) < 1e9:
                    return f"{value:.0f}"
                return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
            return html.escape(str(value))
        return cell

    return table.to_html(index=False, escape=False, border=0, classes="data",
                         formatters={c: fmt(c) for c in table.columns}, na_rep="")


_CSS = """
body { font-family: Helvetica, Arial, sans-serif; max-width: 1150px; margin: 1em auto; color: #222; }
figure { margin: 1.5em 0; } figure img { width: 100%; max-width: 1100px; border: 1px solid #ddd; }
figure#fig4d_diseases img { width: 80%; }
figcaption, p.caption { font-size: 0.9em; color: #444; }
table.data { border-collapse: collapse; font-size: 0.8em; margin-bottom: 1.5em; }
table.data th, table.data td { padding: 2px 6px; border-bottom: 1px solid #e4e4e4; text-align: right; }
table.data th { background: #f3f3f3; }
"""
