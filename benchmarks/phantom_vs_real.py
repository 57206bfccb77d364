"""The phantom against the real chest CT in ../shared/data/real-ct/, on the same figures (issue 13).

The real series (64 slices of 5 mm, 512 x 512, kernel L, no contrast) is read as ``hipas`` reads
it (``hipas_core.io.read_ct``). The phantom is a full-size NCCT phantom (``--seed``, default 4)
acquired at the real scan's slice thickness (5 mm), so that partial volume is alike, once with
each reconstruction kernel (``smooth``, every phantom before generator version 2, and ``sharp``,
the lung kernel the real series was reconstructed with). Both go
through the same code: lungs by ``hipas_core.lungs.threshold_lungs``, the body as the largest
connected region above -500 HU, slice by slice with holes filled. Printed, one column each:

* lung volume (L); parenchyma HU inside the lungs eroded by 3 mm (pleura and hila left out):
  mean and 10th / 50th / 90th percentile; share of the lung voxels above -500 HU (vessels, airway
  walls, fissures, lesions);
* noise: robust SD (1.4826 x MAD, HU) of the image minus its 3 x 3 in-plane median, in soft
  tissue (``hipas_core.noise.soft_tissue_mask`` within the body, the measure the noise harmonization
  decides by); noise power spectrum of 16 x 16 soft-tissue
  patches (mean-subtracted, radially averaged): its mean spatial frequency (mm^-1; sharper
  reconstruction kernels push it up) and the share of noise power above 0.3 mm^-1;
* body outline: cross-section area (cm^2) at the lung apex (the slice 10 % of the lungs' height
  below their top), at mid-lung and at the base (10 % above the bottom); width / depth at mid-lung;
* body wall at mid-lung (body voxels outside the lungs' per-slice convex hull): fat share
  (-190..-30 HU), muscle and other soft tissue (-29..150 HU), bone (> 200 HU); median HU of the
  mediastinal soft tissue (inside the hull, outside the lungs, -29..150 HU).

With ``--picture`` it also draws both scans side by side (axial at mid-lung, coronal and
sagittal through the right lung, lung window W 1500 / L -600, physical aspect).

    .venv/bin/python benchmarks/phantom_vs_real.py [--seed 4] [--picture docs/phantom-vs-real.png]
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx-A0001-5mm.tar.xz"
REAL_SLICE_MM = 5.0
KERNELS = ("smooth", "sharp")  # the phantom before (every phantom smooth until version 2) and after


def body_mask(ct: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: per slice the largest connected region above -500 HU, holes filled."""
    import cc3d
    from scipy import ndimage

    body = np.zeros(ct.shape, dtype=bool)
    for z in range(ct.shape[0]):
        components = cc3d.connected_components(ct[z] > -500, connectivity=8)
        if components.max() == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        body[z] = ndimage.binary_fill_holes(components == int(np.argmax(sizes)))
    return body


def hull_mask(lungs: np.ndarray) -> np.ndarray:
    """Per-slice convex hull of the lungs ((Z, Y, X) bool)."""
    from skimage.morphology import convex_hull_image

    hull = np.zeros_like(lungs)
    for z in range(lungs.shape[0]):
        if lungs[z].any():
            hull[z] = convex_hull_image(lungs[z])
    return hull


def noise_power(ct: np.ndarray, region: np.ndarray, spacing, *, patch: int = 16, limit: int = 400):
    """Mean spatial frequency (mm^-1) of the radially averaged NPS of up to ``limit`` in-plane
    patches lying wholly in ``region``, and the share of noise power above 0.3 mm^-1."""
    from scipy import ndimage

    inside = ndimage.minimum_filter(region, size=(1, patch, patch))  # patch centres whose patch is inside
    centres = np.argwhere(inside[:, patch // 2::patch, patch // 2::patch])
    if len(centres) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    centres = centres[rng.permutation(len(centres))[:limit]]
    power = np.zeros((patch, patch))
    half = patch // 2
    for z, j, i in centres:
        y, x = j * patch + half, i * patch + half
        block = ct[z, y - half:y + half, x - half:x + half].astype(np.float64)
        if block.shape != (patch, patch):
            continue
        block -= block.mean()
        power += np.abs(np.fft.fft2(block)) ** 2
    fy = np.fft.fftfreq(patch, d=spacing[1])
    fx = np.fft.fftfreq(patch, d=spacing[2])
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    total = power[radius > 0].sum()
    return float((power * radius).sum() / total), float(power[radius > 0.3].sum() / total)


def lung_labels(ct_image) -> np.ndarray:
    """(Z, Y, X) uint8 lung mask of a scan (0, 1 right, 2 left; ``threshold_lungs``)."""
    import SimpleITK as sitk

    from hipas_core.lungs import threshold_lungs

    return sitk.GetArrayFromImage(threshold_lungs(ct_image))


def figures(ct_image, lung_map: np.ndarray) -> dict[str, float]:
    """The printed figures of one scan (a SimpleITK image in HU, its ``lung_labels``)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from hipas_core.noise import residual_noise_sd, soft_tissue_mask

    ct = sitk.GetArrayFromImage(ct_image).astype(np.float32)
    spacing = ct_image.GetSpacing()[::-1]  # (z, y, x) mm
    lungs = lung_map > 0
    body = body_mask(ct)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, float] = {"lung volume (L)": lungs.sum() * voxel_ml / 1000.0}
    erode = tuple(max(1, round(3.0 / s)) for s in spacing)
    core = ndimage.binary_erosion(lungs, structure=np.ones(tuple(2 * e + 1 for e in erode), bool))
    hu = ct[core]
    out["parenchyma mean HU"] = float(hu.mean())
    for q in (10, 50, 90):
        out[f"parenchyma p{q} HU"] = float(np.percentile(hu, q))
    out["lung voxels > -500 HU (%)"] = 100.0 * float((ct[lungs] > -500).mean())
    # the measure hipas normalize decides the noise harmonization by (hipas_core.noise), on every slice
    soft = soft_tissue_mask(ct) & body
    out["noise SD, soft tissue (HU)"] = residual_noise_sd(ct, soft)
    mean_frequency, high_share = noise_power(ct, soft, spacing)
    out["NPS mean frequency (1/mm)"] = mean_frequency
    out["NPS power above 0.3/mm (%)"] = 100.0 * high_share
    rows = np.flatnonzero(lungs.any(axis=(1, 2)))
    top, bottom = int(rows.min()), int(rows.max())  # array z runs inferior to superior (LPS, +z up)
    height = bottom - top
    levels = {"apex": bottom - round(0.1 * height), "mid-lung": (top + bottom) // 2, "base": top + round(0.1 * height)}
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    for name, z in levels.items():
        out[f"body area at {name} (cm2)"] = float(body[z].sum() * pixel_cm2)
    mid = levels["mid-lung"]
    ys, xs = np.nonzero(body[mid])
    out["body width / depth at mid-lung"] = float(((xs.max() - xs.min()) * spacing[2]) / ((ys.max() - ys.min()) * spacing[1]))
    hull = hull_mask(lungs[mid:mid + 1])[0]
    wall = body[mid] & ~hull
    slice_ = ct[mid]
    out["wall fat (%)"] = 100.0 * float(((slice_ >= -190) & (slice_ <= -30))[wall].mean())
    out["wall soft tissue (%)"] = 100.0 * float(((slice_ > -30) & (slice_ <= 150))[wall].mean())
    out["wall bone > 200 HU (%)"] = 100.0 * float((slice_ > 200)[wall].mean())
    mediastinum = hull & ~lungs[mid] & (slice_ > -30) & (slice_ <= 150)
    out["mediastinum median HU"] = float(np.median(slice_[mediastinum]))
    return out


def read_real(work: Path):
    from hipas_core.io import read_ct

    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(work, filter="data")
    series = next(p.parent for p in sorted(work.rglob("*.dcm")))
    return read_ct(series)


def phantom_ct(seed: int, kernel: str):
    from hipas_core.phantom import PhantomSpec, generate_phantom

    spec = PhantomSpec.from_seed(seed, size="full", protocol="ncct", slice_thickness_mm=REAL_SLICE_MM, kernel=kernel)
    return generate_phantom(spec).ct


def picture(images: dict, path: Path) -> None:
    """Axial and coronal planes through the lungs' centre and a sagittal plane through the right
    lung's, one row per scan (``images``: name -> (CT image, its ``lung_labels``)), lung window,
    physical aspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    fig, axes = plt.subplots(len(images), 3, figsize=(12, 4.2 * len(images)))
    for row, (name, (image, lungs)) in enumerate(images.items()):
        ct = sitk.GetArrayFromImage(image)
        sz, sy, sx = image.GetSpacing()[::-1]
        z, y, _ = (int(round(c)) for c in np.argwhere(lungs > 0).mean(axis=0))
        x = int(round(np.argwhere(lungs == 1)[:, 2].mean()))  # sagittal through the right lung
        planes = (("axial", ct[z], sx / sy), ("coronal", ct[:, y, :][::-1], sz / sx), ("sagittal", ct[:, :, x][::-1], sz / sy))
        for col, (plane, array, aspect) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(array, cmap="gray", vmin=-1350, vmax=150, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name}: {plane}", fontsize=10)
            ax.axis("off")
    fig.suptitle("phantoms | real CT, lung window (W 1500, L -600)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    fig.savefig(temporary, dpi=80, format="png")
    plt.close(fig)
    temporary.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4, help="full-size NCCT phantom seed (default 4)")
    parser.add_argument("--picture", type=Path, help="also draw both scans side by side into this PNG")
    args = parser.parse_args()
    if not ARCHIVE.is_file():
        print(f"{ARCHIVE}: the real CT is not there (../shared/data/real-ct/)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="phantom-vs-real-") as tmp:
        started = time.perf_counter()
        real = read_real(Path(tmp))
        scans = {f"phantom {kernel}": phantom_ct(args.seed, kernel) for kernel in KERNELS}
        shape = next(iter(scans.values())).GetSize()
        print(f"real: {ARCHIVE.name}, {'x'.join(map(str, real.GetSize()))} voxels, "
              f"{' x '.join(f'{s:.3f}' for s in real.GetSpacing())} mm; phantom: seed {args.seed} full NCCT "
              f"{REAL_SLICE_MM:g} mm, {'x'.join(map(str, shape))} voxels, kernels {', '.join(KERNELS)} "
              f"({time.perf_counter() - started:.0f} s)")
        scans["real CT"] = real
        lungs = {name: lung_labels(image) for name, image in scans.items()}
        columns = {name: figures(image, lungs[name]) for name, image in scans.items()}
        phantoms = [name for name in scans if name != "real CT"]
        print(f"| figure | {' | '.join(phantoms)} | real CT | {' | '.join(f'{name} - real' for name in phantoms)} |")
        print("| --- |" + " --- |" * (2 * len(phantoms) + 1))
        for figure in columns["real CT"]:
            real_value = columns["real CT"][figure]
            values = [columns[name][figure] for name in phantoms]
            print(f"| {figure} | {' | '.join(f'{v:.3g}' for v in values)} | {real_value:.3g} | "
                  f"{' | '.join(f'{v - real_value:+.3g}' for v in values)} |")
        if args.picture:
            picture({f"{name}, seed {args.seed}" if name != "real CT" else name: (scans[name], lungs[name])
                     for name in scans}, args.picture)
            print(f"picture: {args.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
