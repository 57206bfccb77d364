"""The synthetic phantom: geometry, intensities, ground truth, Murray's law, protocols."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from hipas_core.errors import InvalidInputError
from hipas_core.phantom import PhantomSpec, generate_phantom
from hipas_core.phantom.vessels import ARTERY, VEIN

SEED = 11
COMMON = dict(slice_thickness_mm=1.0, inplane_spacing_mm=0.8, dose=5.0, embolism=0, nodule=0, kernel="smooth")


@pytest.fixture(scope="module")
def pair():
    """NCCT and CTPA phantoms of one seed (thin slices, fixed spacing)."""
    ncct = generate_phantom(PhantomSpec.from_seed(SEED, size="small", protocol="ncct", **COMMON))
    ctpa = generate_phantom(PhantomSpec.from_seed(SEED, size="small", protocol="ctpa", **COMMON))
    return ncct, ctpa


def arrays(ph):
    return tuple(sitk.GetArrayFromImage(getattr(ph, n)) for n in ("ct", "labels", "levels", "lungs"))


def test_grids_types_and_size(pair):
    ncct, ctpa = pair
    for ph in pair:
        ct, labels, levels, lungs = arrays(ph)
        assert ct.dtype == np.int16 and labels.dtype == np.uint8 and levels.dtype == np.uint8
        assert lungs.dtype == np.uint8
        assert ct.shape == labels.shape == levels.shape == lungs.shape
        assert max(ct.shape) <= 200 and ct.shape[1:] == (192, 192)
        for name in ("labels", "levels", "lungs"):
            image = getattr(ph, name)
            assert image.GetSpacing() == ph.ct.GetSpacing()
            assert image.GetOrigin() == ph.ct.GetOrigin()
        assert ph.ct.GetSpacing() == pytest.approx((0.8, 0.8, 1.0))
        assert set(np.unique(labels)) == {0, 1, 2}
        assert set(np.unique(lungs)) == {0, 1}
    # the pair shares the anatomy exactly
    assert np.array_equal(arrays(ncct)[1], arrays(ctpa)[1])
    assert np.array_equal(arrays(ncct)[3], arrays(ctpa)[3])


def _interior(mask, spacing_mm=0.8):
    # voxels at least ~1 mm inside a vessel: the blood value without partial volume
    return ndimage.binary_erosion(mask, iterations=2)


def test_intensities_ncct_and_ctpa(pair):
    ncct, ctpa = pair
    ct, labels, _, lungs = arrays(ncct)
    parenchyma = ct[(lungs == 1) & ~ndimage.binary_dilation(labels > 0, iterations=2)]
    assert -880 < np.median(parenchyma) < -820
    art_in, vein_in = _interior(labels == 1), _interior(labels == 2)
    assert art_in.sum() > 50 and vein_in.sum() > 50
    assert abs(np.median(ct[art_in]) - 40) < 20
    assert abs(np.median(ct[vein_in]) - 40) < 20
    ct2 = arrays(ctpa)[0]
    assert np.median(ct2[art_in]) > 220
    assert np.median(ct2[art_in]) > np.median(ct2[vein_in]) + 50
    # the noise differs with dose: SD 22 HU at 5 mGy and 1 mm (inside the blood pool, where the
    # anatomy is flat), scaling with 1/sqrt(dose); the same seed keeps the anatomy and mean values
    assert np.std(ct[art_in]) == pytest.approx(22.0, rel=0.15)
    quarter_dose = generate_phantom(PhantomSpec.from_seed(SEED, size="small", protocol="ncct", **{**COMMON, "dose": 1.25}))
    ct_low = arrays(quarter_dose)[0]
    assert np.std(ct_low[art_in]) / np.std(ct[art_in]) == pytest.approx(2.0, rel=0.1)
    assert abs(np.median(ct_low[art_in]) - np.median(ct[art_in])) < 5


def _lag1_correlation(values: np.ndarray) -> float:
    """In-plane correlation of neighbouring voxels along x of the rows of (N, X) samples."""
    centred = values - values.mean(axis=1, keepdims=True)
    return float((centred[:, 1:] * centred[:, :-1]).mean() / centred.var())


def test_sharp_kernel_gives_white_noise_and_edge_overshoot(pair):
    ncct = pair[0]
    sharp = generate_phantom(PhantomSpec.from_seed(SEED, size="small", protocol="ncct", **{**COMMON, "kernel": "sharp"}))
    ct, labels, _, lungs = arrays(ncct)
    ct_sharp, labels_sharp, _, lungs_sharp = arrays(sharp)
    # the kernel changes how the scan is reconstructed, never the anatomy or its truth
    assert np.array_equal(labels, labels_sharp) and np.array_equal(lungs, lungs_sharp)
    assert sharp.truth["phantom_version"] == ncct.truth["phantom_version"] >= 2
    assert sharp.truth["spec"]["kernel"] == "sharp" and ncct.truth["spec"]["kernel"] == "smooth"
    # noise in the flat blood pool: SHARP_NOISE_FACTOR x the SD, and close to white
    pool = _interior(labels == ARTERY)
    assert np.std(ct_sharp[pool]) / np.std(ct[pool]) == pytest.approx(3.5, rel=0.15)
    z, y, x = np.nonzero(ndimage.binary_erosion(pool, structure=np.ones((1, 1, 9), bool)))
    rows = np.stack([ct_sharp[z, y, x + d] for d in range(-4, 5)], axis=1).astype(np.float64)
    rows_smooth = np.stack([ct[z, y, x + d] for d in range(-4, 5)], axis=1).astype(np.float64)
    smooth_correlation, sharp_correlation = _lag1_correlation(rows_smooth), _lag1_correlation(rows)
    assert smooth_correlation > 0.35 and sharp_correlation < 0.15, (smooth_correlation, sharp_correlation)
    # edge overshoot: the parenchyma in a thin shell round the vessels is darker with the lung
    # kernel (the mean over many voxels, so the noise averages out)
    shell = ndimage.binary_dilation(labels > 0, iterations=1) & ~(labels > 0) & (lungs > 0)
    assert ct_sharp[shell].mean() < ct[shell].mean() - 15


def test_kernel_is_drawn_from_its_own_stream():
    for seed in range(1, 40):
        drawn = PhantomSpec.from_seed(seed)
        other = PhantomSpec.from_seed(seed, kernel="sharp" if drawn.kernel == "smooth" else "smooth")
        assert {**drawn.as_dict(), "kernel": None} == {**other.as_dict(), "kernel": None}
    kernels = [PhantomSpec.from_seed(seed).kernel for seed in range(1, 201)]
    assert 0.2 < kernels.count("sharp") / len(kernels) < 0.4
    with pytest.raises(InvalidInputError, match="kernel"):
        PhantomSpec.from_seed(1, kernel="B70f")


def test_trees_interleaved_and_connected(pair):
    _, labels, _, lungs = arrays(pair[0])
    for value in (1, 2):
        _, count = ndimage.label(labels == value, structure=np.ones((3, 3, 3)))
        assert count == 1, f"label {value} split into {count} components"
    half = labels.shape[2] // 2
    for side in (slice(0, half), slice(half, None)):
        sub_lab, sub_lung = labels[:, :, side], lungs[:, :, side]
        assert ((sub_lab == 1) & (sub_lung == 1)).sum() > 500
        assert ((sub_lab == 2) & (sub_lung == 1)).sum() > 500
    # arteries and veins come within 1-2 voxels of each other in many places
    near = ndimage.binary_dilation(labels == 1, iterations=2) & (labels == 2)
    assert near.sum() > 50


def test_truth_matches_maps(pair):
    ph = pair[0]
    _, labels, levels, lungs = arrays(ph)
    truth = ph.truth
    voxel_ml = float(np.prod(ph.ct.GetSpacing())) / 1000
    for name, value in (("artery", 1), ("vein", 2)):
        t = truth[name]
        assert t["volume_ml"] == pytest.approx((labels == value).sum() * voxel_ml, rel=1e-3)
        assert t["intrapulmonary_volume_ml"] == pytest.approx(((labels == value) & (lungs > 0)).sum() * voxel_ml, rel=1e-3)
        # the rasterized volume agrees with the graph's own capsule volume (overlaps at joints)
        assert t["volume_ml"] == pytest.approx(t["graph_volume_ml"], rel=0.2)
        assert 0 < t["intrapulmonary_centerline_length_mm"] < t["centerline_length_mm"]
        assert 0 < t["intrapulmonary_bifurcations"] <= t["bifurcations"]
        assert t["endpoints"] >= t["bifurcations"] * 0.9
        tree = ph.trees[ARTERY if name == "artery" else VEIN]
        assert t["bifurcations"] == int((tree.n_children >= 2).sum())
        a, b, _, _ = tree.edges()
        assert t["centerline_length_mm"] == pytest.approx(np.linalg.norm(b - a, axis=1).sum(), rel=1e-3)
    assert truth["lung_total_ml"] == pytest.approx((lungs > 0).sum() * voxel_ml, rel=1e-3)
    vessels_in_lung = ((labels > 0) & (lungs > 0)).sum() * voxel_ml
    assert truth["lung_volume_ml"] == pytest.approx(truth["lung_total_ml"] - vessels_in_lung, rel=1e-3)
    for key in ("seed", "size", "protocol", "slice_thickness_mm", "inplane_spacing_mm", "dose"):
        assert key in truth["spec"]
    for key in ("sex", "age", "height_cm", "copd", "pah", "cardiomegaly"):
        assert key in truth["demographics"]


def test_levels_inside_vessels_only(pair):
    _, labels, levels, _ = arrays(pair[0])
    assert set(np.unique(levels[labels > 0])) == {1, 2, 3, 4}
    assert not levels[labels == 0].any()
    assert (levels[labels > 0] > 0).all()


def test_murray_law_and_visible_radii(pair):
    ph = pair[0]
    for tree in ph.trees.values():
        nc = tree.n_children
        bif = np.flatnonzero((nc >= 2) & (tree.parent >= 0))
        assert len(bif) > 50
        for node in bif:
            kids = np.flatnonzero(tree.parent == node)
            assert tree.radius[node] ** 3 == pytest.approx((tree.radius[kids] ** 3).sum(), rel=1e-9)
        _, _, r, _ = tree.edges()
        assert r.min() >= 0.6
        # radius decreases from the trunk to the leaves
        assert tree.radius[tree.parent < 0].max() > 4 * r.min()


def test_generation_counts_bifurcations(pair):
    tree = pair[0].trees[ARTERY]
    nc = tree.n_children
    for i in np.flatnonzero(tree.parent >= 0)[::7]:
        p = tree.parent[i]
        if tree.generation[p] >= 1:
            assert tree.generation[i] == tree.generation[p] + (1 if nc[p] >= 2 else 0)


def test_slice_thickness_changes_z_spacing():
    spec = PhantomSpec.from_seed(5, size="small", slice_thickness_mm=2.5, inplane_spacing_mm=0.8)
    ph = generate_phantom(spec)
    assert ph.ct.GetSpacing()[2] == pytest.approx(2.5)
    ct, labels, levels, lungs = arrays(ph)
    assert ct.shape[0] < 80
    assert labels.shape == ct.shape and (labels == 1).any() and (labels == 2).any()
    assert ph.truth["spec"]["slice_thickness_mm"] == 2.5


def test_spec_from_seed_and_overrides():
    a = PhantomSpec.from_seed(3)
    b = PhantomSpec.from_seed(3, sex="F" if a.sex == "M" else "M")
    assert a.age == b.age and a.slice_thickness_mm == b.slice_thickness_mm and a.sex != b.sex
    assert PhantomSpec.from_seed(3, protocol="ctpa").inplane_spacing_mm == a.inplane_spacing_mm
    with pytest.raises(InvalidInputError):
        PhantomSpec.from_seed(3, colour="blue")
    with pytest.raises(InvalidInputError):
        PhantomSpec.from_seed(3, copd=2)
    with pytest.raises(InvalidInputError):
        PhantomSpec.from_seed(3, slice_thickness_mm=7.0)


def test_demographics_drive_lung_size_and_abundance():
    from hipas_core.phantom.anatomy import Anatomy
    from hipas_core.phantom.vessels import grow_vessel_trees

    big = PhantomSpec.from_seed(2, sex="M", height_cm=188, age=45)
    small = PhantomSpec.from_seed(2, sex="F", height_cm=152, age=45)
    a_big, a_small = Anatomy.from_spec(big), Anatomy.from_spec(small)
    assert a_big.target_lung_ml > 1.3 * a_small.target_lung_ml
    leaves = {}
    for name, spec, anatomy in (("big", big, a_big), ("small", small, a_small)):
        tree = grow_vessel_trees(anatomy, spec)[ARTERY]
        leaves[name] = int((tree.n_children == 0).sum())
    assert leaves["big"] > leaves["small"]


def test_lung_volume_follows_the_demographic_target(pair):
    from hipas_core.phantom.anatomy import Anatomy

    ph = pair[0]
    target = Anatomy.from_spec(ph.spec).target_lung_ml
    assert ph.truth["lung_total_ml"] == pytest.approx(target, rel=0.12)


def test_diseases_prune_and_enlarge():
    from hipas_core.phantom.anatomy import Anatomy
    from hipas_core.phantom.vessels import grow_vessel_trees

    base = PhantomSpec.from_seed(8, sex="M", height_cm=172, age=50, pah=0, copd=0, cardiomegaly=0)
    sick = PhantomSpec.from_seed(8, sex="M", height_cm=172, age=50, pah=1, copd=1, cardiomegaly=1)
    leaves, trunk_radius = {}, {}
    for name, spec in (("base", base), ("sick", sick)):
        trees = grow_vessel_trees(Anatomy.from_spec(spec), spec)
        leaves[name] = {k: int((t.n_children == 0).sum()) for k, t in trees.items()}
        art = trees[ARTERY]
        trunk_radius[name] = art.radius[art.parent < 0].max()
        if name == "sick":  # PAH: dilated trunk; Murray's law still holds at the trunk bifurcation
            trunk_bif = np.flatnonzero((art.n_children >= 2) & (art.generation == 0))
            assert len(trunk_bif) == 1
            kids = np.flatnonzero(art.parent == trunk_bif[0])
            assert art.radius[trunk_bif[0]] ** 3 == pytest.approx((art.radius[kids] ** 3).sum(), rel=1e-9)
    assert trunk_radius["sick"] > 1.25 * trunk_radius["base"]  # 35 % wider (measured 1.42x here)
    assert leaves["sick"][ARTERY] < leaves["base"][ARTERY]
    assert leaves["sick"][VEIN] < leaves["base"][VEIN]
    assert (Anatomy.from_spec(sick).heart_axes > Anatomy.from_spec(base).heart_axes).all()


def test_generation_emits_no_warnings_or_output(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_phantom(PhantomSpec.from_seed(9, size="small", protocol="ctpa", embolism=1, nodule=1,
                                               calcification=1, slice_thickness_mm=2.0))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
