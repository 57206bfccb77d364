# Per scan: slice super-resolution (I2SR where slices are thicker than 2 mm, decided inside the
# job from the image itself; thinner scans are copied through), then resampling to the
# standardized grid. Both images are temporary; the two JSON records are kept (sr.json holds
# the slice thickness as acquired, used by the cohort table).


rule super_resolve:
    input:
        ct=scan_ct,
        model=config["models"]["i2sr"],
    output:
        image=temp("results/scans/{scan}/sr.nii.gz"),
        record="results/scans/{scan}/sr.json",
    log:
        "results/logs/super_resolve/{scan}.log",
    benchmark:
        "results/benchmarks/super_resolve/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    shell:
        "hipas super-resolve -i {input.ct} -o {output.image} --model {input.model}"
        " --scan-id {wildcards.scan} --exclude-invalid > {log} 2>&1"


rule normalize:
    input:
        ct="results/scans/{scan}/sr.nii.gz",
    output:
        image=temp("results/scans/{scan}/std.nii.gz"),
        record="results/scans/{scan}/std.json",
    log:
        "results/logs/normalize/{scan}.log",
    benchmark:
        "results/benchmarks/normalize/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "hipas normalize -i {input.ct} -o {output.image}"
        " --scan-id {wildcards.scan} --exclude-invalid > {log} 2>&1"
