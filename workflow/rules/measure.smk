# Per scan: lung mask, then vessel morphometry (one Parquet row) and the QC picture. The labels are
# the segment batch's, or the scan's own (manifest column `labels`, rule import_labels).
#
# Both measure the labels in the standardized grid (segment's `<scan>.std.nii.gz`), on the grid of
# the lung mask, as the paper does; the labels mapped back to a thick-slice scan's own grid lose
# thin vessels (on a full phantom at 2.5-5 mm: centerline length -12 to -19 %, bifurcations up to
# -39 %), which would tie the Figure 4 indices to slice thickness.
#
# The QC picture (orthogonal slices with the labels, a projection of both trees) is drawn in the
# morphometry job rather than a rule of its own: both read the same labels, the picture takes
# about a second, and one job less per scan takes about 1.3 ms x 11,784 = 16 s off planning the
# paper's cohort (benchmarks/bench_planning.py). The job's log holds both commands' output.


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
        ct="results/scans/{scan}/std.nii.gz",
        labels=scan_labels_source,
        lungs="results/scans/{scan}/lungs.nii.gz",
    output:
        row="results/scans/{scan}/morphometry.parquet",
        qc="results/qc/{scan}.png",
    params:
        labels=scan_standard_labels,
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
        "(hipas morphometry --labels {params.labels} --lungs {input.lungs} -o {output.row}"
        " --scan-id {wildcards.scan} --exclude-invalid"
        " && hipas qc -i {input.ct} --labels {params.labels} -o {output.qc}"
        " --scan-id {wildcards.scan} --exclude-invalid) > {log} 2>&1"
