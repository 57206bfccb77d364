# Per scan: lung mask, vessel morphometry (one Parquet row) and the QC picture.


rule lungs:
    input:
        ct="results/scans/{scan}/std.nii.gz",
    output:
        "results/scans/{scan}/lungs.nii.gz",
    params:
        method=config["lungs"]["method"],
        weights=lung_weights_option,
    log:
        "results/logs/lungs/{scan}.log",
    benchmark:
        "results/benchmarks/lungs/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "hipas lungs -i {input.ct} -o {output} --method {params.method} {params.weights}"
        " --scan-id {wildcards.scan} --exclude-invalid > {log} 2>&1"


rule morphometry:
    input:
        batch=scan_batch_dir,
        lungs="results/scans/{scan}/lungs.nii.gz",
    output:
        "results/scans/{scan}/morphometry.parquet",
    params:
        labels=scan_labels,
    log:
        "results/logs/morphometry/{scan}.log",
    benchmark:
        "results/benchmarks/morphometry/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "hipas morphometry --labels {params.labels} --lungs {input.lungs} -o {output}"
        " --scan-id {wildcards.scan} --exclude-invalid > {log} 2>&1"


rule qc_figure:
    input:
        ct="results/scans/{scan}/std.nii.gz",
        batch=scan_batch_dir,
    output:
        "results/qc/{scan}.png",
    params:
        labels=scan_labels,
    log:
        "results/logs/qc_figure/{scan}.log",
    benchmark:
        "results/benchmarks/qc_figure/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    shell:
        "hipas qc -i {input.ct} --labels {params.labels} -o {output}"
        " --scan-id {wildcards.scan} --exclude-invalid > {log} 2>&1"
