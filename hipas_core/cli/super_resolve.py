"""``hipas super-resolve -i CT -o OUT.nii.gz``: I2SR of a thick-slice CT to 1 mm slices.

Slices thicker than ``--threshold-mm`` (2 mm, the paper's) are super-resolved with the I2SR model (same in-plane grid, 1 mm
slices from the first input slice on). Thinner slices are copied through unchanged. The image
is written as int16 HU when every value is a whole number in range (always for I2SR output,
which is rounded), else float32. The sidecar ``OUT.json`` says what was done (``copied_through``,
input/output spacing, slice thickness, model path and SHA-256, device, versions). I2SR reports
its tiles done on stderr (a bar on a terminal, else log lines; none with ``--quiet``).
"""

from __future__ import annotations

import argparse

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage
from hipas_core.cli.normalize import sidecar_path
from hipas_core.conventions import I2SR_THICKNESS_MM
from hipas_core.resources import shipped_model

DEFAULT_MODEL = shipped_model("i2sr-demo.pt")


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="CT: DICOM folder, NIfTI, NRRD/MHA or HiPaS NPZ")
    parser.add_argument("-o", "--output", required=True, help="1 mm-slice CT (.nii.gz); a sidecar OUT.json is written too")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="I2SR checkpoint (default: the shipped i2sr-demo.pt)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="torch device (auto: cuda when available, else cpu)")
    parser.add_argument("--threshold-mm", type=float, default=I2SR_THICKNESS_MM,
                        help=f"super-resolve only slices thicker than this (default {I2SR_THICKNESS_MM:g} mm, the paper's)")
    parser.add_argument("--metadata-table", help="CSV with case_id and spacing columns (HiPaS NPZ input)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    add_scan_stage_options(parser)


def run(args: argparse.Namespace) -> int:
    sidecar = sidecar_path(args.output)
    threshold = args.threshold_mm
    scan_id = args.scan_id or default_scan_id(args.input)

    def work() -> None:
        import numpy as np
        import SimpleITK as sitk

        from hipas_core.atomic import write_image_and_sidecar
        from hipas_core.conventions import needs_super_resolution, resolve_device
        from hipas_core.errors import InvalidInputError
        from hipas_core.io import read_ct, voxel_sha256
        from hipas_core.normalize import slice_thickness_mm
        from hipas_core.provenance import file_sha256, provenance

        image = read_ct(args.input, metadata_table=args.metadata_table)
        thickness = slice_thickness_mm(image)
        record = {
            "scan_id": scan_id,
            "input_voxels_sha256": voxel_sha256(image),  # the scan's identity: never its path
            "input_slice_thickness_mm": thickness,
            "input_spacing": list(image.GetSpacing()[::-1]),
            "threshold_mm": threshold,
        }
        if not needs_super_resolution(thickness, threshold):
            result = image
            record.update(copied_through=True, reason=f"slice thickness {thickness:g} mm <= {threshold:g} mm: copied unchanged")
            params = {}
        else:
            import torch

            from hipas_core.i2sr import load_model, super_resolve

            device = resolve_device(args.device)
            if device == "cuda" and not torch.cuda.is_available():
                raise InvalidInputError("--device cuda: no CUDA device available")
            model = load_model(args.model, device=device)
            result = super_resolve(image, model=model, device=device, progress="off" if args.quiet else None)
            record.update(copied_through=False, reason=f"slice thickness {thickness:g} mm > {threshold:g} mm: I2SR")
            params = {"model_sha256": file_sha256(args.model), "device": device}
        values = sitk.GetArrayViewFromImage(result)
        if not record["copied_through"]:
            values = np.round(values)
        whole = np.array_equal(values, np.round(values)) and values.min() >= -32768 and values.max() <= 32767
        out = sitk.GetImageFromArray(values.astype(np.int16 if whole else np.float32))
        out.CopyInformation(result)
        record.update(output_spacing=list(out.GetSpacing()[::-1]), output_size=list(out.GetSize()[::-1]),
                      dtype="int16" if whole else "float32")
        write_image_and_sidecar(args.output, out, sidecar, {**record, **provenance(**params)})

    return run_scan_stage(
        stage="super-resolve",
        scan_id=scan_id,
        inputs=[args.input],
        outputs=[args.output, sidecar],
        exclude_invalid=args.exclude_invalid,
        work=work,
    )
