"""Figure 4 statistics: the paper's tables (4a-4f, Suppl. Table 8) and the sensitivity analyses.

Every function takes a validated cohort (``analysis.cohort.load_cohort``), never modifies it,
and returns a new pandas DataFrame. Sex enters models as ``sex`` = 1 for M, 0 for F. Rows with a
missing value in a model's variables are dropped for that model only; ``n`` is the number of
rows used and ``n_dropped`` the number dropped (both in every table).

Two-group comparisons use the two-sided Mann-Whitney U test: the paper's Fig. 4a caption says
"Wilcoxon signed-rank", but males and females are different people (unpaired groups), for which
the paper's own Methods prescribe Mann-Whitney U. Effect size: rank-biserial correlation
``2 U_M / (n_M n_F) - 1`` (positive when males tend to have larger values).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.outliers_influence import variance_inflation_factor

from analysis.cohort import DISEASES, INDICES, complete_cases

FULL_TERMS: tuple[str, ...] = ("lung_volume_l", "sex", "age", *DISEASES)
COEF_COLUMNS: tuple[str, ...] = ("index", "term", "coef", "se", "t", "p", "ci_low", "ci_high", "n", "n_dropped")
TERTILES: tuple[str, ...] = ("low", "middle", "high")


def model_frame(cohort: pd.DataFrame) -> pd.DataFrame:
    """The cohort with ``sex`` coded numerically (M = 1.0, F = 0.0, missing = NaN)."""
    data = cohort.copy()
    data["sex"] = cohort["sex"].map({"M": 1.0, "F": 0.0}).astype("float64")
    return data


def sex_comparison(cohort: pd.DataFrame) -> pd.DataFrame:
    """Figure 4a: each index by sex (n, mean, sd, median, q1, q3) and the two-sided Mann-Whitney U
    test between males and females (U of the male group, p, rank-biserial effect size)."""
    rows = []
    known, n_dropped = complete_cases(cohort, ["sex"])
    for index in INDICES:
        row: dict[str, object] = {"index": index}
        groups = {}
        for sex in ("M", "F"):
            values = known.loc[known["sex"] == sex, index].to_numpy(dtype=float)
            groups[sex] = values
            q1, median, q3 = np.percentile(values, [25, 50, 75]) if len(values) else (np.nan,) * 3
            row.update({f"n_{sex}": len(values), f"mean_{sex}": values.mean() if len(values) else np.nan,
                        f"sd_{sex}": values.std(ddof=1) if len(values) > 1 else np.nan,
                        f"median_{sex}": median, f"q1_{sex}": q1, f"q3_{sex}": q3})
        if len(groups["M"]) and len(groups["F"]):
            test = stats.mannwhitneyu(groups["M"], groups["F"], alternative="two-sided", method="asymptotic")
            u_male, p = float(test.statistic), float(test.pvalue)
            rank_biserial = 2.0 * u_male / (len(groups["M"]) * len(groups["F"])) - 1.0
        else:
            u_male = p = rank_biserial = np.nan
        row.update({"test": "Mann-Whitney U, two-sided", "U_M": u_male, "p": p,
                    "rank_biserial": rank_biserial, "n": len(groups["M"]) + len(groups["F"]),
                    "n_dropped": n_dropped})
        rows.append(row)
    return pd.DataFrame(rows)


def age_bins(*, bin_width: float = 10.0, low: float, high: float) -> np.ndarray:
    """Bin edges of width ``bin_width`` years covering [low, high] (left-closed bins)."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    start = np.floor(low / bin_width) * bin_width
    stop = (np.floor(high / bin_width) + 1) * bin_width
    return np.arange(start, stop + bin_width / 2, bin_width)


def age_profile(cohort: pd.DataFrame, *, bin_width: float = 10.0, edges=None) -> pd.DataFrame:
    """Figure 4b: each index by age bin and sex: n, mean, SEM (standard error of the mean).

    Bins are left-closed ``[low, high)`` of ``bin_width`` years, or the given ``edges``.
    """
    known, n_dropped = complete_cases(cohort, ["age", "sex"])
    if edges is None:
        edges = age_bins(bin_width=bin_width, low=float(known["age"].min()), high=float(known["age"].max()))
    edges = np.asarray(edges, dtype=float)
    position = np.searchsorted(edges, known["age"].to_numpy(), side="right") - 1
    inside = (position >= 0) & (position < len(edges) - 1)
    rows = []
    for index in INDICES:
        for sex in ("M", "F"):
            for b in range(len(edges) - 1):
                chosen = inside & (position == b) & (known["sex"] == sex).to_numpy()
                values = known[index].to_numpy(dtype=float)[chosen]
                if not len(values):
                    continue
                rows.append({"index": index, "sex": sex, "age_bin": f"[{edges[b]:g}, {edges[b + 1]:g})",
                             "age_low": edges[b], "age_high": edges[b + 1], "n": len(values),
                             "mean": values.mean(),
                             "sem": values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan,
                             "n_dropped": n_dropped + int((~inside).sum())})
    return pd.DataFrame(rows)


def lung_volume_fits(cohort: pd.DataFrame) -> pd.DataFrame:
    """Figure 4c: ``index ~ lung_volume_l`` per sex (M, F) and pooled; the pooled model with sex
    (``index ~ lung_volume_l + sex``: the sex coefficient with lung volume controlled); and the
    interaction model (``index ~ lung_volume_l * sex``), whose ``lung_volume_l:sex`` term tests
    whether the slopes differ between the sexes. All terms, with r2, n and n_dropped."""
    data = model_frame(cohort)
    tables = []
    for index in INDICES:
        specs = [
            ("M", ["lung_volume_l"], data["sex"] == 1.0),
            ("F", ["lung_volume_l"], data["sex"] == 0.0),
            ("all", ["lung_volume_l"], None),
            ("all", ["lung_volume_l", "sex"], None),
            ("all", ["lung_volume_l", "sex", "lung_volume_l:sex"], None),
        ]
        for group, terms, subset in specs:
            columns = ["lung_volume_l", "sex"] if subset is not None else [t for t in terms if ":" not in t]
            rows, n_dropped = complete_cases(data, [index, *columns])
            if subset is not None:
                rows = rows.loc[subset.loc[rows.index]]
            table = _fit_table(rows, index, terms, n_dropped=n_dropped)
            table.insert(1, "group", group)
            table.insert(2, "model", "lung_volume_l * sex" if len(terms) == 3 else " + ".join(terms))
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def disease_counts(cohort: pd.DataFrame) -> pd.DataFrame:
    """Figure 4d: participants per disease (with, without, missing, percent of known; with, by sex)."""
    rows = []
    for disease in DISEASES:
        flags = cohort[disease]
        known = flags.notna()
        n_with = int((flags == 1.0).sum())
        rows.append({"disease": disease, "n_with": n_with, "n_without": int((flags == 0.0).sum()),
                     "n_missing": int((~known).sum()),
                     "percent_with": 100.0 * n_with / int(known.sum()) if known.any() else np.nan,
                     "n_with_M": int(((flags == 1.0) & (cohort["sex"] == "M")).sum()),
                     "n_with_F": int(((flags == 1.0) & (cohort["sex"] == "F")).sum())})
    return pd.DataFrame(rows)


def full_regression(cohort: pd.DataFrame, *, cov_type: str = "nonrobust",
                    site_effects: bool = False) -> pd.DataFrame:
    """Figures 4e/f and Suppl. Table 8: OLS ``index ~ lung_volume_l + sex + age + cardiomegaly +
    calcification + pah + nodule + embolism + copd`` for each index, on complete cases.

    Columns ``index, term, coef, se, t, p, ci_low, ci_high, n, n_dropped`` (95% CI). With
    ``cov_type="HC3"`` the standard errors are heteroskedasticity-robust (HC3; t reference
    distribution kept); with ``site_effects`` site fixed effects are added (terms ``site[NAME]``,
    the first site in alphabetical order is the reference).
    """
    data = model_frame(cohort)
    tables = []
    for index in INDICES:
        rows, n_dropped = complete_cases(data, [index, *FULL_TERMS])
        site_terms = []
        if site_effects:
            sites = sorted(rows["site"].unique())
            rows = rows.assign(**{f"site_{i}": (rows["site"] == s).astype(float) for i, s in enumerate(sites)})
            site_terms = [f"site_{i}" for i in range(1, len(sites))]
        table = _fit_table(rows, index, [*FULL_TERMS, *site_terms], n_dropped=n_dropped, cov_type=cov_type)
        if site_effects:
            names = {f"site_{i}": f"site[{s}]" for i, s in enumerate(sites)}
            table["term"] = table["term"].replace(names)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[list(COEF_COLUMNS)]


def sensitivity(cohort: pd.DataFrame) -> pd.DataFrame:
    """The full model with HC3 robust standard errors, without and with site fixed effects,
    beside the plain OLS estimate (``coef_ols``, ``se_ols``) for comparison."""
    plain = full_regression(cohort)[["index", "term", "coef", "se"]].rename(
        columns={"coef": "coef_ols", "se": "se_ols"})
    variants = []
    for variant, site_effects in (("HC3", False), ("site_FE+HC3", True)):
        table = full_regression(cohort, cov_type="HC3", site_effects=site_effects)
        table.insert(0, "variant", variant)
        variants.append(table.merge(plain, on=["index", "term"], how="left"))
    return pd.concat(variants, ignore_index=True)


def variance_inflation(cohort: pd.DataFrame) -> pd.DataFrame:
    """Variance inflation factors of the full model's covariates (on its complete cases)."""
    data = model_frame(cohort)
    rows, n_dropped = complete_cases(data, list(FULL_TERMS))
    varying = [t for t in FULL_TERMS if rows[t].nunique() > 1]  # a constant has no VIF
    design = np.column_stack([np.ones(len(rows)), rows[varying].to_numpy(dtype=float)])
    vif = {t: variance_inflation_factor(design, i + 1) for i, t in enumerate(varying)} if len(rows) > len(varying) + 1 else {}
    return pd.DataFrame({
        "term": list(FULL_TERMS), "vif": [vif.get(t, np.nan) for t in FULL_TERMS],
        "n": len(rows), "n_dropped": n_dropped,
    })


def tertile_chi_square(cohort: pd.DataFrame) -> pd.DataFrame:
    """Chi-square tests of independence: each index's tertile (low/middle/high, cut on the whole
    cohort) against sex and against each disease flag. Columns index, variable, chi2, dof, p,
    cramers_v, n, n_dropped. No lung-volume control: this is the paper's crude association test.
    Ties are split by row order so the tertiles have equal sizes; a variable with one level
    (a disease nobody has) gives empty statistics."""
    rows = []
    for index in INDICES:
        tertile = pd.qcut(cohort[index].rank(method="first"), 3, labels=list(TERTILES))
        for variable in ("sex", *DISEASES):
            known = cohort[variable].notna()
            table = pd.crosstab(tertile[known], cohort.loc[known, variable])
            n = int(table.to_numpy().sum())
            chi2 = p = cramers_v = np.nan
            dof = 0
            if min(table.shape) > 1:
                chi2, p, dof, _ = stats.chi2_contingency(table.to_numpy())
                cramers_v = np.sqrt(chi2 / (n * (min(table.shape) - 1)))
            rows.append({"index": index, "variable": variable, "chi2": chi2, "dof": int(dof), "p": p,
                         "cramers_v": cramers_v, "n": n, "n_dropped": int((~known).sum())})
    return pd.DataFrame(rows)


def site_summary(cohort: pd.DataFrame) -> pd.DataFrame:
    """Table 1 of this cohort: per site n, CTPA/NCCT counts, age mean and sd, male/female %."""
    rows = []
    for site, group in cohort.groupby("site", sort=False):
        known_sex = group["sex"].notna()
        male = float((group["sex"] == "M").sum())
        rows.append({"site": site, "n": len(group),
                     "n_NCCT": int((group["protocol"] == "NCCT").sum()),
                     "n_CTPA": int((group["protocol"] == "CTPA").sum()),
                     "age_mean": group["age"].mean(), "age_sd": group["age"].std(ddof=1),
                     "male_percent": 100.0 * male / known_sex.sum() if known_sex.any() else np.nan,
                     "female_percent": 100.0 * (known_sex.sum() - male) / known_sex.sum() if known_sex.any() else np.nan})
    return pd.DataFrame(rows)


def fdr_table(tables: dict[str, pd.DataFrame], *, alpha: float = 0.05) -> pd.DataFrame:
    """Benjamini-Hochberg FDR over the family of tests in the Figure 4 tables: 4a (Mann-Whitney U
    per index), 4c (per-sex slopes, the sex term with lung volume controlled, the slope
    interaction), 4e/f (every non-intercept term) and the tertile chi-square tests."""
    family = []
    a = tables["fig4a_sex"]
    family.append(pd.DataFrame({"table": "fig4a_sex", "index": a["index"], "test": "M vs F (Mann-Whitney U)",
                                "p": a["p"]}))
    c = tables["fig4c_lung_volume"]
    chosen = (((c["group"] != "all") & (c["term"] == "lung_volume_l"))
              | ((c["model"] == "lung_volume_l + sex") & (c["term"] == "sex"))
              | (c["term"] == "lung_volume_l:sex"))
    c = c[chosen]
    family.append(pd.DataFrame({"table": "fig4c_lung_volume", "index": c["index"],
                                "test": c["group"] + ": " + c["model"] + " [" + c["term"] + "]", "p": c["p"]}))
    e = tables["fig4ef_regression"]
    e = e[e["term"] != "Intercept"]
    family.append(pd.DataFrame({"table": "fig4ef_regression", "index": e["index"], "test": e["term"], "p": e["p"]}))
    x = tables["chi_square_tertiles"]
    family.append(pd.DataFrame({"table": "chi_square_tertiles", "index": x["index"],
                                "test": "tertile vs " + x["variable"], "p": x["p"]}))
    result = pd.concat(family, ignore_index=True)
    testable = result["p"].notna()
    result["q_bh"] = np.nan
    result["significant_bh"] = False
    if testable.any():
        reject, q, _, _ = multipletests(result.loc[testable, "p"].to_numpy(), alpha=alpha, method="fdr_bh")
        result.loc[testable, "q_bh"] = q
        result.loc[testable, "significant_bh"] = reject
    return result


def figure4_tables(cohort: pd.DataFrame, *, age_bin_width: float = 10.0) -> dict[str, pd.DataFrame]:
    """Every table of the Figure 4 analysis, by output name (the CSV file name without suffix)."""
    tables = {
        "table1_sites": site_summary(cohort),
        "fig4a_sex": sex_comparison(cohort),
        "fig4b_age": age_profile(cohort, bin_width=age_bin_width),
        "fig4c_lung_volume": lung_volume_fits(cohort),
        "fig4d_diseases": disease_counts(cohort),
        "fig4ef_regression": full_regression(cohort),
        "sensitivity_hc3_site": sensitivity(cohort),
        "chi_square_tertiles": tertile_chi_square(cohort),
        "vif": variance_inflation(cohort),
    }
    tables["fdr_bh"] = fdr_table(tables)
    return tables


def significance_stars(p: float) -> str:
    """The paper's notation: **** p < 0.0001, *** < 0.001, ** < 0.01, * < 0.05, else NS."""
    if not np.isfinite(p):
        return ""
    for threshold, stars in ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (5e-2, "*")):
        if p < threshold:
            return stars
    return "NS"


def _fit_table(rows: pd.DataFrame, response: str, terms: list[str], *, n_dropped: int,
               cov_type: str = "nonrobust") -> pd.DataFrame:
    """OLS of ``response`` on ``terms`` (``a:b`` = product) plus an intercept; one row per term.

    A term that is constant on ``rows`` (a disease nobody has, one sex only) cannot be estimated:
    it is left out of the fit and reported with empty values, never as a spurious 0. With fewer
    rows than parameters every value is empty.
    """
    design = pd.DataFrame({"Intercept": np.ones(len(rows))}, index=rows.index)
    for term in terms:
        factors = term.split(":")
        design[term] = np.prod([rows[f].to_numpy(dtype=float) for f in factors], axis=0)
    estimable = ["Intercept"] + [t for t in terms if design[t].nunique() > 1]
    table = pd.DataFrame({"index": response, "term": ["Intercept", *terms]})
    for column in ("coef", "se", "t", "p", "ci_low", "ci_high", "r2"):
        table[column] = np.nan
    if len(rows) > len(estimable):
        fit = sm.OLS(rows[response].to_numpy(dtype=float), design[estimable]).fit(cov_type=cov_type, use_t=True)
        ci = fit.conf_int(alpha=0.05)
        position = table["term"].map({t: i for i, t in enumerate(estimable)})
        fitted = position.notna()
        where = position[fitted].astype(int).to_numpy()
        for column, values in (("coef", fit.params), ("se", fit.bse), ("t", fit.tvalues), ("p", fit.pvalues),
                               ("ci_low", ci.iloc[:, 0]), ("ci_high", ci.iloc[:, 1])):
            table.loc[fitted, column] = np.asarray(values)[where]
        table["r2"] = fit.rsquared
    table["n"] = len(rows)
    table["n_dropped"] = n_dropped
    return table
