"""Imaging the phantom: acquisition grid, tissue intensities, partial volume, slice profile, noise.

The anatomy is rendered slab by slab on a fine grid: the acquisition's in-plane grid and
``k`` sub-slices per acquired slice (``k = round(thickness / 1 mm)``, 1 for thin slices).
Vessel and airway edges are anti-aliased from the analytic signed distance (a one-voxel linear
ramp); each acquired slice is the mean of its sub-slices (a box slice-sensitivity profile of
width = slice thickness), then blurred in-plane by the scanner's point-spread function (Gaussian,
sigma ~0.55 px) and given correlated noise whose SD is 22 HU at 5 mGy and 1 mm, scaling with
1/sqrt(dose) and 1/sqrt(thickness). A sharp (lung) reconstruction kernel (``spec.kernel``)
edge-enhances the blurred slice (unsharp mask: overshoot and dark halos at vessel walls) and
gives near-white noise of ``SHARP_NOISE_FACTOR`` times the SD (a real 5 mm lung-kernel scan
has about 50 HU, with 80 % of its noise power above 0.3 mm^-1). Label, level and lung maps are the majority over the
sub-slices of the exact (voxel-centre) maps, in the same acquisition grid.

Intensities (HU): air -1000, fat -100, muscle 45, blood 34-46 (NCCT, arteries and veins alike),
lung parenchyma -850 with a gravity gradient (+30 HU per 100 mm posterior) and correlated
texture (SD 18 HU), COPD -880 with low-attenuation clusters, bone 230 (cancellous) to 700-800
(cortical). CTPA: arteries and right heart at ``arterial_hu``; veins, left heart and aorta at
blood + ``contrast_phase`` x (arterial - blood); superior vena cava 1.5 x arterial (undiluted
contrast); an embolus (``embolism``) is a 35 HU filling defect in a lobar/segmental artery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hipas_core.conventions import ARTERY, VEIN
from hipas_core.phantom.airways import bronchial_segments
from hipas_core.phantom.anatomy import Anatomy
from hipas_core.phantom.rasterize import coverage, paint_capsules, render_capsules
from hipas_core.phantom.spec import MATRIX, PhantomSpec, stream
from hipas_core.phantom.vessels import VesselTree

MAX_SMALL_SLICES = 200
NOISE_SD_REF_HU = 22.0  # at 5 mGy and 1 mm slices
SHARP_NOISE_FACTOR = 3.5  # lung kernel against soft-tissue kernel, same dose
SHARP_GAIN, SHARP_SIGMA_PX = 1.0, 1.0  # the lung kernel's unsharp mask
FINE_SLICE_MM = 1.0


@dataclass(frozen=True)
class Grid:
    """The acquisition grid: voxel-centre axes in mm (ascending) and sub-slices per slice."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    thickness: float
    sub: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.size, self.y.size, self.x.size)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.thickness, float(self.y[1] - self.y[0]), float(self.x[1] - self.x[0]))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def sub_z(self, k0: int, k1: int) -> np.ndarray:
        """Sub-slice centres (mm) of acquired slices k0..k1-1."""
        offsets = ((np.arange(self.sub) + 0.5) / self.sub - 0.5) * self.thickness
        return (self.z[k0:k1, None] + offsets[None, :]).ravel()


def acquisition_grid(spec: PhantomSpec, anatomy: Anatomy) -> Grid:
    """The grid of the scan: fixed matrix, the spec's spacing, lungs plus margins in z."""
    n = MATRIX[spec.size]
    spacing = float(spec.inplane_spacing_mm)
    thickness = float(spec.slice_thickness_mm)
    margin = float(spec.z_margin_mm) * (1.0 if spec.size == "full" else 0.5)
    z0, z1 = anatomy.lung_z_range()
    if spec.size == "small":  # keep the reduced chest within ~200 slices: trim the margins first
        margin = min(margin, max(0.0, (MAX_SMALL_SLICES * thickness - (z1 - z0)) / 2.0))
    z0, z1 = z0 - margin, z1 + margin
    count = int(np.ceil((z1 - z0) / thickness))
    z = z0 + thickness * (np.arange(count) + 0.5) + ((z1 - z0) - count * thickness) / 2.0
    cy = anatomy.body_axes[0]
    xy = (np.arange(n) - (n - 1) / 2.0) * spacing
    sub = max(1, int(round(thickness / FINE_SLICE_MM)))
    return Grid(z=z, y=cy + xy, x=xy.copy(), thickness=thickness, sub=sub)


@dataclass
class Intensities:
    blood: float
    artery: float
    vein: float
    right_heart: float
    left_heart: float
    aorta: float
    svc: float


def intensities(spec: PhantomSpec, anatomy: Anatomy) -> Intensities:
    blood = float(anatomy.jitter["blood_hu"])
    if spec.protocol == "ncct":
        return Intensities(blood, blood, blood, blood, blood, blood, blood)
    art = float(spec.arterial_hu)
    vein = blood + float(spec.contrast_phase) * (art - blood)
    return Intensities(blood, art, vein, 0.95 * art, vein, 0.95 * vein, min(1.5 * art, 1200.0))


@dataclass
class Rendered:
    ct: np.ndarray  # int16 HU (z, y, x)
    labels: np.ndarray  # uint8
    levels: np.ndarray  # uint8
    lungs: np.ndarray  # uint8


def render(spec: PhantomSpec, anatomy: Anatomy, trees: dict[int, VesselTree], grid: Grid,
           extras: dict) -> Rendered:
    """Render CT, labels, levels and lung mask on ``grid`` (see the module docstring)."""
    hu_of = intensities(spec, anatomy)
    nz, ny, nx = grid.shape
    ct = np.empty(grid.shape, np.int16)
    labels = np.zeros(grid.shape, np.uint8)
    levels = np.zeros(grid.shape, np.uint8)
    lungs = np.zeros(grid.shape, np.uint8)

    # vessel edges of both trees in one list
    parts = []
    for kind in (ARTERY, VEIN):
        a, b, r, child = trees[kind].edges()
        parts.append((a, b, r, np.full(len(a), kind, np.uint8), trees[kind].level[child]))
    va = np.concatenate([p[0] for p in parts])
    vb = np.concatenate([p[1] for p in parts])
    vr = np.concatenate([p[2] for p in parts])
    vkind = np.concatenate([p[3] for p in parts])
    vlevel = np.concatenate([p[4] for p in parts])
    vhu = np.where(vkind == ARTERY, hu_of.artery, hu_of.vein).astype(np.float32)
    vtip = np.concatenate([trees[k].n_children[trees[k].edges()[3]] == 0 for k in (ARTERY, VEIN)])
    emb = extras.get("embolus_edge")
    if emb is not None:
        vhu = vhu.copy()
    air_a, air_b, air_r, air_w = bronchial_segments(
        anatomy, trees[ARTERY], max_generation=5 if spec.size == "full" else 4,
        min_radius=1.2 if spec.size == "full" else 0.8,
    )
    tubes = anatomy.mediastinal_tubes()
    tube_hu = {"aorta": hu_of.aorta, "svc": hu_of.svc, "oesophagus": 35.0}

    width = float(grid.spacing[1])
    template = _body_template(anatomy, grid)
    texture = _lung_texture(spec, anatomy, grid)
    noise_rng = stream(spec.seed, "noise")
    sd = NOISE_SD_REF_HU * np.sqrt(5.0 / float(spec.dose)) / np.sqrt(grid.thickness)
    sharp = spec.kernel == "sharp"
    noise_bank = (_white_noise_bank(noise_rng, (min(nz, 40), ny, nx), SHARP_NOISE_FACTOR * sd) if sharp
                  else _noise_bank(noise_rng, (min(nz, 40), ny, nx), sd))
    slab = max(1, 24 // grid.sub)
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        zf = grid.sub_z(k0, k1)
        axes = (zf, grid.y, grid.x)
        hu = np.broadcast_to(template, (zf.size, ny, nx)).astype(np.float32)
        _paint_below_diaphragm(hu, anatomy, axes)
        side = anatomy.lung_side_grid(axes)
        inlung = side > 0
        _paint_lungs(hu, inlung, anatomy, axes, texture, spec)
        _paint_heart(hu, anatomy, axes, hu_of)
        _paint_ribs_and_sternum(hu, anatomy, axes)
        _paint_discs(hu, anatomy, axes)
        for tube in tubes:
            paint_capsules(hu, axes, tube.points[:-1], tube.points[1:], tube.radii, tube_hu[tube.name], width=width)
        if spec.calcification and "calcifications" in extras:
            c = extras["calcifications"]
            paint_capsules(hu, axes, c, c, np.full(len(c), 1.6 * anatomy.scale + 0.6), 850.0, width=width)
        if spec.nodule and "nodule" in extras:
            centre, radius = extras["nodule"]
            paint_capsules(hu, axes, centre[None], centre[None], np.array([radius]), 30.0, width=width)
        paint_capsules(hu, axes, air_a, air_b, air_r + air_w, 30.0, width=width)
        paint_capsules(hu, axes, air_a, air_b, air_r, -1000.0, width=width)
        lab_f = np.zeros(hu.shape, np.uint8)
        lev_f = np.zeros(hu.shape, np.uint8)
        box, s_v, own = render_capsules(axes, va, vb, vr, pad=width, flat_end=vtip)
        if s_v.size:
            hit = own >= 0
            target = np.zeros(s_v.shape, np.float32)
            target[hit] = vhu[own[hit]]
            if emb is not None:
                clot = hit & (own == emb) & (s_v < -0.35 * vr[emb])
                target[clot] = 35.0
            region = hu[box]
            region += coverage(s_v, width) * (target - region)
            inside = hit & (s_v < 0)
            lab_f[box][inside] = vkind[own[inside]]
            lev_f[box][inside] = vlevel[own[inside]]
        # slice profile: mean / majority over the sub-slices of each acquired slice
        shape4 = (k1 - k0, grid.sub, ny, nx)
        img = hu.reshape(shape4).mean(axis=1) if grid.sub > 1 else hu
        img = _blur_inplane(img)
        if sharp:
            img = _sharpen_inplane(img)
        img += _noise_slices(noise_bank, noise_rng, k1 - k0)
        ct[k0:k1] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
        if grid.sub == 1:
            labels[k0:k1], levels[k0:k1], lungs[k0:k1] = lab_f, lev_f, inlung.astype(np.uint8)
        else:
            labels[k0:k1], levels[k0:k1] = _majority_labels(lab_f.reshape(shape4), lev_f.reshape(shape4))
            lungs[k0:k1] = (inlung.reshape(shape4).mean(axis=1) >= 0.5).astype(np.uint8)
    return Rendered(ct=ct, labels=labels, levels=levels, lungs=lungs)


def _majority_labels(lab: np.ndarray, lev: np.ndarray):
    """(slices, sub, y, x) -> label/level per slice: a vessel label where most sub-slices are vessel."""
    sub = lab.shape[1]
    art = (lab == ARTERY).sum(1)
    vein = (lab == VEIN).sum(1)
    vessel = 2 * (art + vein) >= sub
    label = np.where(vessel, np.where(art >= vein, ARTERY, VEIN), 0).astype(np.uint8)
    match = lab == label[:, None]
    level = np.where(match & (lev > 0), lev, 255).min(axis=1)
    level = np.where(label > 0, level, 0).astype(np.uint8)
    return label, level


def _noise_bank(rng, shape, sd: float) -> np.ndarray:
    """Slices of noise with an in-plane correlation of ~1 px (periodic) and SD ``sd`` HU."""
    white = rng.standard_normal(shape, dtype=np.float32)
    sigma = 0.8
    smooth = ndimage.gaussian_filter(white, sigma=(0, sigma, sigma), mode="wrap")
    # variance of a 2-D Gaussian-filtered white noise: 1 / (4 pi sigma^2)
    return smooth * np.float32(sd * 2.0 * np.sqrt(np.pi) * sigma)


def _white_noise_bank(rng, shape, sd: float) -> np.ndarray:
    """Slices of uncorrelated noise of SD ``sd`` HU (a sharp kernel's noise is close to white)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sd)


def _sharpen_inplane(img: np.ndarray) -> np.ndarray:
    """A lung kernel's edge enhancement: unsharp mask in-plane (gain ``SHARP_GAIN``, Gaussian of
    ``SHARP_SIGMA_PX`` pixels), which leaves flat regions as they are."""
    low = ndimage.gaussian_filter(img, sigma=(0, SHARP_SIGMA_PX, SHARP_SIGMA_PX), mode="nearest")
    return img + np.float32(SHARP_GAIN) * (img - low)


def _noise_slices(bank: np.ndarray, rng, count: int) -> np.ndarray:
    """``count`` noise slices: bank slices picked and shifted (periodically) at random, which is
    much cheaper than fresh noise per slice and shows no visible repetition."""
    out = np.empty((count,) + bank.shape[1:], np.float32)
    picks = rng.integers(0, len(bank), count)
    shifts = rng.integers(0, np.array(bank.shape[1:]), size=(count, 2))
    flips = rng.integers(0, 2, size=(count, 2))
    for i in range(count):
        s = np.roll(bank[picks[i]], tuple(shifts[i]), axis=(0, 1))
        if flips[i, 0]:
            s = s[::-1]
        if flips[i, 1]:
            s = s[:, ::-1]
        out[i] = s
    return out


def _blur_inplane(img: np.ndarray, w: float = 0.16) -> np.ndarray:
    """Scanner point-spread function: separable 3-tap kernel (w, 1-2w, w) along y and x
    (about a Gaussian of sigma 0.55 px)."""
    out = img * np.float32(1.0 - 2.0 * w)
    out[:, 1:, :] += np.float32(w) * img[:, :-1, :]
    out[:, :-1, :] += np.float32(w) * img[:, 1:, :]
    out[:, 0, :] += np.float32(w) * img[:, 0, :]
    out[:, -1, :] += np.float32(w) * img[:, -1, :]
    tmp = out
    out = tmp * np.float32(1.0 - 2.0 * w)
    out[:, :, 1:] += np.float32(w) * tmp[:, :, :-1]
    out[:, :, :-1] += np.float32(w) * tmp[:, :, 1:]
    out[:, :, 0] += np.float32(w) * tmp[:, :, 0]
    out[:, :, -1] += np.float32(w) * tmp[:, :, -1]
    return out


def _body_template(anatomy: Anatomy, grid: Grid) -> np.ndarray:
    """Slice-independent tissues (y, x): air, fat, muscle, mediastinal fat, spine."""
    s = anatomy.scale
    y = grid.y[:, None].astype(np.float32)
    x = grid.x[None, :].astype(np.float32)
    cy, ay, ax = anatomy.body_axes
    p = 2.4

    def superellipse(ax_, ay_):
        return (np.abs(x) / ax_) ** p + (np.abs(y - cy) / ay_) ** p < 1.0

    hu = np.full(np.broadcast_shapes(y.shape, x.shape), -1000.0, np.float32)
    body = superellipse(ax, ay)
    hu[body] = -100.0
    fat = anatomy.fat_mm
    hu[superellipse(ax - fat, ay - fat)] = 45.0
    ccy, cay, cax = anatomy.cavity_axes
    cavity = (x / cax) ** 2 + ((y - ccy) / cay) ** 2 < 1.0
    hu[cavity] = -85.0
    # paraspinal muscles and the spine
    hu[((x / (62 * s)) ** 2 + ((y - 112 * s) / (34 * s)) ** 2 < 1.0) & body] = 50.0
    r_body = 20.0 * s
    d_body = np.sqrt(x**2 + (y - 72 * s) ** 2)
    hu[d_body < r_body] = 230.0
    hu[(d_body < r_body) & (d_body > r_body - 2.2 * s - 0.6)] = 700.0
    d_canal = np.sqrt(x**2 + (y - 101 * s) ** 2)
    hu[(d_canal < 14 * s) & (d_canal > 8.5 * s) & (y > 92 * s)] = 600.0
    hu[d_canal <= 8.5 * s] = 15.0
    hu[(np.abs(x) < 4 * s) & (y > 112 * s) & (y < 134 * s) & body] = 550.0
    return hu


def _paint_below_diaphragm(hu, anatomy: Anatomy, axes) -> None:
    z, y, x = axes
    ccy, cay, cax = anatomy.cavity_axes
    yy, xx = y[:, None], x[None, :]
    cavity = (xx / cax) ** 2 + ((yy - ccy) / cay) ** 2 < 1.0
    dia = anatomy.diaphragm_z(yy, xx)
    organ = np.where(xx < 0, 58.0, 42.0).astype(np.float32)
    s = anatomy.scale
    stomach_c = np.array([-150.0 * s, -5.0 * s, 60.0 * s])
    for k, zk in enumerate(z):
        below = cavity & (zk < dia - 3.0 * s)
        if not below.any():
            continue
        hu[k][below] = np.broadcast_to(organ, below.shape)[below]
        gas = ((zk - stomach_c[0]) / (14 * s)) ** 2 + ((yy - stomach_c[1]) / (30 * s)) ** 2 + ((xx - stomach_c[2]) / (30 * s)) ** 2 < 1.0
        gas &= below & (zk > stomach_c[0])
        hu[k][gas] = -1000.0


def _lung_texture(spec: PhantomSpec, anatomy: Anatomy, grid: Grid):
    """Coarse correlated noise over the scan (SD 1), sampled later inside the lungs."""
    rng = stream(spec.seed, "texture")
    cell = 2.0 * anatomy.scale / (1.0 if spec.size == "full" else 0.5)
    lo = np.array([grid.z[0] - grid.thickness, grid.y[0], grid.x[0]])
    hi = np.array([grid.z[-1] + grid.thickness, grid.y[-1], grid.x[-1]])
    shape = np.ceil((hi - lo) / cell).astype(int) + 2
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), 1.0, mode="wrap")
    field /= max(float(field.std()), 1e-6)
    return lo, cell, field


def _paint_lungs(hu, inlung, anatomy: Anatomy, axes, texture, spec: PhantomSpec) -> None:
    if not inlung.any():
        return
    z, y, x = axes
    kk, jj, ii = np.nonzero(inlung)
    lo, cell, field = texture
    coords = np.stack([(z[kk] - lo[0]) / cell, (y[jj] - lo[1]) / cell, (x[ii] - lo[2]) / cell])
    tex = ndimage.map_coordinates(field, coords, order=1, mode="nearest")
    base = -880.0 if spec.copd else -850.0
    gravity = 30.0 * (y[jj] - anatomy.body_axes[0]) / (100.0 * anatomy.scale)
    value = base + gravity + 18.0 * tex
    if spec.copd:
        value = np.where(tex > 1.3, -960.0 + 10.0 * tex, value)  # emphysematous clusters
    hu[kk, jj, ii] = value


def _paint_heart(hu, anatomy: Anatomy, axes, hu_of: Intensities) -> None:
    """Pericardial fat, myocardium, right and left chambers with the septum, left atrium."""
    z, y, x = axes
    cz, cy, cx = anatomy.heart_centre
    reach = anatomy.heart_axes.max() + 8.0 * anatomy.scale
    sel = np.flatnonzero(np.abs(z - cz) < reach)
    if len(sel) == 0:
        return
    j0, j1 = np.searchsorted(y, cy - reach), np.searchsorted(y, cy + reach)
    i0, i1 = np.searchsorted(x, cx - reach), np.searchsorted(x, cx + reach)
    s = anatomy.scale
    zz = z[sel][:, None, None].astype(np.float32)
    yy, xx = y[None, j0:j1, None].astype(np.float32), x[None, None, i0:i1].astype(np.float32)
    phi = anatomy.heart_phi(zz, yy, xx)
    _, la, ll = anatomy._heart_local(zz, yy, xx)
    out = hu[sel, j0:j1, i0:i1]
    out[(phi < 6.0 * s) & (phi >= 0)] = -90.0  # pericardial fat
    out[phi < 0] = 45.0  # myocardium
    inner = phi < -9.0 * s * 0.9
    split = la + 0.25 * ll
    septum = np.abs(split) < 4.5 * s
    right = split < 0  # anterior-right half: right atrium and ventricle
    blood = inner & ~septum
    out[blood & right] = hu_of.right_heart
    out[blood & ~right] = hu_of.left_heart
    la_c = anatomy.la_centre()
    atrium = ((zz - la_c[0]) / (20 * s)) ** 2 + ((yy - la_c[1]) / (15 * s)) ** 2 + ((xx - la_c[2]) / (30 * s)) ** 2 < 1.0
    out[atrium] = hu_of.left_heart
    hu[sel, j0:j1, i0:i1] = out


def _paint_discs(hu, anatomy: Anatomy, axes) -> None:
    """Intervertebral discs (80 HU, 5 mm) every 26 mm in the vertebral-body column."""
    z, y, x = axes
    s = anatomy.scale
    period, thick = 26.0 * s, 5.0 * s
    in_disc = np.flatnonzero(np.mod(z - 7.0 * s, period) < thick)
    if len(in_disc) == 0:
        return
    disc = (x[None, :] ** 2 + (y[:, None] - 72 * s) ** 2) < (20.0 * s) ** 2
    for k in in_disc:
        hu[k][disc] = 80.0


def _paint_ribs_and_sternum(hu, anatomy: Anatomy, axes) -> None:
    z, y, x = axes
    s = anatomy.scale
    ccy, cay, cax = anatomy.cavity_axes
    ax_r, ay_r = cax + 8 * s, cay + 8 * s
    yy, xx = y[:, None].astype(np.float32), x[None, :].astype(np.float32)
    rho = np.sqrt((xx / ax_r) ** 2 + ((yy - ccy) / ay_r) ** 2)
    phi = np.arctan2(np.abs(xx) / ax_r, (yy - ccy) / ay_r)  # 0 posterior, pi anterior
    local_r = np.sqrt((ax_r * np.sin(phi)) ** 2 + (ay_r * np.cos(phi)) ** 2)
    d_rad = (rho - 1.0) * local_r
    ring = np.abs(d_rad) < 6.0 * s
    jj, ii = np.nonzero(ring)
    d_ring, phi_ring = d_rad[jj, ii], phi[jj, ii]
    rib_top = 118.0 * s
    for k, zk in enumerate(z):
        vals = np.full(len(jj), np.nan, np.float32)
        for rib in range(12):
            z_head = rib_top - rib * 23.0 * s
            if zk > z_head + 8 * s or zk < z_head - 75 * s:
                continue
            zc = z_head - 55.0 * s * (phi_ring / np.pi) ** 1.2
            e = (d_ring / (4.5 * s)) ** 2 + ((zk - zc) / (6.0 * s)) ** 2
            span = (phi_ring > 0.3) & (phi_ring < 2.35 - 0.05 * rib)
            bone = (e < 1.0) & span
            vals[bone] = np.where(e[bone] > 0.45, 780.0, 260.0)
            cartilage = (e < 1.0) & (phi_ring >= 2.35 - 0.05 * rib) & (phi_ring < 2.9)
            vals[cartilage & np.isnan(vals)] = 120.0
        hit = ~np.isnan(vals)
        if hit.any():
            hu[k, jj[hit], ii[hit]] = vals[hit]
        if -120.0 * s < zk < 90.0 * s:  # sternum
            st = ((xx / (15 * s)) ** 2 + ((yy - (ccy - cay - 7 * s)) / (6 * s)) ** 2) < 1.0
            hu[k][st] = 400.0
