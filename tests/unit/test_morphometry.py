"""Morphometry on analytic tubes and trees with known lengths, junctions and volumes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

from hipas_core.grid import STANDARD_SPACING
from hipas_core.morphometry import ROW_COLUMNS, MorphometrySettings, measure_trees, morphometry_row
from hipas_core.skeleton import branches, endpoints, junctions, prune_spurs, skeletonize

SP = STANDARD_SPACING


def rasterize(segments, shape, spacing=SP):
    """Union of capsules: ``segments`` = [(p0_mm, p1_mm, radius_mm)] in (z, y, x) mm."""
    mask = np.zeros(shape, bool)
    sp = np.asarray(spacing, float)
    for p0, p1, r in segments:
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        lo = np.maximum(np.floor((np.minimum(p0, p1) - r) / sp).astype(int) - 1, 0)
        hi = np.minimum(np.ceil((np.maximum(p0, p1) + r) / sp).astype(int) + 2, shape)
        axes = [np.arange(a, b) * s for a, b, s in zip(lo, hi, sp, strict=True)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
        d = p1 - p0
        t = np.clip(((pts - p0) @ d) / max(d @ d, 1e-12), 0, 1)
        dist = np.linalg.norm(pts - (p0 + t[..., None] * d), axis=-1)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= dist <= r
    return mask


def binary_tree(depth, *, seed=0, root=(5.0, 52.0, 52.0), length=25.0, radius=2.5):
    rng = np.random.default_rng(seed)
    segments = []

    def grow(p, d, length, r, k):
        q = p + d * length
        segments.append((p, q, r))
        if k == 0:
            return
        side = np.cross(d, rng.normal(size=3))
        side /= np.linalg.norm(side)
        for sign in (1, -1):
            child = np.cos(0.6) * d + sign * np.sin(0.6) * side
            grow(q, child / np.linalg.norm(child), 0.8 * length, 0.8 * r, k - 1)

    direction = np.array([1.0, 0.1, 0.05])
    grow(np.asarray(root), direction / np.linalg.norm(direction), length, radius, depth)
    return segments


def length_of(mask, spacing=SP, **kwargs):
    graph = prune_spurs(skeletonize(mask, spacing=spacing))  # as the pipeline does
    return sum(b.length_mm for b in branches(graph, **kwargs)), graph


@pytest.mark.parametrize(
    ("p0", "p1", "radius"),
    [
        ((10, 40, 40), (90, 40, 40), 1.0),  # along z
        ((50, 40, 8), (50, 40, 80), 2.0),  # along x
        ((10, 10, 10), (90, 70, 70), 1.0),  # oblique (stair steps)
        ((10, 15, 70), (85, 65, 12), 2.5),  # oblique, thick
    ],
)
def test_straight_tube_length_within_3_percent(p0, p1, radius):
    true = float(np.linalg.norm(np.subtract(p1, p0)))
    measured, graph = length_of(rasterize([(p0, p1, radius)], (100, 120, 130)))
    assert len(endpoints(graph)) == 2
    assert abs(measured - true) / true < 0.03


def test_raw_voxel_path_overestimates_oblique_tube_and_smoothing_corrects_it():
    p0, p1 = (10, 10, 10), (90, 70, 70)
    true = float(np.linalg.norm(np.subtract(p1, p0)))
    mask = rasterize([(p0, p1, 1.5)], (100, 120, 130))
    raw, _ = length_of(mask, smoothing_mm=0.0)
    smooth, _ = length_of(mask)
    assert raw / true - 1 > 0.03
    assert abs(smooth / true - 1) < 0.02


@pytest.mark.parametrize(("bend_radius", "tube_radius"), [(30.0, 1.0), (15.0, 1.5)])
def test_curved_tube_length_within_3_percent(bend_radius, tube_radius):
    theta = np.linspace(0, np.pi, 200)
    points = np.stack(
        [
            50 + 0.5 * bend_radius * np.sin(theta),
            50 + bend_radius * np.cos(theta),
            50 + bend_radius * np.sin(theta),
        ],
        -1,
    )
    true = float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())
    mask = rasterize(
        [(points[i], points[i + 1], tube_radius) for i in range(len(points) - 1)], (100, 150, 150)
    )
    measured, _ = length_of(mask)
    assert abs(measured - true) / true < 0.03


def test_y_bifurcation_counts_one_junction_three_endpoints():
    fork = np.array([50.0, 40.0, 40.0])
    segments = [((10, 40, 40), fork, 2.0), (fork, (85, 60, 60), 1.5), (fork, (85, 20, 22), 1.5)]
    graph = skeletonize(rasterize(segments, (100, 110, 110)), spacing=SP)
    found = junctions(graph, branches(graph))
    assert len(found) == 1
    assert found[0].n_branches == 3
    assert np.linalg.norm(found[0].position_mm - fork) < 4.0
    assert len(endpoints(graph)) == 3


@pytest.mark.parametrize(("depth", "seed"), [(2, 0), (3, 1), (4, 0)])
def test_binary_tree_junctions_exact_and_length_close(depth, seed):
    segments = binary_tree(depth, seed=seed)
    mask = rasterize(segments, (130, 170, 170))
    graph = skeletonize(mask, spacing=SP)
    chains = branches(graph)
    assert len(junctions(graph, chains)) == 2**depth - 1
    assert len(endpoints(graph)) == 2**depth + 1  # leaves plus the root
    true = sum(float(np.linalg.norm(q - p)) for p, q, _ in segments)
    assert abs(sum(c.length_mm for c in chains) / true - 1) < 0.05


def test_fix_branching_gives_the_same_figures_on_a_tree():
    mask = rasterize(binary_tree(3, seed=2), (130, 170, 170))
    fast = skeletonize(mask, spacing=SP, fix_branching=False)
    slow = skeletonize(mask, spacing=SP, fix_branching=True)
    lengths = [sum(b.length_mm for b in branches(g)) for g in (fast, slow)]
    assert abs(lengths[0] / lengths[1] - 1) < 0.05
    assert len(junctions(fast, branches(fast))) == len(junctions(slow, branches(slow))) == 7


def test_anisotropy_follows_array_axis_order():
    # 1.5 mm slices, 0.5 x 0.8 mm pixels: a 60 mm tube is 40 voxels along z, 75 along x; with
    # the axes swapped the lengths would come out 3x or 0.5x off
    spacing = (1.5, 0.5, 0.8)
    along_z = rasterize([((10, 30, 30), (70, 30, 30), 2.0)], (55, 90, 110), spacing)
    along_x = rasterize([((40, 30, 10), (40, 30, 70), 2.0)], (55, 90, 110), spacing)
    for mask in (along_z, along_x):
        measured, graph = length_of(mask, spacing)
        assert abs(measured - 60.0) < 4.0  # coarse 1.5 mm caps; swapped axes would be 20-40 mm off
        assert len(endpoints(graph)) == 2
    _, graph_z = length_of(along_z, spacing)
    extent = graph_z.vertices_mm.max(axis=0) - graph_z.vertices_mm.min(axis=0)
    assert extent[0] > 55 and extent[1] < 4.5 and extent[2] < 4.5  # vertices are (z, y, x) mm


def _phantom_pair():
    """Artery = binary tree, vein = straight tube; lungs = a box holding most of both."""
    shape = (130, 170, 170)
    labels = np.zeros(shape, np.uint8)
    labels[rasterize(binary_tree(3, seed=3), shape)] = 1
    labels[
        rasterize([((20, 150 * SP[1], 20 * SP[2]), (110, 150 * SP[1], 20 * SP[2]), 2.0)], shape)
        & (labels == 0)
    ] = 2
    lungs = np.zeros(shape, np.uint8)
    lungs[30:, 5:165, 5:165] = 1
    return labels, lungs


def test_measure_trees_restricts_to_lungs_and_measures_volumes():
    labels, lungs = _phantom_pair()
    everywhere = np.ones_like(lungs)
    inside = measure_trees(labels, lungs, spacing=SP)
    whole = measure_trees(labels, everywhere, spacing=SP)
    voxel_ml = float(np.prod(SP)) / 1000
    # volume: exact voxel counts
    assert whole["vein"]["volume_ml"] == pytest.approx(np.count_nonzero(labels == 2) * voxel_ml)
    assert inside["vein"]["volume_ml"] == pytest.approx(
        np.count_nonzero((labels == 2) & (lungs > 0)) * voxel_ml
    )
    assert inside["lung_total_ml"] == pytest.approx(np.count_nonzero(lungs) * voxel_ml)
    assert inside["lung_volume_ml"] == pytest.approx(
        np.count_nonzero((lungs > 0) & (labels == 0)) * voxel_ml
    )
    # the vein's axis runs z = 20..110 mm and its rounded ends (radius 2 mm) reach 18..112 mm, where
    # its skeleton ends (tips are not trimmed); the lungs start at z = 30 mm: 82 of 94 mm inside
    assert whole["vein"]["sl_mm"] == pytest.approx(94.0, rel=0.03)
    assert inside["vein"]["sl_mm"] == pytest.approx(82.0, rel=0.03)
    # the artery root segment starts at z = 5 mm: the root end point is outside the lungs
    assert whole["artery"]["endpoints"] == 9 and inside["artery"]["endpoints"] == 8
    assert whole["artery"]["bc"] == inside["artery"]["bc"] == 7
    assert inside["artery"]["sl_mm"] < whole["artery"]["sl_mm"]


def test_sl_vox_counts_distinct_standard_voxels_visited():
    labels = np.zeros((100, 60, 60), np.uint8)
    labels[rasterize([((10, 20, 20), (90, 20, 20), 1.5)], labels.shape)] = 1
    lungs = np.ones_like(labels)
    result = measure_trees(labels, lungs, spacing=SP, return_skeletons=True)
    graph = result["skeletons"]["artery"]
    index = graph.voxel_indices()
    assert result["artery"]["sl_vox"] == len(np.unique(index, axis=0))
    # a straight z tube is one voxel per slice over its skeleton's z extent
    assert result["artery"]["sl_vox"] == index[:, 0].max() - index[:, 0].min() + 1
    assert result["vein"]["sl_vox"] == 0 and result["vein"]["bc"] == 0


def test_non_standard_grid_is_resampled_before_measuring():
    spacing = (2.5, 0.8, 0.8)
    shape = (44, 90, 90)
    labels = np.zeros(shape, np.uint8)
    labels[rasterize([((10, 30, 30), (100, 40, 45), 2.0)], shape, spacing)] = 2
    result = measure_trees(labels, np.ones(shape, np.uint8), spacing=spacing)
    true = float(np.linalg.norm([90, 10, 15])) + 2 * 2.0  # tip to tip: the capsule's rounded ends
    assert result["vein"]["sl_mm"] == pytest.approx(true, rel=0.03)
    # sl_vox is in the standardized grid: about one voxel per 1 mm slice
    assert 85 <= result["vein"]["sl_vox"] <= 110


def test_tip_trimming_is_an_option_and_a_flat_ended_tube_measures_its_axis():
    """The phantoms' vessel tips end flat at the generator's leaf node: the skeleton ends there
    too, so untrimmed tips (the default) measure the axis; trimming cuts one radius per tip."""
    from hipas_core.phantom.rasterize import render_capsules

    shape = (120, 60, 60)
    axes = tuple(np.arange(n) * s for n, s in zip(shape, SP, strict=True))
    a, b = np.array([[15.0, 20.0, 20.0]]), np.array([[105.0, 20.0, 20.0]])
    box, signed, owner = render_capsules(axes, a, b, np.array([2.0]), pad=1.0, flat_end=np.array([True]))
    labels = np.zeros(shape, np.uint8)
    labels[box][signed <= 0] = 2
    lungs = np.ones(shape, np.uint8)
    assert measure_trees(labels, lungs, spacing=SP)["vein"]["sl_mm"] == pytest.approx(90.0 + 2.0, rel=0.03)
    trimmed = measure_trees(labels, lungs, spacing=SP, settings=MorphometrySettings(trim_tips=True))
    assert trimmed["vein"]["sl_mm"] == pytest.approx(90.0 + 2.0 - 2 * 2.0, rel=0.03)


def _images(labels, lungs, spacing=SP):
    out = []
    for array in (labels, lungs):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(reversed(spacing)))
        out.append(image)
    return out


def test_row_schema_and_provenance(tmp_path):
    from hipas_core.atomic import read_parquet_metadata, write_parquet

    labels, lungs = _phantom_pair()
    frame, metadata = morphometry_row(*_images(labels, lungs), scan_id="case7")
    assert list(frame.columns) == [name for name, _ in ROW_COLUMNS]
    assert len(frame) == 1 and frame.loc[0, "scan_id"] == "case7"
    write_parquet(tmp_path / "row.parquet", frame, metadata)
    schema = pq.read_schema(tmp_path / "row.parquet")
    for name, dtype in ROW_COLUMNS:
        expected = {"str": "string", "int64": "int64", "float64": "double"}[dtype]
        assert str(schema.field(name).type) in (
            {expected, "large_string"} if dtype == "str" else {expected}
        )
    params = json.loads(read_parquet_metadata(tmp_path / "row.parquet")["hipas_parameters"])
    assert params["morphometry"]["teasar"]["const_mm"] == MorphometrySettings().teasar.const_mm
    assert params["morphometry"]["lung_margin_mm"] == 0.0
    assert params["morphometry"]["grid_spacing_zyx_mm"] == pytest.approx(list(SP))


def test_cli_writes_row_and_skeleton(tmp_path, hipas):
    labels, lungs = _phantom_pair()
    labels_img, lungs_img = _images(labels, lungs)
    sitk.WriteImage(labels_img, str(tmp_path / "labels.nii.gz"))
    sitk.WriteImage(lungs_img, str(tmp_path / "lungs.nii.gz"))
    result = hipas(
        "morphometry", "--labels", tmp_path / "labels.nii.gz", "--lungs", tmp_path / "lungs.nii.gz",
        "-o", tmp_path / "row.parquet", "--scan-id", "s1", "--skeleton", tmp_path / "skel.npz",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = pd.read_parquet(tmp_path / "row.parquet")
    assert row.loc[0, "scan_id"] == "s1" and row.loc[0, "artery_bc"] == 7
    skeleton = np.load(tmp_path / "skel.npz")
    assert set(np.unique(skeleton["tree"])) == {1, 2}
    assert skeleton["edges"].max() < len(skeleton["vertices_zyx_mm"])


def test_cli_invalid_input_exits_2_with_one_line(tmp_path, hipas):
    (tmp_path / "labels.nii.gz").write_text("not an image")
    result = hipas(
        "morphometry", "--labels", tmp_path / "labels.nii.gz", "--lungs", tmp_path / "missing.nii.gz",
        "-o", tmp_path / "row.parquet",
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "row.parquet").exists()


@pytest.mark.slow
def test_small_phantom_against_generator_truth():
    """Intrapulmonary length within 5 % and bifurcations within 7 % (the issue's bound is 5 % on
    full-size phantoms, ``benchmarks/validate_morphometry.py``; the small phantom's 3 mm leaves
    are near the resolution limit), threshold lung volume within 3 %."""
    from hipas_core.lungs import threshold_lungs
    from hipas_core.phantom import PhantomSpec, generate_phantom

    phantom = generate_phantom(PhantomSpec.from_seed(1, size="small", protocol="ncct"))
    frame, _ = morphometry_row(phantom.labels, phantom.lungs, scan_id="p1")
    for tree in ("artery", "vein"):
        truth = phantom.truth[tree]
        length = frame.loc[0, f"{tree}_sl_mm"] / truth["intrapulmonary_centerline_length_mm"]
        assert abs(length - 1) < 0.05
        bifurcations = frame.loc[0, f"{tree}_bc"] / truth["intrapulmonary_bifurcations"]
        assert abs(bifurcations - 1) < 0.07
        assert frame.loc[0, f"{tree}_volume_ml"] == pytest.approx(
            truth["intrapulmonary_volume_ml"], rel=1e-3
        )
    assert frame.loc[0, "lung_volume_ml"] == pytest.approx(
        phantom.truth["lung_volume_ml"], rel=1e-3
    )
    lungs = sitk.GetArrayViewFromImage(threshold_lungs(phantom.ct)) > 0
    voxel_ml = float(np.prod(phantom.ct.GetSpacing())) / 1000
    assert lungs.sum() * voxel_ml == pytest.approx(phantom.truth["lung_total_ml"], rel=0.03)


def test_vessels_entering_the_lungs_count_as_intrapulmonary_with_a_threshold_lung_mask():
    """A threshold lung mask has notches where the vessels enter at the hilum (they are not
    enclosed by air); without the hilum closing a small phantom's measured bifurcations fell
    10-20 % short of the generator's intrapulmonary truth, with it within 5 %."""
    from hipas_core.lungs import threshold_lungs
    from hipas_core.morphometry import MorphometrySettings, morphometry_row
    from hipas_core.phantom import PhantomSpec, generate_phantom

    phantom = generate_phantom(PhantomSpec.from_seed(3, size="small"))
    truth = phantom.truth
    lungs = threshold_lungs(phantom.ct)
    row, _ = morphometry_row(phantom.labels, lungs, scan_id="p3")
    plain, _ = morphometry_row(phantom.labels, lungs, scan_id="p3", settings=MorphometrySettings(hilum_closing_mm=0.0))
    for tree in ("artery", "vein"):
        expected = truth[tree]["intrapulmonary_bifurcations"]
        assert abs(row.loc[0, f"{tree}_bc"] / expected - 1) < 0.05
        assert row.loc[0, f"{tree}_bc"] >= plain.loc[0, f"{tree}_bc"]
    assert row.loc[0, "lung_volume_ml"] == plain.loc[0, "lung_volume_ml"]  # the closing never touches volumes
