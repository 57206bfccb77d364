"""Demo cohorts of phantoms: per-site demographics after the paper's Table 1.

``demo_cohort_rows`` draws, deterministically from ``seed``, one row per scan: its site, the
phantom seed and every demographic value, so a manifest row maps one-to-one onto
``hipas phantom --seed S --sex X --age A --height-cm H --protocol P --<flag> 0|1 ...``
(``phantom_arguments``). Site age/sex/protocol mixes follow Table 1 (clinical association
cohort); disease prevalences are the demo's own (spec.FLAG_PREVALENCE).
"""

from __future__ import annotations

import numpy as np

from hipas_core.phantom.spec import DISEASE_FLAGS, FLAG_PREVALENCE, stream

# name: (age mean, age sd, male fraction, protocols)
SITES: dict[str, tuple[float, float, float, tuple[str, ...]]] = {
    "harbin": (51.8, 6.1, 0.414, ("NCCT", "CTPA")),
    "mudanjiang": (52.7, 5.8, 0.551, ("NCCT",)),
    "guangzhou": (57.9, 8.6, 0.344, ("NCCT", "CTPA")),
    "beijing": (54.3, 7.9, 0.474, ("NCCT", "CTPA")),
    "shanghai": (51.3, 9.5, 0.462, ("NCCT", "CTPA")),
    "nanjing": (51.6, 11.4, 0.625, ("NCCT", "CTPA")),
}

MANIFEST_COLUMNS = ("scan_id", "path", "sex", "age", "protocol", *DISEASE_FLAGS)


def demo_cohort_rows(*, sites: int = 2, scans_per_site: int = 3, seed: int = 0) -> list[dict]:
    """Rows (dicts) of a demo cohort: ``scan_id``, ``site``, ``seed`` (the phantom seed),
    ``sex``, ``age`` (years, 1 decimal), ``height_cm``, ``protocol`` (NCCT/CTPA) and the six
    disease flags (0/1). Deterministic for the arguments; sites are taken in Table 1 order."""
    if not 1 <= sites <= len(SITES):
        from hipas_core.errors import InvalidInputError

        raise InvalidInputError(f"phantom cohort: sites must be 1..{len(SITES)}, got {sites}")
    rows = []
    for site_index, (site, (age_mean, age_sd, male, protocols)) in enumerate(list(SITES.items())[:sites]):
        rng = stream(seed, f"cohort-{site}")
        for k in range(scans_per_site):
            sex = "M" if rng.random() < male else "F"
            age = float(np.clip(rng.normal(age_mean, age_sd), 25.0, 85.0))
            height = float(rng.normal(172.0, 6.5) if sex == "M" else rng.normal(160.0, 6.0))
            protocol = protocols[int(rng.integers(len(protocols)))]
            flags = {f: int(rng.random() < FLAG_PREVALENCE[f]) for f in DISEASE_FLAGS}
            rows.append({
                "scan_id": f"{site}_{k + 1:03d}",
                "site": site,
                "seed": int(seed) * 10_000 + site_index * 1_000 + k,
                "sex": sex,
                "age": round(age, 1),
                "height_cm": round(height, 1),
                "protocol": protocol,
                **flags,
            })
    return rows


def phantom_arguments(row: dict, *, size: str = "small") -> list[str]:
    """The ``hipas phantom`` arguments (without ``--out``) that generate ``row``'s scan."""
    args = ["--seed", str(row["seed"]), "--size", size, "--protocol", str(row["protocol"]).lower(),
            "--sex", str(row["sex"]), "--age", str(row["age"]), "--height-cm", str(row["height_cm"])]
    for flag in DISEASE_FLAGS:
        args += [f"--{flag}", str(int(row[flag]))]
    return args


def spec_for_row(row: dict, *, size: str = "small"):
    """The ``PhantomSpec`` of a cohort row (same as ``hipas phantom`` with ``phantom_arguments``)."""
    from hipas_core.phantom.spec import PhantomSpec

    return PhantomSpec.from_seed(
        row["seed"], size=size, protocol=str(row["protocol"]).lower(), sex=row["sex"], age=float(row["age"]),
        height_cm=float(row["height_cm"]), **{f: int(row[f]) for f in DISEASE_FLAGS},
    )
