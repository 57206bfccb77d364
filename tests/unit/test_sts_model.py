"""STS model parts: shapes, gradients, hand-computed losses, sliding window (tiny, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hipas_core.sts.baseline import UNet3D, UNetConfig, matching_unet_config
from hipas_core.sts.cascade import CascadeConfig, PriorTransmission, STSCascade
from hipas_core.sts.losses import (
    dice_loss,
    level_weighted_dice_loss,
    level_weights,
    overlap_cross_loss,
    sts_stage_loss,
)
from hipas_core.sts.network import StageConfig, StageNet, count_parameters, paper_stage_config
from hipas_core.sts.sliding_window import gaussian_importance, sliding_window_predict, window_starts

TINY = StageConfig(in_channels=4, width=4, blocks_per_level=(1, 1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _all_params_have_gradients(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_stage_net_shape_and_gradients():
    net = StageNet(TINY)
    x = torch.rand(2, 4, 16, 32, 16)
    out = net(x)
    assert out.shape == (2, 2, 16, 32, 16)
    (out * torch.rand_like(out)).sum().backward()
    _all_params_have_gradients(net)


@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_block_pointwise_slabs_give_the_same_values(monkeypatch, channels_last):
    """Without gradients a large window runs its pointwise layers slab by slab along z (less
    memory); the values are those of the whole-window pass, a shorter last slab included."""
    from hipas_core.sts import network

    torch.manual_seed(0)
    block = network.ResidualBlock(8).eval()
    x = torch.randn(1, 8, 20, 16, 24)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        whole = block(x)
        monkeypatch.setattr(network, "POINTWISE_SLAB_VOXELS", 16 * 24 * 3)  # slabs of 3 slices: 7, the last of 2
        slabs = block(x)
    assert torch.equal(slabs, whole)
    assert slabs.is_contiguous(memory_format=torch.channels_last_3d) == channels_last


def test_stage_net_rejects_sizes_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        StageNet(TINY)(torch.rand(1, 4, 16, 24, 16))


def test_paper_width_stage_parameter_count_near_paper():
    # the paper reports about 14.4 M parameters per stage at width 24
    n = count_parameters(StageNet(paper_stage_config()))
    assert 12e6 < n < 17e6


def test_prior_transmission_is_residual_and_size_preserving():
    block = PriorTransmission()
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    prior = torch.rand(1, 2, 8, 8, 8)
    assert torch.equal(block(prior), prior)


def test_cascade_outputs_every_stage_and_all_parts_learn():
    cascade = STSCascade(CascadeConfig(stage=TINY))
    outputs = cascade(torch.rand(1, 2, 16, 16, 16))
    assert len(outputs) == 4
    assert all(o.shape == (1, 2, 16, 16, 16) for o in outputs)
    sum((o * torch.rand_like(o)).sum() for o in outputs).backward()
    _all_params_have_gradients(cascade)


def test_cascade_stage_zero_sees_zero_prior_and_later_stages_need_one():
    cascade = STSCascade(CascadeConfig(stage=TINY)).eval()
    image = torch.rand(1, 2, 16, 16, 16)
    direct = cascade.stages[0](torch.cat([image, torch.zeros(1, 2, 16, 16, 16)], dim=1))
    assert torch.allclose(cascade.forward_stage(0, image, None), direct)
    with pytest.raises(ValueError):
        cascade.forward_stage(1, image, None)


def test_cascade_config_round_trip():
    config = STSCascade(CascadeConfig(stage=TINY)).config
    assert CascadeConfig.from_dict(config.to_dict()) == config


def test_unet_baseline_shape_gradients_and_parameter_matching():
    net = UNet3D(UNetConfig(widths=(4, 8, 8, 8, 8)))
    out = net(torch.rand(1, 2, 16, 16, 32))
    assert out.shape == (1, 2, 16, 16, 32)
    out.sum().backward()
    _all_params_have_gradients(net)
    target = count_parameters(STSCascade(CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1)))))
    matched = count_parameters(UNet3D(matching_unet_config(target, base_width=4)))
    assert abs(matched - target) / target < 0.1


# ---- losses (hand-computed) ----------------------------------------------------------------

def test_level_weighted_dice_matches_hand_computation():
    prob = torch.tensor([[[[0.5, 1.0, 0.0, 0.25]]]])  # (B=1, 1, 1, 4)
    target = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    territory = torch.tensor([[[[0, 0, 1, 1]]]])
    weights = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    # level 0: (0.5 + 1) / (1.5 + 1 + 2) = 1/3 ; level 1: (0 + 1) / (0.25 + 1 + 2) = 1/3.25
    expected = -(1 / 3 + 2 * (1 / 3.25))
    got = level_weighted_dice_loss(prob, target, territory, weights, max_level=1, eps=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # without smoothing: level 0 0.5/2.5, level 1 0/1.25
    got0 = level_weighted_dice_loss(prob, target, territory, weights, max_level=1, eps=0.0)
    assert got0.item() == pytest.approx(-(0.5 / 2.5), rel=1e-6)


def test_perfect_prediction_scores_one_half_per_term():
    target = torch.tensor([[[[1.0, 0.0, 1.0, 1.0]]]])
    territory = torch.tensor([[[[0, 0, 1, 2]]]])
    weights = torch.tensor([[1.0, 3.0, 0.5, 0.0]])
    got = level_weighted_dice_loss(target, target, territory, weights, max_level=2, eps=1e-9)
    assert got.item() == pytest.approx(-(0.5 + 3 * 0.5 + 0.5 * 0.5), rel=1e-6)


def test_overlap_cross_matches_hand_computation():
    prob = torch.tensor([[0.8, 0.1], [0.2, 0.6]]).reshape(1, 2, 1, 1, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 1, 2)
    # (P_A.T_V + P_V.T_A) = 0.1 + 0.2 ; P + T = 1.7 + 2
    assert overlap_cross_loss(prob, target, eps=0.0).item() == pytest.approx(0.3 / 3.7, rel=1e-6)
    assert overlap_cross_loss(target, target, eps=0.0).item() == 0.0


def test_level_weights_follow_equation_15():
    levels = np.array([1, 1, 1, 1, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 0], dtype=np.uint8)
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0], dtype=np.uint8)
    w = level_weights(levels, labels)
    # artery: V(T0)=4, level1 1, level2 2, level3 2 ; vein: only level 3 -> no level 0 -> weights 0
    assert w[0].tolist() == pytest.approx([1.0, 4.0, 2.0, 2.0])
    assert w[1].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_stage_loss_is_finite_differentiable_and_lower_for_better_prediction():
    target = torch.zeros(1, 2, 16, 16, 16)
    target[0, 0, 4:8, 4:8, :] = 1
    target[0, 1, 10:14, 10:14, :] = 1
    territory = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    territory[..., 8:] = 1
    weights = torch.tensor([[[1.0, 2.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0]]])
    good = (target * 12 - 6).requires_grad_(True)
    bad = torch.zeros_like(target, requires_grad=True)
    loss_good = sts_stage_loss(good, target, territory, weights, max_level=1)
    loss_bad = sts_stage_loss(bad, target, territory, weights, max_level=1)
    assert loss_good < loss_bad
    loss_bad.backward()
    assert torch.isfinite(bad.grad).all() and bad.grad.abs().sum() > 0
    assert dice_loss(good, target) < dice_loss(bad, target)


# ---- sliding window ------------------------------------------------------------------------

def test_window_starts_cover_axis():
    assert window_starts(10, 16, 0.25) == [0]
    starts = window_starts(100, 32, 0.25)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:], strict=False))


def test_gaussian_importance_peaks_in_centre():
    w = gaussian_importance((8, 16, 16))
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 8, 8] > w[0, 0, 0]


def test_sliding_window_equals_whole_volume_forward_when_window_covers_it():
    net = StageNet(StageConfig(in_channels=2, width=4, blocks_per_level=(1, 1, 1, 1, 1))).eval()
    volume = torch.rand(2, 16, 32, 16)
    with torch.no_grad():
        whole = torch.sigmoid(net(volume[None]))[0]
        slid = sliding_window_predict(lambda x: torch.sigmoid(net(x)), volume, window=(16, 32, 16), overlap=0.25)
    assert torch.allclose(whole, slid, atol=1e-6)


def test_sliding_window_blending_is_exact_for_a_pointwise_model():
    conv = torch.nn.Conv3d(2, 2, 1)
    volume = torch.rand(2, 37, 50, 29)
    with torch.no_grad():
        whole = conv(volume[None])[0]
        slid = sliding_window_predict(conv, volume, window=(16, 16, 16), overlap=0.25, batch_size=3)
    assert slid.shape == whole.shape
    assert torch.allclose(whole, slid, atol=1e-5)


def test_sliding_window_pads_small_volumes():
    conv = torch.nn.Conv3d(2, 2, 1)
    volume = torch.rand(2, 5, 7, 9)
    with torch.no_grad():
        slid = sliding_window_predict(conv, volume, window=(16, 16, 16))
        assert torch.allclose(slid, conv(volume[None])[0], atol=1e-5)


def test_optional_cross_entropy_penalises_a_flooded_class():
    from hipas_core.sts.losses import sts_stage_loss

    target = torch.zeros(1, 2, 4, 8, 8)
    target[:, 0, 1:3, 3:5, 3:5] = 1
    target[:, 1, 1:3, 5:7, 5:7] = 1
    territory = torch.zeros(1, 4, 8, 8, dtype=torch.long)
    weights = torch.ones(1, 2, 4)
    exact = torch.where(target > 0, 8.0, -8.0)
    flooded = exact.clone()
    flooded[:, 1] = 8.0
    args = dict(territory=territory, weights=weights, max_level=0)
    assert sts_stage_loss(exact, target, bce_weight=0.0, **args) == sts_stage_loss(exact, target, **args)
    gap_without = sts_stage_loss(flooded, target, **args) - sts_stage_loss(exact, target, **args)
    gap_with = (sts_stage_loss(flooded, target, bce_weight=1.0, **args)
                - sts_stage_loss(exact, target, bce_weight=1.0, **args))
    assert gap_with > gap_without + 1.0
