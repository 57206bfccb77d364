"""``hipas normalize -i CT -o OUT.nii.gz``: a CT in the standardized grid plus its record.

Writes ``OUT.nii.gz`` (int16 HU, rounded; standardized grid: spacing 1.0 x 334/512 x 334/512 mm,
LPS identity direction) and the sidecar ``OUT.json`` (the ``NormalizationRecord``: input grid,
slice thickness, needs_i2sr, z_method, plus provenance). Slices thicker than
``--i2sr-threshold-mm`` (2 mm, the paper's) are super-resolved with I2SR before resampling, with
``--i2sr-model`` (default: the shipped ``i2sr-demo.pt``; loaded only for such scans), as the
workflow and the paper do; ``--i2sr-model none`` resamples z trilinearly. A sharp-kernel scan
(input noise > 25 HU, ``hipas_core.noise``) is smoothed in-plane first unless
``--noise-harmonization off``. ``--series-uid`` picks one series of a DICOM
folder holding several (default: most slices, then thinnest, then smallest UID; ``hipas_core.io``).

The sidecar names the scan by its ``scan_id`` and by ``input_voxels_sha256`` (``hipas_core.io.
voxel_sha256``: the input's HU voxels, whatever the format); no path is stored, neither the input's
nor the metadata table's or the I2SR model's (those are identified by their files' SHA-256).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage
from hipas_core.conventions import I2SR_THICKNESS_MM
from hipas_core.resources import shipped_model


def sidecar_path(output: str | Path) -> Path:
    """``OUT.nii.gz`` -> ``OUT.json`` (any image suffixes replaced by ``.json``)."""
    output = Path(output)
    return output.with_name(output.name.split(".")[0] + ".json")


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="DICOM folder, NIfTI, NRRD/MHA or HiPaS ct_scan/NNN.npz")
    parser.add_argument("-o", "--output", required=True, help="standardized CT (.nii.gz); the record goes to OUT.json")
    parser.add_argument("--metadata-table", help="CSV with case_id, spacing_x_mm, spacing_y_mm, spacing_z_mm (HiPaS NPZ)")
    parser.add_argument("--series-uid", help="SeriesInstanceUID to read from a DICOM folder holding several series")
    parser.add_argument("--i2sr-model", default=str(shipped_model("i2sr-demo.pt")),
                        help="I2SR checkpoint that super-resolves thick slices (default: the shipped "
                        "i2sr-demo.pt); 'none': trilinear z for every scan")
    parser.add_argument("--i2sr-threshold-mm", type=float, default=I2SR_THICKNESS_MM,
                        help=f"slices thicker than this get I2SR (default {I2SR_THICKNESS_MM:g} mm, the paper's)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="torch device for I2SR (auto: cuda when available, else cpu)")
    parser.add_argument("--noise-harmonization", default="auto", choices=("auto", "off"),
                        help="'auto' (default): a scan whose noise says it was reconstructed with a sharp (lung) kernel (hipas_core.noise: > 25 HU) is smoothed in-plane before resampling, as the model card says; 'off': never")
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    sidecar = sidecar_path(args.output)

    def work() -> None:
        import numpy as np
        import SimpleITK as sitk

        from hipas_core.atomic import write_image_and_sidecar
        from hipas_core.conventions import needs_super_resolution, resolve_device
        from hipas_core.io import read_ct, voxel_sha256
        from hipas_core.normalize import normalize_ct, slice_thickness_mm
        from hipas_core.provenance import file_sha256, provenance

        image = read_ct(args.input, metadata_table=args.metadata_table, series_uid=args.series_uid)
        i2sr_path = None if args.i2sr_model == "none" else args.i2sr_model
        model, device = None, "cpu"
        if i2sr_path and needs_super_resolution(slice_thickness_mm(image), args.i2sr_threshold_mm):
            from hipas_core.i2sr import load_model

            device = resolve_device(args.device)
            model = load_model(i2sr_path, device=device)
        standard, record = normalize_ct(
            image, i2sr_model=model, device=device, i2sr_threshold_mm=args.i2sr_threshold_mm,
            noise_harmonization=args.noise_harmonization == "auto",
        )
        hu = np.clip(np.round(sitk.GetArrayViewFromImage(standard)), -32768, 32767).astype(np.int16)
        out = sitk.GetImageFromArray(hu)
        out.CopyInformation(standard)
        params = {"i2sr_threshold_mm": args.i2sr_threshold_mm, "noise_harmonization": args.noise_harmonization,
                  "series_uid_given": args.series_uid is not None,
                  "metadata_table_sha256": file_sha256(args.metadata_table) if args.metadata_table else None,
                  "i2sr_model_sha256": file_sha256(i2sr_path) if i2sr_path else None}
        identity = {"scan_id": scan_id, "input_voxels_sha256": voxel_sha256(image)}
        write_image_and_sidecar(args.output, out, sidecar,
                                {**record.to_dict(), **identity, "dtype": "int16", **provenance(**params)})

    scan_id = args.scan_id or default_scan_id(args.input)
    return run_scan_stage(
        stage="normalize",
        scan_id=scan_id,
        inputs=[args.input],
        outputs=[args.output, sidecar],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
