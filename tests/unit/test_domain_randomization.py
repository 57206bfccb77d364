"""Domain randomization (hipas_core.sts.randomization): labels exact, inputs untouched, off is a
no-op, determinism per seed, each transform does what it claims, and the training wiring
(vesselness recomputed, settings in the checkpoint, ``hipas train --domain-randomization``).
Tiny synthetic (z, y, x) volumes on the standardized grid, fixed seeds."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_sts_training import TINY_MODEL, tiny_case

from hipas_core.conventions import STANDARD_SPACING
from hipas_core.sts.batches import make_batch, randomization_halo
from hipas_core.sts.checkpoint import load_checkpoint
from hipas_core.sts.data import Augmentation, network_input
from hipas_core.sts.randomization import DomainRandomization, draw_randomization, randomize_ct
from hipas_core.sts.training import TrainConfig, train

SHAPE = (16, 32, 32)
TRANSFORMS = ("tissue", "contrast", "bias", "blur", "noise", "sharpen", "fov")


def hu(value: float) -> float:
    return (value + 1000.0) / 1600.0


def tiny_patch(seed: int = 0):
    """A patch with every tissue class: lung (left), soft tissue, fat and a bone block (right),
    air in a corner; an artery along z and a vein along x inside the lung; light noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    ct = np.full(SHAPE, hu(-850.0), np.float32)
    ct[:, :, 20:] = hu(40.0)
    ct[:, :, 26:] = hu(-100.0)
    ct[:, 20:28, 28:] = hu(500.0)
    ct[:, :4, :4] = hu(-1000.0)
    labels = np.zeros(SHAPE, np.uint8)
    labels[((y - 10) ** 2 + (x - 8) ** 2) <= 6] = 1
    labels[((z - 8) ** 2 + (y - 22) ** 2) <= 4 & (x < 18)] = 2
    labels[:, :, 18:] = np.where(labels[:, :, 18:] == 2, 0, labels[:, :, 18:])
    ct[labels == 1] = hu(350.0)
    ct[labels == 2] = hu(200.0)
    ct += rng.normal(0.0, 0.004, SHAPE).astype(np.float32)
    np.clip(ct, 0.0, 1.0, out=ct)
    lungs = np.zeros(SHAPE, np.uint8)
    lungs[:, 4:, :20] = 1
    return ct, labels, lungs


def only(*names: str, **ranges) -> DomainRandomization:
    """Every patch randomized, with just the named transforms (probability 1)."""
    return DomainRandomization(patch_probability=1.0, **{f"{name}_probability": 1.0 for name in names}, **ranges)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_off_settings_give_the_identical_patch_and_draw_nothing():
    ct, labels, lungs = tiny_patch()
    for settings in (DomainRandomization(), DomainRandomization.preset("off"),
                     DomainRandomization(patch_probability=1.0),  # no transform on
                     DomainRandomization.preset("default", patch_probability=0.0)):
        assert not settings.enabled
        rng = np.random.default_rng(0)
        before = rng.bit_generator.state
        out = randomize_ct(ct, labels, rng, settings=settings, lungs=lungs)
        assert out is not ct and out.dtype == np.float32 and np.array_equal(out, ct)
        assert rng.bit_generator.state == before


@pytest.mark.parametrize("seed", range(6))
def test_labels_and_inputs_stay_untouched_and_the_output_in_range(seed):
    ct, labels, lungs = tiny_patch(seed)
    saved = ct.copy(), labels.copy(), lungs.copy()
    settings = only(*TRANSFORMS)
    out = randomize_ct(ct, labels, np.random.default_rng(seed), settings=settings, lungs=lungs)
    for array, copy in zip((ct, labels, lungs), saved, strict=True):
        assert np.array_equal(array, copy)
    assert out.shape == ct.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and np.abs(out - ct).mean() > 0.005
    with pytest.raises(ValueError, match="shape"):
        randomize_ct(ct, labels[:-1], np.random.default_rng(seed), settings=settings)


def test_same_seed_same_patch_and_the_draws_do_not_depend_on_the_image():
    ct, labels, lungs = tiny_patch()
    settings = DomainRandomization.preset("default", patch_probability=1.0)
    first = randomize_ct(ct, labels, np.random.default_rng(7), settings=settings, lungs=lungs)
    again = randomize_ct(ct, labels, np.random.default_rng(7), settings=settings, lungs=lungs)
    other = randomize_ct(ct, labels, np.random.default_rng(8), settings=settings, lungs=lungs)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    # how far the generator moves depends on the settings and the shape alone
    ends = []
    for image, truth in ((ct, labels), (np.zeros_like(ct), np.zeros_like(labels)), (ct[::-1], labels[::-1])):
        rng = np.random.default_rng(11)
        randomize_ct(np.ascontiguousarray(image), np.ascontiguousarray(truth), rng, settings=settings)
        ends.append(rng.bit_generator.state)
    rng = np.random.default_rng(11)
    draw_randomization(settings, SHAPE, rng)
    assert ends[0] == ends[1] == ends[2] == rng.bit_generator.state


def test_tissue_remap_moves_non_vessel_voxels_only_and_smoothly():
    ct, labels, lungs = tiny_patch()
    vessels = labels > 0
    changed = []
    for seed in range(4):
        out = randomize_ct(ct, labels, np.random.default_rng(seed), settings=only("tissue"), lungs=lungs)
        assert np.array_equal(out[vessels], ct[vessels])  # vessels keep their intensity
        changed.append(np.abs(out - ct)[~vessels].mean())
    assert min(changed) > 0.003
    # with the contrast phase on too, the vessels change (and the labels still decide where)
    out = randomize_ct(ct, labels, np.random.default_rng(0), settings=only("tissue", "contrast"), lungs=lungs)
    assert np.abs(out - ct)[vessels].mean() > 0.01
    # the remap is a smooth function of intensity: a fine ramp through all bands has no jump
    ramp = np.linspace(0.0, 1.0, 16 * 32 * 32, dtype=np.float32).reshape(SHAPE)
    step = float(ramp.ravel()[1] - ramp.ravel()[0])
    for seed in range(4):
        mapped = randomize_ct(ramp, np.zeros(SHAPE, np.uint8), np.random.default_rng(seed), settings=only("tissue"))
        assert np.abs(np.diff(mapped.ravel())).max() < 10 * step
        assert np.abs(mapped - ramp).max() > 0.01
    # with the lung mask, air-band voxels inside and outside the lungs move differently
    air = np.full(SHAPE, hu(-900.0), np.float32)
    inside = np.zeros(SHAPE, np.uint8)
    inside[:, :, :16] = 1
    out = randomize_ct(air, np.zeros(SHAPE, np.uint8), np.random.default_rng(2), settings=only("tissue"), lungs=inside)
    assert abs(out[:, :, :4].mean() - out[:, :, -4:].mean()) > 1e-3


def test_contrast_phase_sets_the_blood_levels_of_the_labelled_vessels():
    ct, labels, _ = tiny_patch()
    background = labels == 0
    together = only("contrast", contrast_separate_probability=0.0, artery_hu=(40.0, 40.0))
    out = randomize_ct(ct, labels, np.random.default_rng(0), settings=together)
    assert np.array_equal(out[background], ct[background])
    for tree in (1, 2):  # both trees at non-contrast blood
        assert abs(np.percentile(out[labels == tree], 95) - hu(40.0)) < 0.005
    separate = only("contrast", contrast_separate_probability=1.0, artery_hu=(500.0, 500.0), vein_hu=(100.0, 100.0))
    out = randomize_ct(ct, labels, np.random.default_rng(0), settings=separate)
    assert abs(np.percentile(out[labels == 1], 95) - hu(500.0)) < 0.005
    assert abs(np.percentile(out[labels == 2], 95) - hu(100.0)) < 0.005
    residual = (out - ct)[labels == 1]  # a shift, not a fill: the noise texture stays
    assert residual.std() < 0.003 and out[labels == 1].std() > 0.002


def test_bias_field_changes_the_low_frequencies_only():
    empty = np.zeros(SHAPE, np.uint8)
    settings = only("bias", bias_log_sd=0.2, bias_additive_sd_hu=80.0, bias_control_spacing_mm=8.0)
    flat = np.full(SHAPE, 0.5, np.float32)
    field = randomize_ct(flat, empty, np.random.default_rng(1), settings=settings) - flat
    extent = field.max() - field.min()
    assert field.std() > 0.01  # the field varies over the patch ...
    for axis in range(3):  # ... slowly: no faster than its control grid (8 mm) allows
        assert np.abs(np.diff(field, axis=axis)).max() < 2 * extent * STANDARD_SPACING[axis] / 8.0
    # the fine structure (noise) of an image is kept, up to the gain
    ct = (0.5 + 0.02 * np.random.default_rng(0).standard_normal(SHAPE)).astype(np.float32)
    out = randomize_ct(ct, empty, np.random.default_rng(1), settings=settings)
    high_in, high_out = ct - ndimage.gaussian_filter(ct, 2.0), out - ndimage.gaussian_filter(out, 2.0)
    assert 0.5 < high_out.std() / high_in.std() < 2.0
    assert abs(ndimage.gaussian_filter(out - ct, 2.0).std() - field.std()) < 0.3 * field.std()


def test_blur_in_plane_and_along_z_separately():
    z, _, x = np.indices(SHAPE)
    edge_in_x = (x >= 16).astype(np.float32)
    edge_in_z = (z >= 8).astype(np.float32)
    empty = np.zeros(SHAPE, np.uint8)
    along_z = only("blur", blur_sigma_inplane_mm=(0.0, 0.0), blur_sigma_z_mm=(1.5, 1.5))
    assert np.allclose(randomize_ct(edge_in_x, empty, np.random.default_rng(0), settings=along_z), edge_in_x)
    blurred = randomize_ct(edge_in_z, empty, np.random.default_rng(0), settings=along_z)
    assert 0.2 < blurred[8, 5, 5] < 0.8 and 0.2 < blurred[7, 5, 5] < 0.8
    in_plane = only("blur", blur_sigma_inplane_mm=(0.8, 0.8), blur_sigma_z_mm=(0.0, 0.0))
    assert np.allclose(randomize_ct(edge_in_z, empty, np.random.default_rng(0), settings=in_plane), edge_in_z)
    assert 0.2 < randomize_ct(edge_in_x, empty, np.random.default_rng(0), settings=in_plane)[5, 5, 16] < 0.8


@pytest.mark.parametrize(("correlation", "low", "high"), [(0.0, -0.1, 0.1), (1.0, 0.5, 1.0)])
def test_noise_amplitude_and_texture(correlation, low, high):
    flat = np.full((24, 64, 64), 0.5, np.float32)
    settings = only("noise", noise_sd_hu=(32.0, 32.0), noise_correlation_mm=(correlation, correlation))
    noise = randomize_ct(flat, np.zeros(flat.shape, np.uint8), np.random.default_rng(3), settings=settings) - flat
    assert abs(noise.std() - 32.0 / 1600.0) < 0.1 * 32.0 / 1600.0
    neighbour = np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]
    assert low < neighbour < high  # white: uncorrelated neighbours; filtered: correlated


def test_sharp_kernel_enhances_in_plane_edges():
    z, _, x = np.indices(SHAPE)
    edge = np.where(x >= 16, 0.7, 0.3).astype(np.float32)
    empty = np.zeros(SHAPE, np.uint8)
    settings = only("sharpen", sharpen_amount=(1.0, 1.0), sharpen_sigma_mm=(1.0, 1.0))
    out = randomize_ct(edge, empty, np.random.default_rng(0), settings=settings)
    assert out[..., 16].min() > 0.75 and out[..., 15].max() < 0.25  # overshoot on both sides
    assert np.allclose(out[..., :8], 0.3) and np.allclose(out[..., -8:], 0.7)  # flat parts stay
    layered = np.where(z >= 8, 0.7, 0.3).astype(np.float32)  # an edge along z: not in-plane
    assert np.allclose(randomize_ct(layered, empty, np.random.default_rng(0), settings=settings), layered)


def test_field_of_view_crop_is_air_outside_a_circle_and_never_over_vessels():
    ct, labels, _ = tiny_patch()
    vessels = labels > 0
    margin_vox = 3.0 / STANDARD_SPACING[1]
    distance = ndimage.distance_transform_edt(~vessels.any(axis=0))
    cropped_any = False
    for seed in range(20):
        out = randomize_ct(ct, labels, np.random.default_rng(seed), settings=only("fov"))
        changed = out != ct
        assert np.all(out[changed] == 0.0)  # the padding is the air value
        outside = changed.any(axis=0)  # (Y, X): the same circle in every slice, all air there
        assert np.all(out[:, outside] == 0.0) and not changed[:, ~outside].any()
        assert np.array_equal(out[vessels], ct[vessels])
        if outside.any():
            cropped_any = True
            assert distance[outside].min() >= margin_vox - 1.5  # kept clear of every vessel
    assert cropped_any


def test_vesselness_is_recomputed_from_the_randomized_ct():
    ct, labels, lungs = tiny_patch()
    image = network_input(ct).astype(np.float32)
    augmentation = Augmentation(domain_randomization=only("tissue", "contrast", "blur", "noise"))
    out = augmentation.randomize_domain(image, labels, np.random.default_rng(0), lungs=lungs)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.array_equal(out, network_input(out[0]).astype(np.float32))
    assert np.abs(out[1] - image[1]).mean() > 1e-3
    # labels None (another rank's patch): the same draws, the image returned as it is
    rng_full, rng_skip = np.random.default_rng(4), np.random.default_rng(4)
    augmentation.randomize_domain(image, labels, rng_full, lungs=lungs)
    assert augmentation.randomize_domain(image, None, rng_skip) is image
    assert rng_full.bit_generator.state == rng_skip.bit_generator.state


def _config(randomization: DomainRandomization | None, **changes) -> TrainConfig:
    augmentation = asdict(Augmentation())
    if randomization is None:
        augmentation.pop("domain_randomization")  # a config written before the option existed
    else:
        augmentation["domain_randomization"] = asdict(randomization)
    return TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), augmentation=augmentation, **changes)


def test_training_batches_are_unchanged_when_off_and_randomized_when_on():
    cases = [tiny_case(0), tiny_case(1)]
    old = make_batch(cases, _config(None, batch_size=2), np.random.default_rng(0))
    off = make_batch(cases, _config(DomainRandomization(), batch_size=2), np.random.default_rng(0))
    assert old.keys() == off.keys() and all(torch.equal(old[k], off[k]) for k in old)
    on_config = _config(DomainRandomization.preset("default", patch_probability=1.0), batch_size=2)
    on = make_batch(cases, on_config, np.random.default_rng(0))
    assert on.keys() == old.keys()  # the lung patch used by the randomization is not in the batch
    # labels stay aligned with the randomized CT (the patch is cut with a halo, then cropped):
    # without the other augmentations, the tissue remap and FOV crop leave the tubes' 0.7 / 0.6
    quiet = {"intensity_scale": 0.0, "intensity_shift": 0.0, "noise_sd_max": 0.0, "thick_slice_probability": 0.0}
    aligned_config = _config(only("tissue", "fov"), batch_size=2)
    aligned_config.augmentation.update(quiet)
    aligned = make_batch(cases, aligned_config, np.random.default_rng(0))
    ct, labels = aligned["image"][:, 0].numpy(), aligned["labels"].numpy()
    assert (labels == 1).any() and np.all(ct[labels == 1] == np.float16(0.7))
    assert (labels == 2).any() and np.all(ct[labels == 2] == np.float16(0.6))
    assert np.abs(ct[labels == 0] - 0.1).mean() > 0.005  # while the rest was remapped
    # each patch's vesselness is that of its own randomized CT, computed with a halo (2 sigma of
    # the largest scale) around the patch: equal inside, away from the patch border
    assert randomization_halo(on_config) == (3, 5, 5)  # 2 x 1.5 mm in voxels, rounded up
    inner = (slice(6, -6), slice(9, -9), slice(9, -9))  # the vesselness kernel radius at 1.5 mm
    for image in on["image"].numpy():
        recomputed = network_input(image[0]).astype(np.float32)
        assert np.array_equal(image[0], recomputed[0])  # the CT channel is float16, as cases store it
        assert np.allclose(image[1][inner], recomputed[1][inner], atol=2e-3)
        assert not np.allclose(image[1], recomputed[1], atol=2e-3)  # the border saw the halo
    again = make_batch(cases, on_config, np.random.default_rng(0))
    assert torch.equal(on["image"], again["image"])
    # a rank keeping only position 1 of the global batch draws the same stream and the same patch
    rng_full, rng_rank = np.random.default_rng(5), np.random.default_rng(5)
    full = make_batch(cases, on_config, rng_full)
    share = make_batch(cases, on_config, rng_rank, keep=range(1, 2))
    assert rng_full.bit_generator.state == rng_rank.bit_generator.state
    assert torch.equal(share["image"][0], full["image"][1]) and torch.equal(share["labels"][0], full["labels"][1])


def test_settings_round_trip_and_validation():
    settings = DomainRandomization.preset("default", patch_probability=0.5)
    assert DomainRandomization.from_dict(asdict(settings)) == settings
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    assert DomainRandomization.from_dict(as_lists) == settings  # a config read back from JSON
    assert DomainRandomization.from_dict(None) == DomainRandomization()
    assert Augmentation(domain_randomization=asdict(settings)).domain_randomization == settings
    assert replace(settings, fov_probability=0.0) != settings
    with pytest.raises(ValueError, match="probability"):
        DomainRandomization(noise_probability=1.5)
    with pytest.raises(ValueError, match="tissue_offset_hu"):
        DomainRandomization(tissue_offset_hu=(1.0, 2.0))
    with pytest.raises(ValueError, match="blur_sigma_z_mm"):
        DomainRandomization(blur_sigma_z_mm=(2.0, 1.0))
    with pytest.raises(ValueError, match="preset"):
        DomainRandomization.preset("strong")
    with pytest.raises(TypeError):
        DomainRandomization(0.5)  # keyword-only


def test_train_with_randomization_is_deterministic_and_records_the_settings(tmp_path):
    settings = DomainRandomization.preset("default", patch_probability=1.0)
    config = _config(settings, steps=2, lr=1e-3, seed=1, val_every=2, val_patches=1, checkpoint_every=2)
    cases = [tiny_case(0), tiny_case(1)]
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    train(config, cases, output=first, progress=False)
    train(config, cases, output=second, progress=False)
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    recorded = a["training_config"]["augmentation"]["domain_randomization"]
    assert DomainRandomization.from_dict(recorded) == settings


def test_hipas_train_option_records_the_settings_and_resumes(tmp_path, hipas):
    from hipas_core.sts.phantom_cases import phantom_case

    cache = tmp_path / "cache"
    phantom_case(1, protocol="ncct", cache_dir=cache)
    out = tmp_path / "dr.pt"
    common = ["train", "--out", out, "--phantom-seeds", "1", "--val-seeds", "1", "--cache", cache,
              "--patch", "16", "32", "32", "--width", "4", "--blocks", "0", "0", "1", "1", "1", "--lr", "1e-3",
              "--val-every", "1", "--checkpoint-every", "1", "--threads", "1", "--no-progress",
              "--domain-randomization", "default", "--domain-randomization-probability", "1"]
    hipas(*common, "--steps", "2", check=True)
    expected = asdict(DomainRandomization.preset("default", patch_probability=1.0))
    state = load_checkpoint(out)
    assert state["step"] == 2 and state["training_config"]["augmentation"]["domain_randomization"] == expected
    hipas(*common, "--steps", "3", "--resume", check=True)
    state = load_checkpoint(out)
    assert state["step"] == 3 and state["training_config"]["augmentation"]["domain_randomization"] == expected

    bad = hipas(*common[:-1], "1.5", "--steps", "1")
    assert bad.returncode == 2 and "--domain-randomization-probability 1.5" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    help_text = hipas("train", "--help", check=True).stdout
    assert "--domain-randomization {off,default}" in help_text and "vesselness" in help_text
