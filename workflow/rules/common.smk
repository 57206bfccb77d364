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
    """The `hipas segment --batch` table: input, output, record, scan_id, std_output (one line
    per scan). With the normalization record the labels are delivered in the scan's own grid;
    std_output keeps them in the standardized grid too, for morphometry and the QC picture."""
    lines = ["input\toutput\trecord\tscan_id\tstd_output"]
    for scan in BATCHES[(wildcards.site, wildcards.chunk)]:
        lines.append(f"results/scans/{scan}/std.nii.gz\t{output.labels}/{scan}.nii.gz\tresults/scans/{scan}/std.json"
                     f"\t{scan}\t{output.labels}/{scan}.std.nii.gz")
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
