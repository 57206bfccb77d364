"""Load and validate the cohort table (ARCHITECTURE.md, "Cohort table").

One row per included scan. Required columns: ``scan_id``, ``site``, ``sex`` (``M``/``F``),
``age`` (years), ``protocol`` (``NCCT``/``CTPA``), ``slice_thickness_mm``, ``lung_volume_l``
(litres), the four abundance indices ``SLPA``, ``SLPV``, ``BCPA``, ``BCPV`` and the six disease
flags (0/1). Covariates (sex, age, slice thickness, lung volume, flags) may be missing; such rows
are dropped per model and counted there. Indices, ``scan_id``, ``site`` and ``protocol`` may not
be missing. Any other column (the remaining morphometry columns) is kept as it is.

A table that breaks these rules raises :class:`InvalidInputError` with one line naming the file
and, where useful, the first offending row (1-based data row) and column.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from hipas_core.conventions import COHORT_COLUMNS, INDICES, PROTOCOLS, SEXES
from hipas_core.conventions import DISEASE_FLAGS as DISEASES
from hipas_core.errors import InvalidInputError

REQUIRED_COLUMNS: tuple[str, ...] = COHORT_COLUMNS
# Plausible ranges (inclusive). Lung volume in litres: values in the thousands are millilitres;
# the low bound admits the project's reduced demo phantoms (size "small": about 0.3 L).
AGE_RANGE_YEARS = (0.0, 120.0)
LUNG_VOLUME_RANGE_L = (0.05, 12.0)
SLICE_THICKNESS_RANGE_MM = (0.1, 10.0)


def load_cohort(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cohort table (Parquet, CSV or TSV, chosen by suffix) and validate it.

    Returns a new DataFrame with canonical dtypes: ``sex``/``protocol``/``site``/``scan_id`` as
    strings (missing sex as ``<NA>``), ``age``, ``slice_thickness_mm``, ``lung_volume_l``, the
    indices and the disease flags as float64 (missing = NaN; flags are 0.0/1.0). Row order is
    kept. Raises ``InvalidInputError`` (one line, naming the file) on any problem.
    """
    path = Path(path)
    frame = _read_table(path)
    return validate_cohort(frame, source=str(path))


def validate_cohort(frame: pd.DataFrame, *, source: str = "<cohort table>") -> pd.DataFrame:
    """Validate a cohort table already in memory; return a canonical copy (see ``load_cohort``).

    ``source`` names the table in error messages. The input frame is not modified.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"{source}: missing required column(s) {', '.join(missing)}")
    if len(frame) == 0:
        raise InvalidInputError(f"{source}: the cohort table has no rows")
    out = frame.copy().reset_index(drop=True)

    for column in ("scan_id", "site", "protocol"):
        out[column] = _strings(out[column], source=source, column=column, allow_missing=False)
    duplicated = out["scan_id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InvalidInputError(
            f"{source}: row {row + 1}, column scan_id: duplicate scan_id {out['scan_id'][row]!r}"
        )
    _check_allowed(out["protocol"], PROTOCOLS, source=source, column="protocol")
    out["sex"] = _strings(out["sex"], source=source, column="sex", allow_missing=True)
    _check_allowed(out["sex"], SEXES, source=source, column="sex")

    numeric_rules = {
        "age": (AGE_RANGE_YEARS, True, "years"),
        "slice_thickness_mm": (SLICE_THICKNESS_RANGE_MM, True, "mm"),
        "lung_volume_l": (LUNG_VOLUME_RANGE_L, True, "L"),
        **{index: ((0.0, np.inf), False, "") for index in INDICES},
    }
    for column, ((low, high), allow_missing, unit) in numeric_rules.items():
        values = _numbers(out[column], source=source, column=column, allow_missing=allow_missing)
        bad = values.notna() & ~values.between(low, high)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            hint = " (millilitres given as litres?)" if column == "lung_volume_l" and values[row] > high else ""
            raise InvalidInputError(
                f"{source}: row {row + 1}, column {column}: {values[row]:g} {unit} is outside the "
                f"plausible range [{low:g}, {high:g}]{hint}".replace("  ", " ")
            )
        out[column] = values
    for column in DISEASES:
        values = _numbers(out[column], source=source, column=column, allow_missing=True)
        bad = values.notna() & ~values.isin([0.0, 1.0])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InvalidInputError(
                f"{source}: row {row + 1}, column {column}: disease flag must be 0 or 1, got {values[row]:g}"
            )
        out[column] = values
    return out


def complete_cases(cohort: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> tuple[pd.DataFrame, int]:
    """Rows of ``cohort`` with no missing value in ``columns``, and how many rows were dropped."""
    mask = cohort[list(columns)].notna().all(axis=1)
    return cohort.loc[mask], int((~mask).sum())


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InvalidInputError(f"{path}: cohort table not found (or not a file)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            # Identifiers stay strings ("007" must not become 7); everything else is parsed later.
            return pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",",
                dtype={"scan_id": str, "site": str, "sex": str, "protocol": str},
                keep_default_na=False, na_values=["", "NA", "NaN", "nan", "null", "None"],
            )
        return pd.read_parquet(path)
    except InvalidInputError:
        raise
    except Exception as error:  # pyarrow/pandas raise many kinds for a corrupt or foreign file
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        kind = "CSV/TSV" if suffix in (".csv", ".tsv", ".txt") else "Parquet"
        raise InvalidInputError(f"{path}: cannot read the cohort table as {kind} ({reason})") from None


def _strings(series: pd.Series, *, source: str, column: str, allow_missing: bool) -> pd.Series:
    missing = series.isna() | (series.astype("string").str.strip() == "")
    if missing.any() and not allow_missing:
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise InvalidInputError(f"{source}: row {row + 1}, column {column}: missing value")
    text = series.astype("string").str.strip()
    return text.mask(missing, pd.NA)


def _check_allowed(series: pd.Series, allowed: tuple[str, ...], *, source: str, column: str) -> None:
    bad = series.notna() & ~series.isin(allowed)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InvalidInputError(
            f"{source}: row {row + 1}, column {column}: {series[row]!r} is not one of {'/'.join(allowed)}"
        )


def _numbers(series: pd.Series, *, source: str, column: str, allow_missing: bool) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        series = series.astype("float64")
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    unparsable = values.isna() & series.notna()
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        unparsable &= series.astype("string").str.strip().fillna("") != ""
    if unparsable.any():
        row = int(np.flatnonzero(unparsable.to_numpy())[0])
        raise InvalidInputError(f"{source}: row {row + 1}, column {column}: {series[row]!r} is not a number")
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.flatnonzero(infinite.to_numpy())[0])
        raise InvalidInputError(f"{source}: row {row + 1}, column {column}: value is not finite")
    if not allow_missing and values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise InvalidInputError(f"{source}: row {row + 1}, column {column}: missing value")
    return values
