"""Synthetic non-contrast CT from CTPA: contrast-filled vessels to ~50 HU, bone and lung untouched,
noise kept, input unmodified, deterministic; the training augmentation that uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from hipas_core.normalize import window
from hipas_core.sts.synthetic_ncct import blood_pool_mask, synthetic_ncct

SPACING = (2.0, 2.0, 2.0)  # coarse voxels keep the lungs above the lung-finder's minimum volume


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def ctpa_like(seed: int = 0, shape=(32, 64, 64)):
    """Body (40 HU), two lungs (-850), an opacified vessel through the right lung (350 HU), a
    vertebra-like block (700 HU) and a rib-like bar of cancellous bone (300 HU, above the
    threshold but outside the lungs), with 15 HU noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    ct = np.full(shape, -1000.0)
    body = ((y - 32) ** 2 + (x - 32) ** 2) < 30**2
    ct[body] = 40.0
    lungs = body & (np.abs(y - 32) < 16) & (((x > 10) & (x < 30)) | ((x > 34) & (x < 54))) & (z > 2) & (z < 29)
    ct[lungs] = -850.0
    vessel = ((y - 30) ** 2 + (x - 20) ** 2) <= 9
    ct[vessel] = 350.0
    bone = body & (np.abs(y - 56) < 3) & (np.abs(x - 32) < 6)
    ct[bone] = 700.0
    rib = body & (np.abs(y - 52) < 2) & (np.abs(x - 44) < 5)
    ct[rib] = 300.0
    ct += rng.normal(0.0, 15.0, shape)
    labels = vessel.astype(np.uint8)
    return ct.astype(np.float32), {"vessel": vessel, "bone": bone, "rib": rib, "lungs": lungs & ~vessel}, labels


@pytest.mark.parametrize("use_labels", [False, True])
def test_vessels_lowered_bone_and_lung_unchanged(use_labels):
    ct, parts, labels = ctpa_like()
    before = ct.copy()
    out = synthetic_ncct(ct, labels=labels if use_labels else None, spacing=SPACING)
    assert out.dtype == np.float32 and out.shape == ct.shape
    assert np.array_equal(ct, before)  # input not modified
    core = ndimage.binary_erosion(parts["vessel"])
    assert abs(float(out[core].mean()) - 50.0) < 5.0
    # noise texture kept: same spread as before, and the same voxel-to-voxel pattern
    assert abs(float(out[core].std()) - float(ct[core].std())) < 0.2 * float(ct[core].std())
    assert np.corrcoef(out[core], ct[core])[0, 1] > 0.95
    assert np.array_equal(out[parts["bone"]], ct[parts["bone"]])
    assert np.array_equal(out[parts["rib"]], ct[parts["rib"]])  # > 200 HU but not blood
    far_lung = parts["lungs"] & ~ndimage.binary_dilation(parts["vessel"], iterations=2)
    assert np.array_equal(out[far_lung], ct[far_lung])
    assert np.array_equal(synthetic_ncct(ct, labels=labels if use_labels else None, spacing=SPACING), out)


def test_partial_volume_border_follows_the_two_compartment_model():
    ct, parts, labels = ctpa_like(seed=1)
    # a partial-volume rim: voxels just outside the vessel, 79 % blood (350 HU) and 21 % lung (-850 HU)
    rim = ndimage.binary_dilation(parts["vessel"]) & ~parts["vessel"] & parts["lungs"]
    fraction = 0.79
    ct[rim] = fraction * 350.0 + (1 - fraction) * -850.0
    out = synthetic_ncct(ct, labels=labels, spacing=SPACING)
    expected = fraction * 50.0 + (1 - fraction) * -850.0  # the same mixture with unenhanced blood
    assert abs(float(out[rim].mean()) - expected) < 25.0, float(out[rim].mean())
    outside = ~ndimage.binary_dilation(parts["vessel"], iterations=2)
    assert np.array_equal(out[outside], ct[outside])


def test_native_ncct_has_no_blood_pool_and_is_returned_unchanged():
    ct, parts, _ = ctpa_like(seed=2)
    ncct = ct.copy()
    ncct[parts["vessel"]] -= 310.0  # unenhanced blood (~40 HU); bone and the 300 HU rib stay
    assert not blood_pool_mask(ncct, spacing=SPACING).any()
    assert np.array_equal(synthetic_ncct(ncct, spacing=SPACING), ncct)


def test_training_augmentation_swaps_ctpa_cases_for_their_synthetic_copy():
    from hipas_core.sts.data import (
        Augmentation,
        TrainingCase,
        level_territories,
        synthetic_ncct_case,
    )
    from hipas_core.sts.losses import level_weights
    from hipas_core.vesselness import vesselness

    ct, parts, labels = ctpa_like(seed=3, shape=(24, 48, 48))
    labels = labels.astype(np.uint8)
    levels = labels.copy()
    ct_window = window(ct)
    image = np.stack([ct_window, vesselness(ct_window, spacing=(1.0, 334 / 512, 334 / 512), sigmas_mm=(0.7, 1.5))])
    case = TrainingCase(name="c", image=image.astype(np.float16), labels=labels, levels=levels,
                        lungs=np.ones(labels.shape, np.uint8), territory=level_territories(levels),
                        weights=level_weights(levels, labels), meta={"protocol": "ctpa"})
    before = case.image.copy()
    synthetic = synthetic_ncct_case(case)
    assert np.array_equal(case.image, before)
    core = ndimage.binary_erosion(parts["vessel"])
    hu = synthetic.image[0].astype(np.float32) * 1600 - 1000
    assert abs(float(hu[core].mean()) - 50.0) < 8.0
    assert float(synthetic.image[1][core].mean()) < float(case.image[1][core].mean())  # vesselness recomputed
    assert synthetic.meta["protocol"] == "synthetic-ncct" and synthetic.labels is case.labels

    always = Augmentation(synthetic_ncct_probability=1.0)
    rng = np.random.default_rng(0)
    picked = always.pick_case(case, rng)
    assert picked.name == "c-sncct" and always.pick_case(case, rng) is picked  # made once, kept
    ncct_case = TrainingCase(**{**case.__dict__, "meta": {"protocol": "ncct"}, "variants": {}})
    assert always.pick_case(ncct_case, rng) is ncct_case
    state = rng.bit_generator.state
    assert Augmentation().pick_case(case, rng) is case and rng.bit_generator.state == state  # off: no draw
