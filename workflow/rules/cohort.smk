# Per cohort: the cohort table (+ exclusions), Figure 4, and the report's QC sample.


rule cohort_table:
    input:
        rows=expand("results/scans/{scan}/morphometry.parquet", scan=SCANS),
        records=expand("results/scans/{scan}/std.json", scan=SCANS),
        manifests=[entry["manifest"] for entry in config["sites"].values()],
    output:
        table="results/cohort/metrics.parquet",
        exclusions=report(
            "results/cohort/exclusions.csv",
            caption="../report/exclusions.rst",
            category="Cohort",
        ),
    params:
        sites=site_options(),
        scans_dir=lambda wildcards, input: os.path.dirname(os.path.dirname(input.rows[0])),
    log:
        "results/logs/cohort_table.log",
    benchmark:
        "results/benchmarks/cohort_table.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "hipas cohort-table {params.sites} --scans-dir {params.scans_dir}"
        " -o {output.table} --exclusions {output.exclusions} > {log} 2>&1"


FIGURE4_PANELS = ["fig4a_sex", "fig4b_age", "fig4c_lung_volume", "fig4d_diseases", "fig4ef_regression"]


rule figure4:
    input:
        "results/cohort/metrics.parquet",
    output:
        plots=report(
            expand("results/figure4/{panel}.png", panel=FIGURE4_PANELS),
            caption="../report/figure4.rst",
            category="Figure 4",
        ),
        tables=expand("results/figure4/{panel}.csv", panel=FIGURE4_PANELS),
        html="results/figure4/report.html",
    params:
        folder=lambda wildcards, output: os.path.dirname(output.html),
        age_bin_width=config["analysis"]["age_bin_width"],
    log:
        "results/logs/figure4.log",
    benchmark:
        "results/benchmarks/figure4.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "hipas figure4 --cohort {input} --out {params.folder}"
        " --age-bin-width {params.age_bin_width} > {log} 2>&1"


# Phantom sites only: every index measured against the generator's truth, and the Figure 4 full
# model on measured beside true indices (hipas phantom-truth, analysis/truth.py).
rule phantom_truth:
    input:
        cohort="results/cohort/metrics.parquet",
        truth=phantom_truth_files,
    output:
        plot=report(
            "results/figure4/measured_vs_truth.png",
            caption="../report/measured_vs_truth.rst",
            category="Figure 4",
        ),
        table="results/figure4/measured_vs_truth.csv",
        agreement="results/figure4/agreement.csv",
        coefficients="results/figure4/fig4ef_measured_vs_truth.csv",
    params:
        folder=lambda wildcards, output: os.path.dirname(output.table),
        truth=phantom_truth_arguments,
    log:
        "results/logs/phantom_truth.log",
    benchmark:
        "results/benchmarks/phantom_truth.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "hipas phantom-truth --cohort {input.cohort} --out {params.folder} {params.truth} > {log} 2>&1"


rule qc_report_sample:
    input:
        "results/qc/{scan}.png",
    output:
        report("results/report/qc/{scan}.png", caption="../report/qc.rst", category="QC", subcategory="{scan}"),
    log:
        "results/logs/qc_report_sample/{scan}.log",
    benchmark:
        "results/benchmarks/qc_report_sample/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "cp {input} {output} 2> {log}"
