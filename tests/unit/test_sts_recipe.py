"""The CPU training recipe: per-stage blocks, growing a trained cascade, Skeleton Recall, poly lr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sts_training import TINY_MODEL, tiny_case

from hipas_core.sts.batches import make_batch
from hipas_core.sts.cascade import CascadeConfig, STSCascade
from hipas_core.sts.checkpoint import load_checkpoint
from hipas_core.sts.data import TrainingCase, tubed_skeleton
from hipas_core.sts.losses import skeleton_recall_loss
from hipas_core.sts.network import StageConfig, load_matching_weights
from hipas_core.sts.objective import batch_loss
from hipas_core.sts.training import TrainConfig, train

SMALL = StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1))
GROWN = CascadeConfig(stage=SMALL, stage_blocks=((0, 0, 1, 1, 1),) * 3 + ((1, 1, 1, 1, 1),))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_stage_blocks_give_each_stage_its_own_shape_and_round_trip():
    cascade = STSCascade(GROWN)
    assert [len(stage.encoder[0]) for stage in cascade.stages] == [0, 0, 0, 1]
    assert CascadeConfig.from_dict(cascade.config.to_dict()) == cascade.config
    assert "stage_blocks" not in CascadeConfig(stage=SMALL).to_dict()  # old checkpoints stay as they were
    with pytest.raises(ValueError, match="4 entries"):
        CascadeConfig(stage=SMALL, stage_blocks=((1, 1, 1, 1, 1),))


def test_grown_cascade_computes_what_the_trained_one_did():
    torch.manual_seed(0)
    trained = STSCascade(CascadeConfig(stage=SMALL)).eval()
    grown = STSCascade(GROWN).eval()
    missing = load_matching_weights(grown, trained.state_dict())
    assert missing and all(".encoder.0." in m or ".encoder.1." in m or ".decoder.0." in m or ".decoder.1." in m
                           for m in missing)
    image = torch.rand(1, 2, 16, 32, 32)
    with torch.no_grad():
        for a, b in zip(trained(image), grown(image), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    # the new blocks are identities, not dead: their fuse conv gets a gradient
    grown.train()
    grown(image)[-1].sum().backward()
    assert grown.stages[3].encoder[0][0].fuse.weight.grad.abs().sum() > 0


def test_load_matching_weights_rejects_a_shape_that_does_not_fit():
    wide = STSCascade(CascadeConfig(stage=StageConfig(width=8, blocks_per_level=(0, 0, 1, 1, 1))))
    with pytest.raises(ValueError, match="does not fit"):
        load_matching_weights(STSCascade(CascadeConfig(stage=SMALL)), wide.state_dict())


def test_tubed_skeleton_follows_each_tree_and_stays_inside_it():
    labels = tiny_case().labels
    skeleton = tubed_skeleton(labels)
    for tree in (1, 2):
        tube = skeleton == tree
        assert tube.any() and np.all(labels[tube] == tree)
        assert tube.sum() < 0.8 * (labels == tree).sum()  # a thin core, not the whole vessel
    # the artery runs along z: its tube covers every slice it is in
    assert set(np.nonzero(skeleton == 1)[0]) >= set(range(2, labels.shape[0] - 2))


def test_skeleton_recall_charges_missed_centrelines_only():
    skeleton = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    skeleton[0, 4, 4, :] = 1
    skeleton[0, :, 2, 2] = 2
    hit = torch.full((1, 2, 8, 8, 8), -20.0)
    hit[:, 0][skeleton == 1] = 20.0
    hit[:, 1][skeleton == 2] = 20.0
    assert skeleton_recall_loss(hit, skeleton) < 0.1
    flooded = torch.full((1, 2, 8, 8, 8), 20.0)  # false positives are not charged
    assert skeleton_recall_loss(flooded, skeleton) < 0.1
    missed = hit.clone()
    missed[:, 1] = -20.0
    assert skeleton_recall_loss(missed, skeleton) == pytest.approx(0.5 * 8 / 9, abs=0.02)  # eps = 1


def test_skeleton_recall_term_is_added_to_the_stage_loss():
    case = tiny_case()
    plain = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), stage_loss="dice")
    with_recall = TrainConfig(**{**plain.to_dict(), "skeleton_recall_weight": 2.0})
    batch = make_batch([case], with_recall, np.random.default_rng(0), augment=False)
    assert batch["skeleton"].shape == batch["labels"].shape and batch["skeleton"].max() == 2
    torch.manual_seed(0)
    model = STSCascade(CascadeConfig.from_dict(TINY_MODEL))
    difference = batch_loss(model, batch, with_recall) - batch_loss(model, batch, plain)
    outputs = model(batch["image"])
    expected = sum(2.0 * skeleton_recall_loss(
        o, torch.where((batch["levels"] >= 1) & (batch["levels"] <= s + 1), batch["skeleton"], 0))
        for s, o in enumerate(outputs))
    assert torch.allclose(difference, expected, rtol=1e-4)


def test_centrelines_are_saved_with_the_case(tmp_path):
    case = tiny_case()
    case.centrelines()
    case.save(tmp_path / "c.npz")
    assert np.array_equal(TrainingCase.load(tmp_path / "c.npz").skeleton, case.skeleton)


def test_init_from_keeps_every_trained_stage_and_poly_lr_decays(tmp_path):
    cases = [tiny_case(0), tiny_case(1)]
    base = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=4, lr=1e-3, seed=1, val_every=4,
                       val_patches=1, checkpoint_every=4)
    first = tmp_path / "first.pt"
    train(base, cases, output=first, progress=False)
    trained = load_checkpoint(first)["state_dict"]
    grown = TrainConfig(**{**base.to_dict(), "model_config": STSCascade(GROWN).config.to_dict(),
                           "mode": "stagewise", "stage_steps": (0, 0, 0, 3), "steps": 3, "init_from": str(first),
                           "lr_schedule": "poly", "skeleton_recall_weight": 1.0})
    second = tmp_path / "second.pt"
    train(grown, cases, output=second, progress=False)
    state = load_checkpoint(second)
    for key, tensor in trained.items():  # stages 0-2 frozen and never overwritten by warm start
        if key.startswith(("stages.0.", "stages.1.", "stages.2.")):
            assert torch.equal(state["state_dict"][key], tensor), key
    assert not torch.equal(state["state_dict"]["stages.3.head.weight"], trained["stages.3.head.weight"])
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * (1 - 2 / 3) ** 0.9)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_channels_last_training_matches_the_default_layout(tmp_path):
    cases = [tiny_case(0)]
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=2, lr=1e-3, seed=4, val_every=2,
                         val_patches=1, checkpoint_every=2)
    train(config, cases, output=tmp_path / "a.pt", progress=False)
    train(TrainConfig(**{**config.to_dict(), "channels_last": True}), cases, output=tmp_path / "b.pt", progress=False)
    first, second = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    a, b = first["state_dict"], second["state_dict"]
    assert all(b[k].is_contiguous() for k in b)  # saved in the default layout
    assert second["history"][0]["loss"] == pytest.approx(first["history"][0]["loss"], rel=1e-5)  # same forward
    # Adam moves every weight by about lr per step whatever the gradient's size, so parameters
    # with near-zero gradients may differ by up to that; none by more
    assert all(torch.allclose(a[k], b[k], atol=2 * config.steps * config.lr) for k in a)
