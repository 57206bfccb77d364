# Demo cohort: sites with `phantom: true` get their scans from `hipas phantom`, which reads the
# manifest row's seed, protocol, demographics and slice thickness itself (--manifest --scan-id).


rule demo_phantom:
    output:
        ct="results/phantoms/{scan}/ct.nii.gz",
        truth="results/phantoms/{scan}/truth.json",
        labels=PHANTOM_LABELS,
    params:
        manifest=scan_manifest,
        row=manifest_row,
        size=config["phantom"]["size"],
        folder=lambda wildcards, output: os.path.dirname(output.ct),
    log:
        "results/logs/demo_phantom/{scan}.log",
    benchmark:
        "results/benchmarks/demo_phantom/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "hipas phantom --manifest {params.manifest:q} --scan-id {wildcards.scan} --size {params.size}"
        " --out {params.folder} > {log} 2>&1"
