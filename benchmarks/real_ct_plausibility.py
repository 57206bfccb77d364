"""Plausibility of one or more STS checkpoints on the real chest CT in ../shared/data/real-ct/
(no labels: figures a reader accepts without truth, ``hipas_core.plausibility``).

The real DICOM series goes once through ``hipas normalize`` (I2SR at 5 mm) and ``hipas lungs``;
each model then runs ``hipas segment --record --std-output`` on the normalized CT, as the workflow
does. Printed, one column per model: lung volume, the share of predicted vessel voxels inside the
thoracic cavity, each tree's share in its three largest connected components, the share of bright
(> -400 HU) lung voxels predicted vessel, whether each tree reaches the hila, and the voxel
counts. Optionally writes a markdown table (``--out``).

    .venv/bin/python benchmarks/real_ct_plausibility.py --model A.pt --model B.pt [--name a --name b] [--out T.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx-A0001-5mm.tar.xz"
FIGURES = ("lung_total_ml", "inside_cavity", "artery_top3", "vein_top3", "bright_lung_predicted",
           "artery_reaches_hila", "vein_reaches_hila", "artery_voxels", "vein_voxels")


def hipas(*args) -> None:
    subprocess.run([str(Path(sys.executable).parent / "hipas"), *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="STS checkpoint (repeat)")
    parser.add_argument("--name", action="append", help="column name per model (default: file name)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the table as markdown")
    args = parser.parse_args()
    names = args.name or [Path(m).stem for m in args.model]
    if len(names) != len(args.model):
        parser.error("give one --name per --model")
    if not ARCHIVE.is_file():
        print(f"{ARCHIVE}: not present (the real CT lives outside the repository)", file=sys.stderr)
        return 2

    import SimpleITK as sitk

    from hipas_core.plausibility import plausibility_figures

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        ct, lungs = work / "ct.nii.gz", work / "lungs.nii.gz"
        if not ct.is_file():
            with tarfile.open(ARCHIVE) as archive:
                archive.extractall(work / "export", filter="data")
            series = next(p.parent for p in sorted((work / "export").rglob("*.dcm")))
            hipas("normalize", "-i", series, "-o", ct, "--scan-id", "real")
            hipas("lungs", "-i", ct, "-o", lungs, "--scan-id", "real")
        image = sitk.ReadImage(str(ct))
        ct_hu = sitk.GetArrayFromImage(image)
        lung_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(lungs)))
        columns = {}
        for name, model in zip(names, args.model, strict=True):
            std = work / f"std-{name}.nii.gz"
            hipas("segment", "-i", ct, "--record", work / "ct.json", "-o", work / f"labels-{name}.nii.gz",
                  "--std-output", std, "--model", model, "--scan-id", "real", "--threads", args.threads)
            columns[name] = plausibility_figures(ct_hu, sitk.GetArrayFromImage(sitk.ReadImage(str(std))),
                                                 spacing=image.GetSpacing()[::-1], lungs=lung_mask)
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for figure in FIGURES:
        cells = []
        for name in names:
            value = columns[name][figure]
            cells.append(str(value) if isinstance(value, bool | int) else f"{value:.3f}" if value < 10 else f"{value:.0f}")
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        from hipas_core.atomic import write_text

        write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
