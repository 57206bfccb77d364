# A prepared STS training set (`snakemake training_set`), planned from the config's optional
# `training:` section: the cases of a TSV (case_id, ct, labels [, split, protocol, levels, lungs,
# metadata_table]; paths relative to the TSV's folder) and/or small phantoms by seed. Each case
# becomes a case folder (hipas prepare-training: one .npy per array + case.json, written
# atomically; an unusable case becomes an excluded case, an exclusion marker), then one manifest
# lists them with their split (hipas training-manifest). `rule all` does not build it: a config
# without `training:` plans exactly as before. Planning imports nothing of hipas_core.

import csv
import re
import shlex

from snakemake.exceptions import WorkflowError

TRAINING = config.get("training", {})
TRAINING_ROOT = "results/training_set"
TRAINING_CASE_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*"
TRAINING_COLUMNS = ("case_id", "ct", "labels")
TRAINING_OPTIONAL_FILES = ("levels", "lungs", "metadata_table")


def _seed_list(text):
    """``"1-8"``, ``"1,2,5"`` or ``"1-4,9"`` -> list of ints (the schema checked the pattern)."""
    seeds = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def load_training_cases(section):
    """case id -> {"split", and "phantom_seed" or the files ("ct", "labels", ...), "protocol"}."""
    cases = {}
    for seed in _seed_list(section.get("phantom_seeds", "")):
        cases[f"phantom-{seed:03d}"] = {"phantom_seed": seed, "split": "train"}
    table = section.get("cases")
    if table:
        folder = os.path.dirname(os.path.abspath(table))
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in TRAINING_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{table}: training cases table lacks column(s) {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                case_id = (row["case_id"] or "").strip()
                where = f"{table}: line {line}"
                if not re.fullmatch(TRAINING_CASE_ID, case_id):
                    raise ValueError(f"{where}, column case_id: {case_id!r} is not a valid case id")
                if case_id in cases:
                    raise ValueError(f"{where}, column case_id: {case_id} appears twice")
                split = (row.get("split") or "train").strip()
                if split not in ("train", "val"):
                    raise ValueError(f"{where}, column split: {split!r} is not train or val")
                protocol = (row.get("protocol") or "").strip().lower()
                if protocol not in ("", "ncct", "ctpa"):
                    raise ValueError(f"{where}, column protocol: {protocol!r} is not ncct or ctpa")
                case = {"split": split, "protocol": protocol}
                for column in (*TRAINING_COLUMNS[1:], *TRAINING_OPTIONAL_FILES):
                    value = (row.get(column) or "").strip()
                    if not value:
                        if column in TRAINING_COLUMNS:
                            raise ValueError(f"{where}, column {column}: empty")
                        continue
                    path = os.path.normpath(os.path.join(folder, value))
                    if not os.access(path, os.R_OK):
                        raise ValueError(f"{where}, column {column}: {path} not found or not readable")
                    case[column] = path
                cases[case_id] = case
    for case_id in section.get("val", []):
        if case_id not in cases:
            raise ValueError(f"training: val: {case_id} is not one of the training cases")
        cases[case_id]["split"] = "val"
    return cases


TRAINING_CASES = load_training_cases(TRAINING)


def training_case_inputs(wildcards):
    case = TRAINING_CASES[wildcards.case]
    return {k: case[k] for k in (*TRAINING_COLUMNS[1:], *TRAINING_OPTIONAL_FILES) if k in case}


def training_case_arguments(wildcards):
    """The prepare-training options of a case (what it is made from), as the command line gets them."""
    case = TRAINING_CASES[wildcards.case]
    if "phantom_seed" in case:
        return f"--phantom-seed {case['phantom_seed']}"
    options = [f"--{k.replace('_', '-')} {shlex.quote(case[k])}" for k in (*TRAINING_COLUMNS[1:], *TRAINING_OPTIONAL_FILES)
               if k in case]
    if case["protocol"]:
        options.append(f"--protocol {case['protocol']}")
    return " ".join(options)


def training_case_memory(wildcards):
    """MB for a prepare job: a small phantom, or a full chest CT (float32 HU, resampled copies,
    vesselness and distance transforms of the standardized crop)."""
    return 3000 if "phantom_seed" in TRAINING_CASES[wildcards.case] else 24000


def training_case_folders(wildcards):
    if not TRAINING_CASES:
        raise WorkflowError("training_set: the config has no training: section (cases or phantom_seeds)")
    return expand(f"{TRAINING_ROOT}/cases/{{case}}", case=list(TRAINING_CASES))


def training_val_ids():
    return ",".join(case_id for case_id, case in TRAINING_CASES.items() if case["split"] == "val")


rule prepare_training_case:
    input:
        unpack(training_case_inputs),
    output:
        directory(f"{TRAINING_ROOT}/cases/{{case}}"),
    wildcard_constraints:
        case=TRAINING_CASE_ID,
    params:
        source=training_case_arguments,
        sigmas=" ".join(str(s) for s in TRAINING.get("vesselness_sigmas_mm", [0.7, 1.5])),
        exclude="--exclude-invalid" if TRAINING.get("exclude_invalid", True) else "",
        synthetic_ncct="--synthetic-ncct" if TRAINING.get("synthetic_ncct", False) else "",
    log:
        "results/logs/prepare_training/{case}.log",
    benchmark:
        "results/benchmarks/prepare_training/{case}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=training_case_memory,
        runtime=30,
    shell:
        "hipas prepare-training {params.source} --case-id {wildcards.case} --vesselness-sigmas {params.sigmas}"
        " {params.exclude} {params.synthetic_ncct} --out {output:q} > {log} 2>&1"


rule training_manifest:
    input:
        cases=training_case_folders,
    output:
        f"{TRAINING_ROOT}/manifest.tsv",
    params:
        val=training_val_ids(),
    log:
        "results/logs/training_manifest.log",
    benchmark:
        "results/benchmarks/training_manifest.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "hipas training-manifest --cases {input.cases:q} --val '{params.val}' -o {output:q} > {log} 2>&1"


localrules:
    training_set,


rule training_set:
    input:
        rules.training_manifest.output,
