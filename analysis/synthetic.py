"""Planted synthetic cohorts: cohort tables whose Figure 4 effects are known exactly.

Two generating models (``model=``):

``"paper"``
    Six sites as in the paper's Table 1 (sizes, age mean/sd, male %, NCCT-only Mudanjiang).
    Lung volume (litres) ~ sex-specific normal with a small decline with age. Disease flags by
    logistic models in age, sex (and protocol for embolism). Each index is

        index = c_sex + slope_sex * lung_volume_l + age_coef * age + sum_d disease_coef_d * flag_d + noise_sex

    with the paper's reported per-sex lung-volume slopes and disease coefficients (PAPER_FACTS.md,
    "Figure 4 numbers"); intercepts c_sex chosen so each sex's mean equals the paper's reported
    mean; noise sd per sex sized so the standard errors resemble the paper's (see ``_PAPER``).
    Males have larger lungs (5.2 vs 4.0 L), which is why their raw means are larger while the sex
    coefficient with lung volume controlled comes out negative (about -800 for SLPA, as reported).
``"alternative"``
    A different, interaction-free model: one lung-volume slope, a positive sex coefficient, a
    positive age coefficient, non-zero nodule/embolism effects, other prevalences, homoscedastic
    noise. The full Figure 4e/f model is then correctly specified, so its coefficients equal
    the planted ones exactly.

Assumptions (the paper gives no numbers for these): the CTPA share at mixed sites (35%), slice
thicknesses, disease prevalences and their dependence on age/sex, the age coefficients
(chosen "slightly declining", -20/-15 per year for SL and -4/-3.5 for BC, so that p < 1e-4 as
reported), and zero effects for disease/index pairs the paper does not report. Prevalences are
sized so that the paper's disease-coefficient standard errors are reproduced (SE ~ sigma /
sqrt(n p (1 - p))): cardiomegaly ~10%, calcification ~13%, PAH ~3.5%, COPD ~4%; nodules (25%)
and embolism (5%, enriched in CTPA) follow common chest-CT findings. COPD and calcification are
more common in men, PAH in women (the paper's ref. 42), all but embolism rise with age.

``expected`` in the truth record is what each Figure 4 model should estimate on this very
sample: the least-squares projection of the noiseless index (the generating model without
noise) onto that model's design, on that model's complete cases. For a correctly specified model
(the alternative model's full regression) this equals the planted coefficients; for the paper
model it is the finite-population value of a misspecified (interaction-free) fit. Estimates
differ from ``expected`` only by noise, with covariance sigma^2 (X'X)^-1, the OLS standard error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.cohort import DISEASES, INDICES

MODELS = ("paper", "alternative")
PAPER_COHORT_SIZE = 11784

# Table 1, clinical association cohort: name, code, n, age mean, age sd, male %, NCCT-only.
SITES: tuple[tuple[str, str, int, float, float, float, bool], ...] = (
    ("Harbin", "HRB", 5740, 51.8, 6.1, 41.4, False),
    ("Mudanjiang", "MDJ", 1782, 52.7, 5.8, 55.1, True),
    ("Guangzhou", "GZH", 782, 57.9, 8.6, 34.4, False),
    ("Beijing", "BJG", 1078, 54.3, 7.9, 47.4, False),
    ("Shanghai", "SHA", 1231, 51.3, 9.5, 46.2, False),
    ("Nanjing", "NJG", 1171, 51.6, 11.4, 62.5, False),
)
CTPA_SHARE_MIXED_SITES = 0.35
AGE_LIMITS = (18, 95)
REFERENCE_AGE = 53.0  # centre of the age terms in the lung-volume and prevalence models

_SLICES = {  # protocol -> (thicknesses in mm, probabilities)
    "NCCT": ((1.0, 1.25, 1.5, 2.0, 5.0), (0.55, 0.10, 0.10, 0.10, 0.15)),
    "CTPA": ((0.625, 1.0, 1.25), (0.15, 0.70, 0.15)),
}

# The paper model. Means, slopes and disease coefficients: PAPER_FACTS.md "Figure 4 numbers".
_PAPER: dict[str, Any] = {
    "lung_volume": {"mean_l": {"M": 5.2, "F": 4.0}, "sd_l": {"M": 0.60, "F": 0.50}, "per_year_l": -0.01},
    # disease -> (prevalence at the reference age for a person of average sex, logit change per
    # decade of age, logit change for male sex, logit change for CTPA)
    "prevalence": {
        "cardiomegaly": (0.10, 0.5, 0.0, 0.0),
        "calcification": (0.13, 0.8, 0.3, 0.0),
        "pah": (0.035, 0.2, -0.4, 0.0),
        "nodule": (0.25, 0.3, 0.0, 0.0),
        "embolism": (0.05, 0.0, 0.0, 1.0),
        "copd": (0.04, 0.7, 0.8, 0.0),
    },
    "indices": {
        "SLPA": {"mean": {"M": 13985, "F": 10977}, "slope": {"M": 3004, "F": 3368}, "age": -20.0,
                 "noise_sd": {"M": 2166, "F": 1753},
                 "disease": {"cardiomegaly": 172, "calcification": 106, "pah": -192}},
        "SLPV": {"mean": {"M": 12257, "F": 9871}, "slope": {"M": 2222, "F": 2652}, "age": -15.0,
                 "noise_sd": {"M": 1802, "F": 1407},
                 "disease": {"cardiomegaly": 150, "copd": -170}},
        "BCPA": {"mean": {"M": 1862, "F": 1552}, "slope": {"M": 362, "F": 485}, "age": -4.0,
                 "noise_sd": {"M": 413, "F": 400},
                 "disease": {"cardiomegaly": 38, "pah": -43}},
        "BCPV": {"mean": {"M": 1805, "F": 1468}, "slope": {"M": 397, "F": 437}, "age": -3.5,
                 "noise_sd": {"M": 397, "F": 375},
                 "disease": {"cardiomegaly": 28, "copd": -42}},
    },
}

_ALTERNATIVE: dict[str, Any] = {
    "lung_volume": {"mean_l": {"M": 4.8, "F": 4.3}, "sd_l": {"M": 0.8, "F": 0.7}, "per_year_l": 0.0},
    "prevalence": {
        "cardiomegaly": (0.20, 0.0, 0.0, 0.0),
        "calcification": (0.05, 0.0, 0.0, 0.0),
        "pah": (0.10, 0.0, 0.0, 0.0),
        "nodule": (0.40, 0.0, 0.0, 0.0),
        "embolism": (0.15, 0.0, 0.0, 0.0),
        "copd": (0.12, 0.0, 0.0, 0.0),
    },
    # intercept, lung volume, sex (M=1), age, noise sd, disease effects
    "indices": {
        "SLPA": (2000.0, 2500.0, 300.0, 10.0, 1500.0,
                 {"cardiomegaly": -100, "calcification": 0, "pah": 150, "nodule": 80, "embolism": -120, "copd": 200}),
        "SLPV": (1500.0, 2000.0, 250.0, 8.0, 1300.0,
                 {"cardiomegaly": 60, "calcification": -90, "pah": 0, "nodule": -70, "embolism": 110, "copd": 0}),
        "BCPA": (300.0, 300.0, 40.0, 2.0, 350.0,
                 {"cardiomegaly": -30, "calcification": 25, "pah": 20, "nodule": 15, "embolism": 0, "copd": -25}),
        "BCPV": (250.0, 320.0, -35.0, 1.5, 330.0,
                 {"cardiomegaly": 0, "calcification": 30, "pah": -20, "nodule": 0, "embolism": 25, "copd": 30}),
    },
}

FULL_TERMS: tuple[str, ...] = ("Intercept", "lung_volume_l", "sex", "age", *DISEASES)
# Nullable covariates that --missing-rate blanks out (independently, per cell).
MISSABLE: tuple[str, ...] = ("sex", "age", "lung_volume_l", *DISEASES)


def synthesize_cohort(*, n: int = PAPER_COHORT_SIZE, seed: int = 0, model: str = "paper",
                      missing_rate: float = 0.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Generate a planted cohort table and its truth record.

    Returns ``(cohort, truth)``: ``cohort`` has every column of the cohort table (ARCHITECTURE.md)
    including the remaining morphometry columns; ``truth`` (JSON-serialisable) holds the
    generating model's coefficients (``planted``) and what each Figure 4 model should estimate on
    this sample (``expected``, see the module docstring). Deterministic for ``seed``.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if n < 60:
        raise ValueError(f"n must be at least 60 (got {n})")
    if not 0.0 <= missing_rate < 0.5:
        raise ValueError(f"missing_rate must be in [0, 0.5), got {missing_rate}")
    rng = np.random.default_rng(seed)
    spec = _PAPER if model == "paper" else _ALTERNATIVE

    frame = _demographics(rng, n)
    male = (frame["sex"] == "M").to_numpy()
    age = frame["age"].to_numpy(dtype=float)
    lv = spec["lung_volume"]
    volume = (np.where(male, lv["mean_l"]["M"], lv["mean_l"]["F"])
              + lv["per_year_l"] * (age - REFERENCE_AGE)
              + rng.normal(0.0, 1.0, n) * np.where(male, lv["sd_l"]["M"], lv["sd_l"]["F"]))
    frame["lung_volume_l"] = np.round(np.clip(volume, 1.5, 9.5), 3)
    ctpa = (frame["protocol"] == "CTPA").to_numpy()
    for disease, (base, per_decade, male_shift, ctpa_shift) in spec["prevalence"].items():
        logit = (math.log(base / (1 - base)) + per_decade * (age - REFERENCE_AGE) / 10.0
                 + male_shift * (male - 0.5) + ctpa_shift * (ctpa - CTPA_SHARE_MIXED_SITES))
        frame[disease] = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(float)

    planted: dict[str, Any] = {}
    noiseless: dict[str, np.ndarray] = {}
    for index in INDICES:
        mean_part, noise_sd, planted[index] = _index_model(model, spec, index, frame, male)
        noiseless[index] = mean_part
        frame[index] = np.clip(np.round(mean_part + rng.normal(0.0, 1.0, n) * noise_sd), 0, None)
    _add_morphometry(frame, rng)

    for column in MISSABLE if missing_rate > 0 else ():
        blank = rng.random(n) < missing_rate
        if column == "sex":
            frame[column] = frame[column].astype(object).where(~blank, None)
        else:
            frame.loc[blank, column] = np.nan
    frame.loc[frame["lung_volume_l"].isna(), ["lung_volume_ml", "lung_total_ml"]] = np.nan

    truth = {
        "model": model, "seed": int(seed), "n": int(n), "missing_rate": float(missing_rate),
        "sites": [{"site": s[0], "n_table1": s[2], "age_mean": s[3], "age_sd": s[4], "male_percent": s[5],
                   "protocols": "NCCT" if s[6] else "CTPA&NCCT"} for s in SITES],
        "lung_volume": spec["lung_volume"],
        "prevalence_model": {d: dict(zip(("base", "logit_per_decade", "logit_male", "logit_ctpa"), v, strict=True))
                             for d, v in spec["prevalence"].items()},
        "planted": planted,
        "expected": _expected(frame, noiseless),
        "terms": list(FULL_TERMS),
    }
    return frame, truth


def _demographics(rng: np.random.Generator, n: int) -> pd.DataFrame:
    sizes = _split(n, [s[2] for s in SITES])
    parts = []
    for (name, code, _, age_mean, age_sd, male_pct, ncct_only), size in zip(SITES, sizes, strict=True):
        n_male = round(size * male_pct / 100.0)
        sex = rng.permutation(np.array(["M"] * n_male + ["F"] * (size - n_male), dtype=object))
        age = np.clip(np.round(rng.normal(age_mean, age_sd, size)), *AGE_LIMITS)
        protocol = np.where((rng.random(size) < CTPA_SHARE_MIXED_SITES) & (not ncct_only), "CTPA", "NCCT")
        thickness = np.empty(size)
        for name_protocol, (values, probabilities) in _SLICES.items():
            chosen = protocol == name_protocol
            thickness[chosen] = rng.choice(values, size=int(chosen.sum()), p=probabilities)
        parts.append(pd.DataFrame({
            "scan_id": [f"{code}-{i:05d}" for i in range(1, size + 1)], "site": name, "sex": sex,
            "age": age, "protocol": protocol, "slice_thickness_mm": thickness,
        }))
    return pd.concat(parts, ignore_index=True)


def _split(n: int, weights: list[int]) -> list[int]:
    """Split ``n`` in proportion to ``weights`` (largest remainder, every part at least 10)."""
    total = sum(weights)
    raw = [n * w / total for w in weights]
    sizes = [max(10, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(sizes) < n:
        sizes[order[i % len(order)]] += 1
        i += 1
    while sum(sizes) > n:
        largest = max(range(len(sizes)), key=lambda j: sizes[j])
        sizes[largest] -= 1
    return sizes


def _index_model(model: str, spec: dict, index: str, frame: pd.DataFrame,
                 male: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    volume = frame["lung_volume_l"].to_numpy()
    age = frame["age"].to_numpy(dtype=float)
    if model == "paper":
        p = spec["indices"][index]
        effects = {d: float(p["disease"].get(d, 0.0)) for d in DISEASES}
        prevalence = {d: spec["prevalence"][d][0] for d in DISEASES}
        mean_volume = spec["lung_volume"]["mean_l"]
        # Intercepts put each sex's mean at the paper's value (at the reference age, average
        # prevalences, the sex's mean lung volume).
        intercept = {s: p["mean"][s] - p["slope"][s] * mean_volume[s] - p["age"] * REFERENCE_AGE
                     - sum(effects[d] * prevalence[d] for d in DISEASES) for s in ("M", "F")}
        mean_part = (np.where(male, intercept["M"], intercept["F"])
                     + np.where(male, p["slope"]["M"], p["slope"]["F"]) * volume + p["age"] * age
                     + sum(effects[d] * frame[d].to_numpy() for d in DISEASES))
        noise_sd = np.where(male, p["noise_sd"]["M"], p["noise_sd"]["F"])
        planted = {"intercept": intercept, "lung_volume_l": dict(p["slope"]), "age": p["age"],
                   **effects, "noise_sd": dict(p["noise_sd"]), "target_mean": dict(p["mean"])}
        return mean_part, noise_sd, planted
    intercept, slope, sex_coef, age_coef, sd, effects = spec["indices"][index]
    mean_part = (intercept + slope * volume + sex_coef * male + age_coef * age
                 + sum(effects[d] * frame[d].to_numpy() for d in DISEASES))
    planted = {"Intercept": intercept, "lung_volume_l": slope, "sex": sex_coef, "age": age_coef,
               **{d: float(effects[d]) for d in DISEASES}, "noise_sd": sd}
    return mean_part, np.full(len(frame), sd), planted


def _add_morphometry(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    """The remaining morphometry columns, derived plausibly from the indices."""
    n = len(frame)
    for tree, sl, bc in (("artery", "SLPA", "BCPA"), ("vein", "SLPV", "BCPV")):
        # mean centreline step in the 1.0 x 0.652 x 0.652 mm grid (mix of 6/18/26-neighbour steps)
        step_mm = rng.normal(0.80, 0.02, n)
        frame[f"{tree}_sl_mm"] = np.round(frame[sl] * step_mm, 1)
        frame[f"{tree}_endpoints"] = frame[bc] + 2 + rng.poisson(4.0, n)
        frame[f"{tree}_volume_ml"] = np.round(frame[f"{tree}_sl_mm"] * 0.009 * np.exp(rng.normal(0, 0.1, n)), 2)
    frame["lung_volume_ml"] = np.round(frame["lung_volume_l"] * 1000.0, 1)
    frame["lung_total_ml"] = np.round(frame["lung_volume_ml"] + frame["artery_volume_ml"] + frame["vein_volume_ml"], 1)


def _expected(frame: pd.DataFrame, noiseless: dict[str, np.ndarray]) -> dict[str, Any]:
    """Projections of the noiseless indices onto each Figure 4 model's design (complete cases)."""
    sex = (frame["sex"] == "M").astype(float).where(frame["sex"].notna())
    columns = {"lung_volume_l": frame["lung_volume_l"], "sex": sex, "age": frame["age"],
               **{d: frame[d] for d in DISEASES}}
    design = pd.DataFrame(columns)
    sites = sorted(frame["site"].unique())
    for site in sites[1:]:  # treatment coding, first site in sorted order is the reference
        design[f"site[{site}]"] = (frame["site"] == site).astype(float)

    def project(terms: list[str], rows: np.ndarray) -> dict[str, dict[str, float]]:
        x = np.column_stack([np.ones(int(rows.sum()))] + [design[t].to_numpy()[rows] for t in terms])
        result = {}
        for index in INDICES:
            coef, *_ = np.linalg.lstsq(x, noiseless[index][rows], rcond=None)
            result[index] = dict(zip(["Intercept", *terms], map(float, coef), strict=True))
        return result

    full_terms = list(FULL_TERMS[1:])
    complete = design[full_terms].notna().all(axis=1).to_numpy()
    site_terms = full_terms + [f"site[{s}]" for s in sites[1:]]
    has_volume_sex = design[["lung_volume_l", "sex"]].notna().all(axis=1).to_numpy()
    by_sex = {}
    for label, value in (("M", 1.0), ("F", 0.0)):
        rows = has_volume_sex & (design["sex"].to_numpy() == value)
        by_sex[label] = project(["lung_volume_l"], rows)
    return {
        "full": project(full_terms, complete),
        "full_site": project(site_terms, complete),
        "lung_volume_by_sex": by_sex,
        "lung_volume_sex": project(["lung_volume_l", "sex"], has_volume_sex),
        "n_complete_full": int(complete.sum()),
    }
