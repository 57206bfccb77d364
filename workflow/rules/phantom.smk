# Demo cohort: sites with `phantom: true` get their scans from `hipas phantom`, with the
# manifest row's seed and demographics (hipas_core.phantom.cohort.phantom_arguments).


rule demo_phantom:
    output:
        ct="results/phantoms/{scan}/ct.nii.gz",
        truth="results/phantoms/{scan}/truth.json",
        labels=PHANTOM_LABELS,
    params:
        arguments=phantom_arguments,
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
        "hipas phantom {params.arguments} --out {params.folder} > {log} 2>&1"
