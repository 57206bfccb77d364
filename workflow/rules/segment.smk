# Artery/vein segmentation in batches: one job per `segmentation.batch_size` scans of a site
# (manifest order), one process and one model load for the whole batch (`hipas segment
# --batch`), so Python, CUDA and model start-up are paid once per batch, not once per scan.
# The labels of a batch land in one folder, per scan (or exclusion markers): `<scan>.nii.gz` in
# the scan's own grid (mapped back through its normalization record), the deliverable, and
# `<scan>.std.nii.gz` in the standardized grid, which morphometry measures. The batch table
# (`batch<chunk>.tsv` beside the folder: input, output, record, scan_id, std_output, protocol per
# scan) is an output of its own, the record of what the job was asked to do. The manifest's
# protocol picks the model's thresholds for the scan where its card has thresholds per protocol.


rule segment:
    input:
        images=batch_images,
        records=batch_records,
        model=config["models"]["sts"],
    output:
        labels=directory("results/segment/{site}/batch{chunk}"),
        table="results/segment/{site}/batch{chunk}.tsv",
    params:
        table=batch_table,
        device=SEGMENT_DEVICE,
    log:
        "results/logs/segment/{site}_batch{chunk}.log",
    benchmark:
        "results/benchmarks/segment/{site}_batch{chunk}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=batch_runtime,
        gpu=1,  # sbatch --gpus=1 under the SLURM executor
        cpus_per_gpu=2,
    shell:
        "printf '%s' {params.table:q} > {output.table} &&"
        " hipas segment --batch {output.table} --model {input.model} --device {params.device}"
        " --threads {threads} --exclude-invalid > {log} 2>&1"


# A manifest row with a `labels` file (the user's own annotation, another tool's output, or a
# phantom's truth) is not segmented: its labels are brought onto the standardized grid, which
# morphometry measures, exactly where the network's labels would be.
rule import_labels:
    input:
        labels=own_labels,
        ct="results/scans/{scan}/std.nii.gz",
        record="results/scans/{scan}/std.json",
    output:
        IMPORTED_LABELS,
    log:
        "results/logs/import_labels/{scan}.log",
    benchmark:
        "results/benchmarks/import_labels/{scan}.tsv"
    conda:
        "../envs/hipas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "hipas import-labels -i {input.labels} --ct {input.ct} --record {input.record} -o {output}"
        " --scan-id {wildcards.scan} --exclude-invalid > {log} 2>&1"
