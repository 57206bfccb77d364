"""Demo cohorts of phantoms: per-site demographics after the paper's Table 1.

``demo_cohort_rows`` draws, deterministically from ``seed``, one row per scan: its site, the
phantom seed and every demographic value, so a manifest row maps one-to-one onto
``hipas phantom --seed S --sex X --age A --height-cm H --protocol P --<flag> 0|1 ...``
(``hipas phantom --manifest``, ``row_overrides``). Site age/sex/protocol mixes follow Table 1 (clinical association
cohort); disease prevalences are the demo's own (spec.FLAG_PREVALENCE).
"""

from __future__ import annotations

import numpy as np

from hipas_core.conventions import DISEASE_FLAGS, MANIFEST_COLUMNS
from hipas_core.phantom.spec import FLAG_PREVALENCE, stream

# name: (age mean, age sd, male fraction, protocols)
SITES: dict[str, tuple[float, float, float, tuple[str, ...]]] = {
    "harbin": (51.8, 6.1, 0.414, ("NCCT", "CTPA")),
    "mudanjiang": (52.7, 5.8, 0.551, ("NCCT",)),
    "guangzhou": (57.9, 8.6, 0.344, ("NCCT", "CTPA")),
    "beijing": (54.3, 7.9, 0.474, ("NCCT", "CTPA")),
    "shanghai": (51.3, 9.5, 0.462, ("NCCT", "CTPA")),
    "nanjing": (51.6, 11.4, 0.625, ("NCCT", "CTPA")),
}

THICK_SLICES_MM = (2.5, 3.0, 5.0)
"""Slice thicknesses of a demo cohort's thick-slice scans (the paper's 2.5-5 mm range)."""


def demo_cohort_rows(*, sites: int = 2, scans_per_site: int = 3, seed: int = 0,
                     thick_fraction: float = 0.0) -> list[dict]:
    """Rows (dicts) of a demo cohort: ``scan_id``, ``site``, ``seed`` (the phantom seed),
    ``sex``, ``age`` (years, 1 decimal), ``height_cm``, ``protocol`` (NCCT/CTPA), the six
    disease flags (0/1) and ``slice_thickness_mm`` (None: the phantom's own thin slices; with
    probability ``thick_fraction`` one of ``THICK_SLICES_MM``, drawn from a stream of its own, so
    the demographics do not depend on it). Deterministic for the arguments; sites are taken in
    Table 1 order; phantom seeds are ``seed * 10000 + site index * 1000 + k``."""
    if not 1 <= sites <= len(SITES):
        from hipas_core.errors import InvalidInputError

        raise InvalidInputError(f"phantom cohort: sites must be 1..{len(SITES)}, got {sites}")
    rows = []
    for site_index, (site, (age_mean, age_sd, male, protocols)) in enumerate(list(SITES.items())[:sites]):
        rng = stream(seed, f"cohort-{site}")
        slices_rng = stream(seed, f"cohort-{site}-slices")
        for k in range(scans_per_site):
            sex = "M" if rng.random() < male else "F"
            age = float(np.clip(rng.normal(age_mean, age_sd), 25.0, 85.0))
            height = float(rng.normal(172.0, 6.5) if sex == "M" else rng.normal(160.0, 6.0))
            protocol = protocols[int(rng.integers(len(protocols)))]
            flags = {f: int(rng.random() < FLAG_PREVALENCE[f]) for f in DISEASE_FLAGS}
            thick = slices_rng.random() < thick_fraction
            thickness = float(slices_rng.choice(THICK_SLICES_MM))
            rows.append({
                "scan_id": f"{site}_{k + 1:03d}",
                "site": site,
                "seed": int(seed) * 10_000 + site_index * 1_000 + k,
                "sex": sex,
                "age": round(age, 1),
                "height_cm": round(height, 1),
                "protocol": protocol,
                **flags,
                "slice_thickness_mm": thickness if thick else None,
            })
    return rows


def workflow_manifest_text(rows: list[dict]) -> str:
    """A phantom site's manifest (TSV text) for the workflow: ``MANIFEST_COLUMNS`` with the path
    the workflow generates each scan at (``results/phantoms/<scan_id>/ct.nii.gz``, relative to a
    manifest two folders below the working directory), then ``seed``, ``height_cm`` and
    ``slice_thickness_mm`` (empty: thin)."""
    columns = [*MANIFEST_COLUMNS, "seed", "height_cm", "slice_thickness_mm"]
    lines = ["\t".join(columns)]
    for row in rows:
        values = {**row, "path": f"../../results/phantoms/{row['scan_id']}/ct.nii.gz"}
        lines.append("\t".join("" if values.get(c) is None else str(values[c]) for c in columns))
    return "\n".join(lines) + "\n"


def row_overrides(row: dict) -> dict:
    """The ``PhantomSpec.from_seed`` overrides of a cohort or manifest row (values as numbers or
    as the strings a manifest holds): sex, age, height, disease flags (empty: 0) and slice
    thickness (empty or absent: drawn from the seed)."""
    overrides = {"sex": str(row["sex"]), "age": float(row["age"]), "height_cm": float(row["height_cm"]),
                 **{flag: int(row[flag]) if row.get(flag) not in (None, "") else 0 for flag in DISEASE_FLAGS}}
    if row.get("slice_thickness_mm") not in (None, ""):
        overrides["slice_thickness_mm"] = float(row["slice_thickness_mm"])
    return overrides


def spec_for_row(row: dict, *, size: str = "small"):
    """The ``PhantomSpec`` of a cohort row (what ``hipas phantom --manifest`` builds from the
    row as the manifest writes it)."""
    from hipas_core.phantom.spec import PhantomSpec

    return PhantomSpec.from_seed(int(row["seed"]), size=size, protocol=str(row["protocol"]).lower(), **row_overrides(row))
