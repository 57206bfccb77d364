# A prepared STS training set (`snakemake training_set`), planned from the config's optional
# `training:` section: the cases of a TSV (case_id, ct, labels [, split, protocol, levels, lungs,
# metadata_table]; paths relative to the TSV's folder) and/or small phantoms by seed. Each case
# becomes a case folder (hipas prepare-training: one .npy per array + case.json, written
# atomically; slices thicker than 2 mm go through the I2SR model the per-scan rules use; an
# unusable case becomes an excluded case, an exclusion marker), then one manifest lists them
# with their split (hipas training-manifest). `rule all` does not build it: a config without
# `training:` plans exactly as before. Planning imports nothing of hipas_core.

# (config loading and input functions: workflow/rules/common.smk, "training set")


rule prepare_training_case:
    input:
        unpack(training_case_inputs),
        i2sr=config["models"]["i2sr"],
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
        " --i2sr-model {input.i2sr:q} {params.exclude} {params.synthetic_ncct} --out {output:q} > {log} 2>&1"


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
