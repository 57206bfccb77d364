"""The chest of one phantom as analytic shapes in world millimetres.

World frame: LPS like the images (x to the patient's left, y to the posterior, z to the head),
origin at the body axis at the height of the carina. Arrays and point lists are (z, y, x).
All lengths below are for a reference adult (linear scale 1) and are multiplied by
``Anatomy.scale``.

Demographic effect sizes (documented here, used by ``Anatomy.from_spec``):
- lung volume and the chest's linear scale: ``body_size`` (predicted TLC from sex, height, age
  and COPD; the whole chest scales with the cube root of it).
- cardiomegaly: heart 22 % wider and deeper, 10 % taller (cardiothoracic ratio > 0.5).
- PAH: pulmonary trunk and main pulmonary arteries 35 % wider (see vessels.py for pruning).
- subcutaneous fat: 12 mm men, 18 mm women, + 0.1 mm per year of age above 40.
``size="small"`` multiplies every length by ``body_size.SMALL_SCALE`` (a reduced chest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hipas_core.phantom.body_size import (
    BODY_HALF_WIDTH_MM,
    BODY_WIDTH_JITTER,
    SMALL_SCALE,
    chest_scale,
    predicted_lung_ml,
)
from hipas_core.phantom.rasterize import point_segment_distance, render_capsules
from hipas_core.phantom.spec import PhantomSpec, stream


@dataclass(frozen=True)
class Tube:
    """A polyline tube (capsules between consecutive points): name, points (n, 3) mm, radii (n-1,)."""

    name: str
    points: np.ndarray
    radii: np.ndarray


@dataclass
class Anatomy:
    """Analytic chest of one phantom; every method takes world-mm coordinates."""

    scale: float
    sex: str
    age: float
    cardiomegaly: bool
    pah: bool
    copd: bool
    calcification: bool
    nodule: bool
    target_lung_ml: float
    jitter: dict = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: PhantomSpec) -> Anatomy:
        target = predicted_lung_ml(spec.sex, float(spec.height_cm), float(spec.age), int(spec.copd))
        size_scale = SMALL_SCALE if spec.size == "small" else 1.0
        scale = chest_scale(spec.size, target)
        rng = stream(spec.seed, "anatomy")
        jitter = {
            "body_w": rng.uniform(*BODY_WIDTH_JITTER),
            "body_ap": rng.uniform(0.93, 1.07),
            "heart_x": rng.uniform(-6, 6),
            "heart_z": rng.uniform(-6, 6),
            "dome_r": rng.uniform(-8, 8),
            "dome_l": rng.uniform(-8, 8),
            "fat": rng.uniform(-4, 6),
            "nodule_u": rng.uniform(0, 1, 3),
            "calc_u": rng.uniform(0, 1, 8),
            "blood_hu": rng.uniform(34, 46),
        }
        return cls(
            scale=scale, sex=spec.sex, age=float(spec.age), cardiomegaly=bool(spec.cardiomegaly),
            pah=bool(spec.pah), copd=bool(spec.copd), calcification=bool(spec.calcification),
            nodule=bool(spec.nodule), target_lung_ml=target * size_scale**3, jitter=jitter,
        )

    # ---- body cross-section (independent of z) --------------------------------------------
    @property
    def body_axes(self) -> tuple[float, float, float]:
        """(centre y, half AP depth, half width) of the skin outline, mm."""
        s = self.scale
        return 5.0 * s, 122.0 * s * self.jitter["body_ap"], BODY_HALF_WIDTH_MM * s * self.jitter["body_w"]

    @property
    def fat_mm(self) -> float:
        base = 12.0 if self.sex == "M" else 18.0
        return (base + 0.1 * max(self.age - 40.0, 0.0) + self.jitter["fat"]) * self.scale

    @property
    def cavity_axes(self) -> tuple[float, float, float]:
        """(centre y, half AP depth, half width) of the thoracic cavity inside the ribs, mm."""
        s = self.scale
        return 8.0 * s, 96.0 * s, 138.0 * s

    # ---- lungs ------------------------------------------------------------------------------
    def lung_side(self, z, y, x) -> np.ndarray:
        """0 outside the lungs, 1 right lung (x < 0), 2 left lung; broadcasting arrays in mm
        (analytic shape only; ``lung_side_points``/``lung_side_grid`` also cut out the tubes)."""
        z, y, x = np.broadcast_arrays(np.asarray(z, np.float32), np.asarray(y, np.float32), np.asarray(x, np.float32))
        terms = self._lung_terms(y, x)
        inside = terms["in2d"] & (terms["ell2d"] + self._ell_z(z) < 1.0)
        inside &= terms["u"] > 13.0 * self.scale + terms["bulge_y"] * self._bulge_z(z)
        inside &= z > terms["dia"]
        inside &= self.heart_phi(z, y, x, margin=4.0 * self.scale) > 0
        return np.where(inside, terms["side"], 0).astype(np.uint8)

    def _lung_terms(self, y, x) -> dict:
        """The parts of the lung shape that depend on (y, x) only (broadcasting arrays)."""
        s = self.scale
        u = np.abs(x)
        cy, ay, ax = self.cavity_axes
        in2d = ((x / ax) ** 2 + ((y - cy) / ay) ** 2) < 1.0
        # spine and descending aorta with a margin
        in2d = in2d & ((x / (30 * s)) ** 2 + ((y - 72 * s) / (32 * s)) ** 2 > 1.0)
        in2d = in2d & (((x - 28 * s) / (19 * s)) ** 2 + ((y - 48 * s) / (19 * s)) ** 2 > 1.0)
        # each lung: an ellipsoid (rounded apex) cut by the cavity, mediastinum and diaphragm
        ell2d = ((u - 78 * s) / (84 * s)) ** 2 + ((y - 12 * s) / (104 * s)) ** 2
        # mediastinum: narrow in front, wide at the hilum (vessels and bronchi enter there)
        bulge_y = 40.0 * s * np.exp(-(((y - 8 * s) / (42 * s)) ** 2))
        return {"u": u, "in2d": in2d, "ell2d": ell2d, "bulge_y": bulge_y, "dia": self.diaphragm_z(y, x),
                "side": np.where(x < 0, 1, 2).astype(np.uint8)}

    def _ell_z(self, z):
        s = self.scale
        return ((z + 45 * s) / (150 * s)) ** 2

    def _bulge_z(self, z):
        s = self.scale
        return np.exp(-(((z + 22 * s) / (38 * s)) ** 2))

    def lung_side_axes(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Analytic lung side (uint8 0/1/2) on the grid of ascending axes (z, y, x) mm, slice by slice."""
        z, y, x = (np.asarray(v, np.float32) for v in axes)
        terms = self._lung_terms(y[:, None], x[None, :])
        out = np.zeros((z.size, y.size, x.size), np.uint8)
        hz = self.heart_centre[0]
        reach = self.heart_axes.max() + 4.0 * self.scale
        for k, zk in enumerate(z):
            ell_z = self._ell_z(float(zk))
            if ell_z >= 1.0:
                continue
            inside = terms["in2d"] & (terms["ell2d"] < 1.0 - ell_z)
            inside &= terms["u"] > 13.0 * self.scale + terms["bulge_y"] * self._bulge_z(float(zk))
            inside &= terms["dia"] < zk
            if abs(zk - hz) < reach and inside.any():
                jj, ii = np.nonzero(inside)
                heart = self.heart_phi(np.float32(zk), y[jj], x[ii], margin=4.0 * self.scale) <= 0
                inside[jj[heart], ii[heart]] = False
            out[k] = np.where(inside, terms["side"], 0)
        return out

    def diaphragm_z(self, y, x) -> np.ndarray:
        s = self.scale
        u = np.abs(x)
        dome = np.where(x < 0, -128.0 * s + self.jitter["dome_r"] * s, -142.0 * s + self.jitter["dome_l"] * s)
        return dome - 55 * s * ((u - 70 * s) / (85 * s)) ** 2 - 65 * s * ((y + 5 * s) / (95 * s)) ** 2

    def lung_z_range(self) -> tuple[float, float]:
        """Lowest and highest z (mm) any lung voxel can have."""
        s = self.scale
        return -195.0 * s, 105.0 * s

    def lung_bounds(self) -> np.ndarray:
        """[[zmin, ymin, xmin], [zmax, ymax, xmax]] enclosing both lungs, mm."""
        z0, z1 = self.lung_z_range()
        cy, ay, ax = self.cavity_axes
        return np.array([[z0, cy - ay, -ax], [z1, cy + ay, ax]])

    # ---- heart ------------------------------------------------------------------------------
    @property
    def heart_centre(self) -> np.ndarray:
        s = self.scale
        return np.array([-88.0 * s + self.jitter["heart_z"] * s, -26.0 * s, 18.0 * s + self.jitter["heart_x"] * s])

    @property
    def heart_axes(self) -> np.ndarray:
        """(z, short, long) semi-axes; the long axis points left-anterior."""
        s = self.scale
        f_xy, f_z = (1.22, 1.10) if self.cardiomegaly else (1.0, 1.0)
        return np.array([52.0 * s * f_z, 50.0 * s * f_xy, 64.0 * s * f_xy])

    def _heart_local(self, z, y, x):
        cz, cy, cx = self.heart_centre
        c, sn = np.cos(np.radians(-30.0)), np.sin(np.radians(-30.0))
        dx, dy = x - cx, y - cy
        along = c * dx - sn * dy  # long axis: to the left and anterior
        across = sn * dx + c * dy
        return z - cz, across, along

    def heart_phi(self, z, y, x, margin: float = 0.0) -> np.ndarray:
        """Approximate signed distance (mm) to the heart surface grown by ``margin``."""
        lz, la, ll = self._heart_local(z, y, x)
        az, aa, al = self.heart_axes + margin
        rho = np.sqrt((lz / az) ** 2 + (la / aa) ** 2 + (ll / al) ** 2)
        return (rho - 1.0) * min(az, aa, al)

    def la_centre(self) -> np.ndarray:
        """Left atrium centre (where the pulmonary veins meet), mm (z, y, x)."""
        s = self.scale
        cz = self.heart_centre[0]
        return np.array([cz + 30.0 * s, 14.0 * s, 6.0 * s])

    # ---- cardinal vessels (paper level 0) and hila ------------------------------------------
    def artery_paths(self) -> dict[str, np.ndarray]:
        """Pulmonary trunk from the right ventricle, and the path of each main pulmonary artery
        from the bifurcation to its hilum (points (n, 3) mm, first point shared)."""
        s = self.scale
        hz = self.heart_centre[0] + 88.0 * s  # follow the heart's height
        trunk = np.array([[-52, -52, 16], [-30, -46, 20], [-14, -30, 16], [-8, -16, 10]], float) * s
        right = np.array([[-8, -16, 10], [-12, -4, -14], [-17, 4, -36], [-22, 8, -52], [-26, 10, -60]], float) * s
        left = np.array([[-8, -16, 10], [0, -4, 30], [-2, 10, 46], [-10, 18, 56], [-16, 20, 62]], float) * s
        for p in (trunk, right, left):
            p[:, 0] += hz - 0.0
        trunk[0, 0] = self.heart_centre[0] + 40.0 * s
        return {"trunk": trunk, "right": right, "left": left}

    def vein_paths(self) -> dict[str, np.ndarray]:
        """Four pulmonary veins from the left-atrium confluence to their hilum points."""
        s = self.scale
        la = self.la_centre()
        hz = self.heart_centre[0] + 88.0 * s
        out = {}
        for name, side in (("right", -1.0), ("left", 1.0)):
            sup = np.array([la, [hz - 46 * s, 8 * s, side * 30 * s + 4 * s], [hz - 40 * s, -4 * s, side * 50 * s],
                            [hz - 38 * s, -8 * s, side * 58 * s]])
            inf = np.array([la, [hz - 66 * s, 22 * s, side * 30 * s + 4 * s], [hz - 72 * s, 26 * s, side * 48 * s],
                            [hz - 76 * s, 26 * s, side * 56 * s]])
            out[f"{name}_superior"] = sup
            out[f"{name}_inferior"] = inf
        return out

    def airway_tubes(self) -> list[Tube]:
        """Trachea and main bronchi (lumen radius); lobar and smaller bronchi follow the arteries."""
        s = self.scale
        trachea = np.array([[220, 20, 0], [60, 20, 0], [0, 22, 0]], float) * s
        right = np.array([[0, 22, 0], [-14, 24, -20], [-26, 24, -38]], float) * s
        left = np.array([[0, 22, 0], [-16, 26, 22], [-30, 28, 42]], float) * s
        return [Tube("trachea", trachea, np.array([9.0, 8.5]) * s),
                Tube("right_main_bronchus", right, np.array([7.0, 6.0]) * s),
                Tube("left_main_bronchus", left, np.array([6.2, 5.5]) * s)]

    def mediastinal_tubes(self) -> list[Tube]:
        """Aorta, superior vena cava and oesophagus (not labelled)."""
        s = self.scale
        hz = self.heart_centre[0] + 88.0 * s
        aorta = np.array([[-70, -22, 6], [-20, -26, 4], [30, -20, 4], [48, 0, 10], [44, 30, 22],
                          [30, 46, 28], [0, 48, 28], [-250, 48, 26]], float) * s
        aorta[:2, 0] += hz
        svc = np.array([[220, -24, -30], [40, -24, -30], [-50, -24, -28]], float) * s
        svc[2, 0] += hz
        oesophagus = np.array([[220, 40, 6], [0, 40, 8], [-250, 36, 14]], float) * s
        return [Tube("aorta", aorta, np.array([15, 15, 15, 14, 13, 12, 12], float) * s),
                Tube("svc", svc, np.array([9, 9], float) * s),
                Tube("oesophagus", oesophagus, np.array([7, 7], float) * s)]

    # ---- lungs with the mediastinal tubes cut out --------------------------------------------
    def exclusion_tubes(self) -> list[Tube]:
        """Tubes no lung voxel may touch (airways to the hila, aorta, SVC, oesophagus)."""
        return self.airway_tubes() + self.mediastinal_tubes()

    @property
    def tube_margin(self) -> float:
        return 4.0 * self.scale

    def lung_side_points(self, points: np.ndarray) -> np.ndarray:
        """Lung side (0 none, 1 right, 2 left) of points (n, 3) mm."""
        points = np.asarray(points, float).reshape(-1, 3)
        side = self.lung_side(points[:, 0], points[:, 1], points[:, 2])
        for tube in self.exclusion_tubes():
            for a, b, r in zip(tube.points[:-1], tube.points[1:], tube.radii, strict=True):
                side[point_segment_distance(points, a, b) < r + self.tube_margin] = 0
        return side

    def lung_side_grid(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Lung side (uint8, 0/1/2) on the grid with ascending voxel-centre axes (z, y, x) mm."""
        side = self.lung_side_axes(axes)
        a, b, r = tube_segments(self.exclusion_tubes())
        box, signed, _ = render_capsules(axes, a, b, r, pad=self.tube_margin)
        if signed.size:
            side[box][signed < self.tube_margin] = 0
        return side


def tube_segments(tubes: list[Tube]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, radius) arrays of all capsules of ``tubes``."""
    if not tubes:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    a = np.concatenate([t.points[:-1] for t in tubes])
    b = np.concatenate([t.points[1:] for t in tubes])
    r = np.concatenate([t.radii for t in tubes])
    return a, b, r
