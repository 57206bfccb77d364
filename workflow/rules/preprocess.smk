# Per scan: spatial normalization to the standardized grid. Slices thicker than the I2SR
# threshold are super-resolved by I2SR inside the same job (decided there from the image itself,
# never while planning); thinner ones are resampled trilinearly. Super-resolution lives in this
# job rather than a rule of its own because a separate rule would add one job and one full-volume
# write and read per scan, for all 11,784 scans, to serve the few thick-slice ones
# (`hipas super-resolve` remains a command of its own). The image is temporary; the record
# (std.json: input grid, slice thickness as acquired, z method) is kept for the cohort table.


rule normalize:
    input:
        ct=scan_ct,
        model=config["models"]["i2sr"],
    output:
        image=temp("results/scans/{scan}/std.nii.gz"),
        record="results/scans/{scan}/std.json",
    params:
        threshold=config["normalization"]["i2sr_threshold_mm"],
    log:
        "results/logs/normalize/{scan}.log",
    benchmark:
        "results/benchmarks/normalize/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    shell:
        "hipas normalize -i {input.ct} -o {output.image} --i2sr-model {input.model}"
        " --i2sr-threshold-mm {params.threshold} --scan-id {wildcards.scan} --exclude-invalid"
        " > {log} 2>&1"
