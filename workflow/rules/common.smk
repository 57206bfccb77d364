# Config and manifest loading, validation and input functions (no rules here).
#
# Manifests are validated in one pass by hipas_core/manifest.py (the reader `hipas cohort-table`
# uses too) against the allowed values in workflow/schemas/manifest.schema.yaml, plus the
# workflow's own rules for paths and labels here: 11,784 rows take well under a second,
# where validating each row with jsonschema would take tens of seconds. Every error is one line
# naming the manifest, its line and the column.

import importlib.util
import os
import sys

import yaml


def _load_manifest_module():
    """The manifest reader, hipas_core/manifest.py: the checkout's own file by its path (it imports
    only the standard library, so planning needs neither the installed package nor numpy or
    torch), else the installed package's (a copy of the workflow without the package sources)."""
    path = os.path.join(workflow.basedir, "hipas_core", "manifest.py")
    if not os.path.isfile(path):
        import hipas_core.manifest

        return hipas_core.manifest
    spec = importlib.util.spec_from_file_location("_hipas_manifest", path)
    manifest_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = manifest_module  # dataclasses look their module up there
    spec.loader.exec_module(manifest_module)
    return manifest_module


_manifest = _load_manifest_module()
ManifestError = _manifest.ManifestError
MANIFEST_SCHEMA = yaml.safe_load(open(os.path.join(workflow.basedir, "workflow/schemas/manifest.schema.yaml")))
PHANTOM_CT = "results/phantoms/{scan}/ct.nii.gz"
PHANTOM_LABELS = "results/phantoms/{scan}/labels.nii.gz"
PHANTOM_COLUMNS = ("seed", "height_cm")  # besides the schema's required columns, on phantom sites


def load_manifests(sites):
    """Validate every site manifest; return (scans: scan_id -> row dict, site -> [scan ids])."""
    rows = _manifest.read_site_manifests(
        {site: entry["manifest"] for site, entry in sites.items()},
        required=MANIFEST_SCHEMA["required"], checks=_manifest.value_checks(MANIFEST_SCHEMA),
        extra_required={site: PHANTOM_COLUMNS for site, entry in sites.items() if entry.get("phantom", False)})
    scans, by_site = {}, {site: [] for site in sites}
    for entry in rows:
        manifest, line, row = entry.manifest, entry.line, dict(entry.values)
        phantom = sites[entry.site].get("phantom", False)
        scan_id = row["scan_id"]
        folder = os.path.dirname(os.path.abspath(manifest))
        path = os.path.normpath(os.path.join(folder, row["path"]))
        if phantom:
            expected = os.path.abspath(PHANTOM_CT.format(scan=scan_id))
            if path != expected:
                raise ManifestError(f"{manifest}: line {line}, column path: a phantom site's scan must be {expected}, not {path}")
            row["input"] = PHANTOM_CT.format(scan=scan_id)
        else:
            if not os.access(path, os.R_OK):
                raise ManifestError(f"{manifest}: line {line}, column path: {path} not found or not readable")
            row["input"] = path
        row["labels_input"] = _labels_input(row.get("labels", ""), folder, scan_id, phantom,
                                            f"{manifest}: line {line}, column labels")
        row["site"] = entry.site
        row["manifest"] = manifest
        scans[scan_id] = row
        by_site[entry.site].append(scan_id)
    return scans, by_site


def _labels_input(value, folder, scan_id, phantom, where):
    """The file of a manifest row's own labels (None: the scan is segmented)."""
    if not value:
        return None
    path = os.path.normpath(os.path.join(folder, value))
    if phantom:
        expected = os.path.abspath(PHANTOM_LABELS.format(scan=scan_id))
        if path != expected:
            raise ManifestError(f"{where}: a phantom site's labels must be {expected}, not {path}")
        return PHANTOM_LABELS.format(scan=scan_id)
    if not os.access(path, os.R_OK):
        raise ManifestError(f"{where}: {path} not found or not readable")
    return path


def chunk_scans(by_site, size):
    """Segmentation batches: each site's scans in manifest order, ``size`` per batch."""
    return {
        (site, f"{start // size:04d}"): ids[start:start + size]
        for site, ids in by_site.items()
        for start in range(0, len(ids), size)
    }


SCANS, SITE_SCANS = load_manifests(config["sites"])
LABELLED = {scan for scan, row in SCANS.items() if row["labels_input"]}
BATCHES = chunk_scans({site: [s for s in ids if s not in LABELLED] for site, ids in SITE_SCANS.items()},
                      config["segmentation"]["batch_size"])
BATCH_OF = {scan: key for key, ids in BATCHES.items() for scan in ids}


# ---- input functions -------------------------------------------------------------------------

def scan_ct(wildcards):
    return SCANS[wildcards.scan]["input"]


def scan_manifest(wildcards):
    return SCANS[wildcards.scan]["manifest"]


def manifest_row(wildcards):
    """The scan's manifest row as written: a parameter of the rules that read it themselves, so
    that editing the row (not the rest of the manifest) reruns them."""
    row = SCANS[wildcards.scan]
    return "\t".join(f"{k}={v}" for k, v in row.items() if k not in ("input", "labels_input", "site", "manifest"))


def batch_dir(site, chunk):
    return f"results/segment/{site}/batch{chunk}"


IMPORTED_LABELS = "results/scans/{scan}/labels.std.nii.gz"


def standard_labels_of(scan):
    """The scan's labels in the standardized grid (what morphometry measures): the segment
    batch's ``<scan>.std.nii.gz``, or the manifest's own labels brought onto that grid."""
    if scan in LABELLED:
        return IMPORTED_LABELS.format(scan=scan)
    site, chunk = BATCH_OF[scan]
    return f"{batch_dir(site, chunk)}/{scan}.std.nii.gz"


def scan_labels_source(wildcards):
    """What morphometry waits for: the segment batch folder, or the imported labels."""
    if wildcards.scan in LABELLED:
        return IMPORTED_LABELS.format(scan=wildcards.scan)
    return batch_dir(*BATCH_OF[wildcards.scan])


def own_labels(wildcards):
    return SCANS[wildcards.scan]["labels_input"]


def scan_standard_labels(wildcards):
    return standard_labels_of(wildcards.scan)


def batch_images(wildcards):
    return [f"results/scans/{scan}/std.nii.gz" for scan in BATCHES[(wildcards.site, wildcards.chunk)]]


def batch_records(wildcards):
    return [f"results/scans/{scan}/std.json" for scan in BATCHES[(wildcards.site, wildcards.chunk)]]


def batch_table(wildcards, output):
    """The `hipas segment --batch` table: input, output, record, scan_id, std_output, protocol
    (one line per scan). With the normalization record the labels are delivered in the scan's
    own grid; std_output keeps them in the standardized grid too, for morphometry and the QC
    picture; the manifest's protocol picks the model's thresholds for it."""
    lines = ["input\toutput\trecord\tscan_id\tstd_output\tprotocol"]
    for scan in BATCHES[(wildcards.site, wildcards.chunk)]:
        lines.append(f"results/scans/{scan}/std.nii.gz\t{output.labels}/{scan}.nii.gz\tresults/scans/{scan}/std.json"
                     f"\t{scan}\t{output.labels}/{scan}.std.nii.gz\t{SCANS[scan]['protocol']}")
    return "\n".join(lines) + "\n"


def batch_runtime(wildcards):
    """Minutes for a segment job: start-up plus a generous per-scan allowance."""
    return 15 + 5 * len(BATCHES[(wildcards.site, wildcards.chunk)])


def lung_weights_option(wildcards):
    weights = config["lungs"]["weights"]
    return f"--weights {weights}" if weights else ""



def site_options():
    return " ".join(f"--site {site}={entry['manifest']}" for site, entry in config["sites"].items())


PHANTOM_SCANS = [scan for scan, row in SCANS.items() if config["sites"][row["site"]].get("phantom", False)]


def phantom_truth_files(wildcards):
    return [f"results/phantoms/{scan}/truth.json" for scan in PHANTOM_SCANS]


def phantom_truth_arguments(wildcards, input):
    return " ".join(f"{scan}={path}" for scan, path in zip(PHANTOM_SCANS, input.truth))


def phantom_truth_outputs():
    """The measured-vs-truth outputs when the cohort has phantom sites (at least 3 scans)."""
    return rules.phantom_truth.output if len(PHANTOM_SCANS) >= 3 else []


def qc_report_sample():
    return list(SCANS)[: config["analysis"]["qc_sample"]]


SEGMENT_DEVICE = config["segmentation"]["device"]


def remove_partial_files(folder="results"):
    """Delete the temporary files (``.<name>.tmp-*``, hipas_core.atomic) that commands killed
    mid-write (SIGKILL, node failure) left beside their outputs. Runs at the start of a real
    run, under Snakemake's lock, so no job of this workflow is writing at that moment."""
    removed = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and ".tmp-" in name:
                os.remove(os.path.join(parent, name))
                removed += 1
    if removed:
        print(f"removed {removed} partial file(s) left by interrupted jobs under {folder}/")


# ---- training set (workflow/rules/training.smk) -------------------------------------------

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
