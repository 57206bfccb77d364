# HiPaS workflow: pulmonary artery/vein segmentation, vessel morphometry and the Figure 4 study.
#
#   snakemake --cores 2                        # the embedded demo cohort (config/config.yaml)
#   snakemake --cores 2 --report results/report.html
#   snakemake --profile slurm                  # on a SLURM cluster (make slurm-profile)
#
# Per scan: [demo_phantom] -> normalize (I2SR inside for thick slices) -> segment (GPU, batched per site)
#           -> lungs -> morphometry (+ QC picture).
# Per cohort: cohort_table (+ exclusions.csv) -> figure4, and the report.

from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded demo cohort is the default configuration. A config file given with --configfile that
# names its own `sites:` replaces it: nothing of the demo (sites, phantom flags) is merged into it.
if "sites" not in config:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/phantom.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/training.smk"


wildcard_constraints:
    scan=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    site=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    chunk=r"[0-9]+",


localrules:
    all,
    qc_report_sample,


rule all:
    input:
        rules.figure4.output,
        phantom_truth_outputs(),
        expand("results/qc/{scan}.png", scan=SCANS),
        expand("results/report/qc/{scan}.png", scan=qc_report_sample()),


onstart:
    remove_partial_files("results")
