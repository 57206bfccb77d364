"""Figure 4 plots (matplotlib, Agg): publication-grade, readable at a 7-inch (double-column)
width, arteries blue and veins red as in the paper (males dark, females light).

Each ``plot_*`` function takes the cohort and/or the tables of ``analysis.figure4`` and returns
a matplotlib Figure; ``save_figure`` writes it as PNG and PDF atomically with fixed metadata
(no timestamps), so the bytes are the same on every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from analysis.cohort import DISEASES, INDICES  # noqa: E402
from analysis.figure4 import significance_stars  # noqa: E402
from hipas_core.atomic import atomic_path  # noqa: E402

ARTERY_BLUE = "#1f5fa8"
VEIN_RED = "#c0282d"
SHADES = {  # (index kind, sex) -> colour
    ("artery", "M"): "#1f5fa8", ("artery", "F"): "#7fb0e0",
    ("vein", "M"): "#c0282d", ("vein", "F"): "#f09a8e",
}
LABELS = {"SLPA": "SL artery (SLPA)", "SLPV": "SL vein (SLPV)", "BCPA": "BC artery (BCPA)",
          "BCPV": "BC vein (BCPV)"}
DISEASE_LABELS = {"cardiomegaly": "Cardiomegaly", "calcification": "Artery wall\ncalcification",
                  "pah": "PAH", "nodule": "Pulmonary\nnodule", "embolism": "Pulmonary\nembolism",
                  "copd": "COPD"}
SEX_NAMES = {"M": "Male", "F": "Female"}
WIDTH_IN = 7.0
MIN_BIN_N = 20
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.dpi": 200, "pdf.fonttype": 42, "svg.hashsalt": "hipas",
}


def kind(index: str) -> str:
    """``"artery"`` for SLPA/BCPA, ``"vein"`` for SLPV/BCPV."""
    return "artery" if index.endswith("A") else "vein"


def save_figure(figure, destination_png: str | os.PathLike) -> list[Path]:
    """Write ``figure`` as ``<name>.png`` and ``<name>.pdf`` atomically, without timestamps or
    software tags; close it. Returns the two paths."""
    png = Path(destination_png).with_suffix(".png")
    pdf = png.with_suffix(".pdf")
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": None})
    with atomic_path(pdf) as tmp:
        figure.savefig(tmp, format="pdf", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(figure)
    return [png, pdf]


def plot_sex(cohort: pd.DataFrame, table: pd.DataFrame):
    """Figure 4a: box plots of each index by sex with Mann-Whitney significance stars."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, 4, figsize=(WIDTH_IN, 2.6), layout="constrained")
        for ax, index in zip(axes, INDICES, strict=True):
            data = [cohort.loc[cohort["sex"] == s, index].dropna().to_numpy() for s in ("M", "F")]
            boxes = ax.boxplot(data, tick_labels=[SEX_NAMES["M"], SEX_NAMES["F"]], widths=0.6,
                               patch_artist=True, showfliers=True, whis=1.5,
                               flierprops={"marker": ".", "markersize": 1.5, "alpha": 0.3, "rasterized": True},
                               medianprops={"color": "black", "linewidth": 1.0})
            for patch, sex in zip(boxes["boxes"], ("M", "F"), strict=True):
                patch.set_facecolor(SHADES[(kind(index), sex)])
                patch.set_edgecolor("black")
                patch.set_linewidth(0.6)
            row = table.loc[table["index"] == index].iloc[0]
            top = max((d.max() for d in data if len(d)), default=1.0)
            ax.plot([1, 1, 2, 2], [top * 1.03, top * 1.06, top * 1.06, top * 1.03], color="black", linewidth=0.7)
            ax.text(1.5, top * 1.07, significance_stars(row["p"]), ha="center", va="bottom")
            ax.set_ylim(top=top * 1.16)
            ax.set_title(LABELS[index], color=ARTERY_BLUE if kind(index) == "artery" else VEIN_RED)
            ax.set_ylabel("voxels" if index.startswith("SL") else "bifurcations")
        figure.suptitle("Vessel abundance by sex (two-sided Mann-Whitney U)", fontsize=9)
    return figure


def plot_age(table: pd.DataFrame):
    """Figure 4b: mean +/- SEM of each index by age bin, per sex (SL left, BC right). Bins with
    fewer than ``MIN_BIN_N`` people are left out of the plot (they stay in the table)."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 2.8), layout="constrained")
        for ax, family in zip(axes, ("SL", "BC"), strict=True):
            for index in (f"{family}PA", f"{family}PV"):
                for sex, style in (("M", "-"), ("F", "--")):
                    rows = table[(table["index"] == index) & (table["sex"] == sex) & (table["n"] >= MIN_BIN_N)]
                    centres = (rows["age_low"] + rows["age_high"]) / 2
                    ax.errorbar(centres, rows["mean"], yerr=rows["sem"], linestyle=style, marker="o",
                                markersize=3, capsize=2, linewidth=1.2, color=SHADES[(kind(index), sex)],
                                label=f"{index} {SEX_NAMES[sex].lower()}")
            ax.set_xlabel("age (years, bin centre)")
            ax.set_ylabel("skeleton length (voxels)" if family == "SL" else "branch count (bifurcations)")
            ax.legend(frameon=False, ncols=2)
        figure.suptitle(f"Vessel abundance across ages (mean \u00b1 SEM; bins with n \u2265 {MIN_BIN_N})", fontsize=9)
    return figure


def plot_lung_volume(cohort: pd.DataFrame, table: pd.DataFrame):
    """Figure 4c: each index against lung volume, points and fitted line per sex."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, 4, figsize=(WIDTH_IN, 2.5), layout="constrained")
        for ax, index in zip(axes, INDICES, strict=True):
            for sex in ("F", "M"):
                rows = cohort[(cohort["sex"] == sex)][["lung_volume_l", index]].dropna()
                colour = SHADES[(kind(index), sex)]
                ax.scatter(rows["lung_volume_l"], rows[index], s=1.0, alpha=0.25, color=colour,
                           linewidths=0, rasterized=True)
                fit = table[(table["index"] == index) & (table["group"] == sex)].set_index("term")
                if not len(fit):
                    continue
                x = np.linspace(rows["lung_volume_l"].quantile(0.01), rows["lung_volume_l"].quantile(0.99), 2)
                slope, se = fit.loc["lung_volume_l", "coef"], fit.loc["lung_volume_l", "se"]
                ax.plot(x, fit.loc["Intercept", "coef"] + slope * x, color=colour, linewidth=1.6,
                        label=f"{SEX_NAMES[sex]}: {slope:.0f} \u00b1 {se:.0f} /L")
            ax.set_xlabel("lung volume (L)")
            ax.set_title(LABELS[index], color=ARTERY_BLUE if kind(index) == "artery" else VEIN_RED)
            ax.legend(frameon=False, loc="upper left", handlelength=1.2)
        figure.suptitle("Vessel abundance against lung volume (OLS per sex, slope \u00b1 SE)", fontsize=9)
    return figure


def plot_diseases(table: pd.DataFrame):
    """Figure 4d: participants per disease (bars split by sex, total on top)."""
    with plt.rc_context(STYLE):
        figure, ax = plt.subplots(figsize=(WIDTH_IN * 0.8, 2.6), layout="constrained")
        x = np.arange(len(table))
        ax.bar(x, table["n_with_M"], color="#555555", label="male", width=0.7)
        ax.bar(x, table["n_with_F"], bottom=table["n_with_M"], color="#bbbbbb", label="female", width=0.7)
        for xi, total in zip(x, table["n_with"], strict=True):
            ax.text(xi, total, f"{total}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [DISEASE_LABELS[d] for d in table["disease"]])
        ax.set_ylabel("participants")
        ax.set_ylim(top=table["n_with"].max() * 1.12)
        ax.legend(frameon=False)
        ax.set_title("Confirmed disease states")
    return figure


def plot_regression(table: pd.DataFrame):
    """Figures 4e (SL) and 4f (BC): heat maps of the full model's coefficients for sex, age and
    the six diseases, each cell annotated with its coefficient and p value. Colours are centred at
    zero and scaled by the disease coefficients (larger cells saturate; the value is printed)."""
    terms = ["sex", "age", *DISEASES]
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(2, 1, figsize=(WIDTH_IN, 3.6), layout="constrained")
        for ax, family, letter in zip(axes, ("SL", "BC"), ("e", "f"), strict=True):
            indices = [f"{family}PA", f"{family}PV"]
            pivot = table[table["index"].isin(indices)].pivot(index="index", columns="term", values="coef")
            pvals = table[table["index"].isin(indices)].pivot(index="index", columns="term", values="p")
            values = pivot.loc[indices, terms].to_numpy(dtype=float)
            disease_values = np.abs(pivot.loc[indices, list(DISEASES)].to_numpy(dtype=float))
            finite = disease_values[np.isfinite(disease_values)]
            limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
            image = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto")
            for i, index in enumerate(indices):
                for j, term in enumerate(terms):
                    p = pvals.loc[index, term]
                    if not np.isfinite(values[i, j]):
                        text = "not\nestimable"
                    elif p >= 1e-4:
                        text = f"{values[i, j]:.1f}\np={p:.2g}"
                    else:
                        text = f"{values[i, j]:.1f}\np<0.0001"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                            color="white" if abs(values[i, j]) > 0.6 * limit else "black")
            ax.set_xticks(range(len(terms)), ["Sex (M=1)", "Age", *[DISEASE_LABELS[d] for d in DISEASES]])
            ax.set_yticks(range(2), indices)
            for tick, index in zip(ax.get_yticklabels(), indices, strict=True):
                tick.set_color(ARTERY_BLUE if kind(index) == "artery" else VEIN_RED)
            ax.set_title(f"{letter}  {'skeleton length' if family == 'SL' else 'branch count'}: "
                         "coefficients of index ~ lung volume + sex + age + diseases", loc="left")
            figure.colorbar(image, ax=ax, extend="both", label="coefficient", shrink=0.9)
    return figure
