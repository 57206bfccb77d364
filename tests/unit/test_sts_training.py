"""STS training: patch sampling, a few steps lower the loss, determinism and resume (tiny)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hipas_core.sts.batches import make_batch
from hipas_core.sts.cascade import CascadeConfig
from hipas_core.sts.checkpoint import build_model, load_checkpoint
from hipas_core.sts.data import (
    Augmentation,
    TrainingCase,
    level_territories,
    sample_patch,
)
from hipas_core.sts.losses import level_weights
from hipas_core.sts.network import StageConfig
from hipas_core.sts.objective import batch_loss
from hipas_core.sts.phantom_cases import parse_seeds, phantom_plan
from hipas_core.sts.training import TrainConfig, train

TINY_MODEL = CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1))).to_dict()


def tiny_case(seed: int = 0, shape=(24, 40, 40)) -> TrainingCase:
    """Two straight bright tubes (artery along z, vein along x) with levels along their length."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    artery = ((y - 12) ** 2 + (x - 14) ** 2) <= 9
    vein = ((z - 12) ** 2 + (y - 28) ** 2) <= 9
    labels = np.zeros(shape, np.uint8)
    labels[artery] = 1
    labels[vein] = 2
    levels = np.zeros(shape, np.uint8)
    levels[artery] = 1 + np.minimum(z[artery] // 6, 3)
    levels[vein] = 1 + np.minimum(x[vein] // 10, 3)
    ct = 0.1 + 0.02 * rng.standard_normal(shape)
    ct[artery] = 0.7
    ct[vein] = 0.6
    image = np.stack([ct, (labels > 0) * 0.8]).astype(np.float16)
    return TrainingCase(
        name=f"tiny-{seed}", image=image, labels=labels, levels=levels, lungs=np.ones(shape, np.uint8),
        territory=level_territories(levels), weights=level_weights(levels, labels),
    )


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_level_territories_assign_nearest_level():
    levels = np.zeros((1, 1, 9), np.uint8)
    levels[0, 0, 0] = 1  # level 0
    levels[0, 0, 8] = 2  # level 1
    t = level_territories(levels, spacing=(1, 1, 1))
    assert t.shape == (3, 1, 1, 9)
    assert t[0, 0, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1] or t[0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert t[0, 0, 0, 0] == 0 and t[0, 0, 0, 8] == 1


def test_sample_patch_shapes_and_vessel_bias():
    case = tiny_case()
    rng = np.random.default_rng(0)
    patch = sample_patch(case, (16, 16, 16), rng, vessel_probability=1.0)
    assert patch["image"].shape == (2, 16, 16, 16) and patch["territory"].shape == (3, 16, 16, 16)
    assert patch["labels"].any()
    big = sample_patch(case, (32, 48, 48), rng)  # larger than the case: zero padded
    assert big["image"].shape == (2, 32, 48, 48)


def test_augmentation_keeps_targets_and_range():
    case = tiny_case()
    rng = np.random.default_rng(1)
    image = case.image[:, :16, :16, :16].astype(np.float32)
    # CT at both ends of the window: the random scale, shift and noise push some of it outside
    # [0, 1] (by up to 0.06 here), so the range holds only if the augmentation clips
    image[0, :, :, :4], image[0, :, :, -4:] = 0.0, 1.0
    out, (labels,) = Augmentation(thick_slice_probability=1.0).apply(image, [case.labels[:16, :16, :16]], rng)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert out[0].max() == 1.0  # held at the bound (clipped), not squeezed back into range
    assert np.abs(out[0] - image[0]).mean() > 0.01  # and the CT was augmented
    assert np.array_equal(labels, case.labels[:16, :16, :16])


def test_phantom_plan_and_seed_parsing():
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    plan = phantom_plan([1, 2, 3, 4])
    assert [p[1] for p in plan] == ["ncct", "ctpa", "ncct", "ctpa"]
    assert plan[0][2] is None and plan[3][2] in (2.5, 3.0)


@pytest.mark.parametrize("kind", ["cascade", "baseline"])
def test_a_few_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    model_config = TINY_MODEL if kind == "cascade" else {"widths": (4, 8, 8, 8, 8)}
    config = TrainConfig(kind=kind, model_config=model_config, patch=(16, 32, 32), lr=3e-3, betas=(0.9, 0.999))
    model = build_model(kind, model_config)
    batch = make_batch([tiny_case()], config, np.random.default_rng(0), augment=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = batch_loss(model, batch, config)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_train_is_deterministic_and_resume_continues_exactly(tmp_path):
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=4, lr=1e-3, seed=3,
                         val_every=2, val_patches=1, checkpoint_every=2)
    cases = [tiny_case(0), tiny_case(1)]
    straight = tmp_path / "straight.pt"
    summary = train(config, cases, output=straight, progress=False)
    assert summary["step"] == 4 and "val_dice_artery" in summary["history"][-1]
    again = tmp_path / "again.pt"
    train(config, cases, output=again, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(again)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["training_config"]["seed"] == 3 and "torch" in a["versions"]
    assert a["train_device"] == {"device": "cpu", "threads": torch.get_num_threads()}

    resumed = tmp_path / "resumed.pt"
    train(TrainConfig(**{**config.to_dict(), "steps": 2}), cases, output=resumed, progress=False)
    train(config, cases, output=resumed, resume=True, progress=False)
    c = load_checkpoint(resumed)
    assert c["step"] == 4
    assert all(torch.allclose(a["state_dict"][k], c["state_dict"][k], atol=1e-6) for k in a["state_dict"])


def test_resume_takes_the_new_learning_rate(tmp_path):
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=1, lr=1e-3, seed=0,
                         val_every=1, val_patches=1, checkpoint_every=1)
    out = tmp_path / "run.pt"
    train(config, [tiny_case()], output=out, progress=False)
    lower = TrainConfig(**{**config.to_dict(), "steps": 2, "lr": 2e-4, "betas": (0.95, 0.999)})
    train(lower, [tiny_case()], output=out, resume=True, progress=False)
    group = load_checkpoint(out)["optimizer"]["param_groups"][0]
    assert group["lr"] == 2e-4 and tuple(group["betas"]) == (0.95, 0.999)


def test_baseline_cross_entropy_term_is_added():
    torch.manual_seed(0)
    model_config = {"widths": (4, 8, 8, 8, 8)}
    model = build_model("baseline", model_config)
    plain = TrainConfig(kind="baseline", model_config=model_config, patch=(16, 32, 32))
    batch = make_batch([tiny_case()], plain, np.random.default_rng(0), augment=False)
    with torch.no_grad():
        dice_only = batch_loss(model, batch, plain)
        with_bce = batch_loss(model, batch, TrainConfig(**{**plain.to_dict(), "bce_weight": 1.0}))
        logits = model(batch["image"])
    target = torch.zeros_like(logits)
    target[:, 0] = batch["labels"] == 1
    target[:, 1] = batch["labels"] == 2
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(with_bce - dice_only, expected, atol=1e-5)


def test_dice_stage_loss_is_plain_dice_on_the_stage_targets():
    torch.manual_seed(0)
    model = build_model("cascade", TINY_MODEL)
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), stage_loss="dice")
    batch = make_batch([tiny_case()], config, np.random.default_rng(0), augment=False)
    with torch.no_grad():
        loss = batch_loss(model, batch, config, stages=[1])
        logits = model(batch["image"], last_stage=1)[1]
    target = torch.zeros_like(logits)
    keep = (batch["levels"] >= 1) & (batch["levels"] <= 2)  # levels 0 and 1 of the paper
    target[:, 0] = (batch["labels"] == 1) & keep
    target[:, 1] = (batch["labels"] == 2) & keep
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum((2, 3, 4)) + 1) / (prob.sum((2, 3, 4)) + target.sum((2, 3, 4)) + 1)
    assert torch.allclose(loss, 1 - dice.mean(), atol=1e-5)
    with pytest.raises(ValueError, match="stage_loss"):
        TrainConfig(stage_loss="focal")


def testcached_prior_loss_equals_the_full_cascade_loss_when_the_patch_is_the_case():
    """With the whole case as the patch and no augmentation, reading P^{s-1} from the cache gives
    the loss of running stages 0..s (float16 cache: tolerance)."""
    from hipas_core.sts.prior_cache import cached_prior

    torch.manual_seed(0)
    model = build_model("cascade", TINY_MODEL)
    case = tiny_case(shape=(32, 48, 48))
    config = TrainConfig(model_config=TINY_MODEL, patch=(32, 48, 48), mode="stagewise", cached_priors=True,
                         stage_loss="paper", bce_weight=1.0)
    for stage in (1, 3):
        cache = {"stage": stage}

        def prior_of(c, cache=cache):
            return cached_prior(model, cache, c, config=config, device=torch.device("cpu"),
                                 autocast=("cpu", torch.bfloat16, False))

        cached = make_batch([case], config, np.random.default_rng(5), augment=False, prior_of=prior_of)
        plain = make_batch([case], config, np.random.default_rng(5), augment=False)
        assert cached["prior"].shape == (1, 2, 32, 48, 48) and "prior" not in plain
        with torch.no_grad():
            expected_prior = torch.sigmoid(model(plain["image"], last_stage=stage - 1)[-1])
            assert torch.allclose(cached["prior"], expected_prior, atol=2e-3)
            with_cache = batch_loss(model, cached, config, stages=[stage])
            without = batch_loss(model, plain, config, stages=[stage])
        assert torch.allclose(with_cache, without, rtol=1e-3, atol=1e-4)
        assert list(cache) == ["stage", case.name]  # computed once per case


def test_priors_on_disk_are_read_back_and_follow_the_frozen_weights(tmp_path):
    """With prior_cache_dir the prior is written once per case, stage and frozen weights; a new
    cache (a resumed run) reads the same array back; other frozen weights get a file of their own,
    and a change to the stage being trained (or its transmission) does not invalidate it."""
    from hipas_core.sts.prior_cache import cached_prior

    torch.manual_seed(0)
    model = build_model("cascade", TINY_MODEL)
    case = tiny_case(shape=(32, 48, 48))
    config = TrainConfig(model_config=TINY_MODEL, patch=(32, 48, 48), mode="stagewise", cached_priors=True,
                         prior_cache_dir=str(tmp_path / "priors"))

    def prior(cache):
        return cached_prior(model, cache, case, config=config, device=torch.device("cpu"),
                             autocast=("cpu", torch.bfloat16, False))

    first = prior({"stage": 2})
    files = sorted((tmp_path / "priors").iterdir())
    assert len(files) == 1 and files[0].name.startswith(f"{case.name}-prior2-")
    with torch.no_grad():  # the trained stage and its transmission do not feed P^1
        model.stages[2].head.bias.add_(1.0)
        model.transmissions[1].conv1.bias.add_(1.0)
    assert np.array_equal(prior({"stage": 2}), first)
    assert len(list((tmp_path / "priors").iterdir())) == 1
    with torch.no_grad():  # a frozen transmission (it feeds stage 1) changed: a new file, a new prior
        model.transmissions[0].conv1.bias.add_(1.0)
    changed = prior({"stage": 2})
    assert len(list((tmp_path / "priors").iterdir())) == 2 and not np.array_equal(changed, first)
    case.image = case.image.copy()  # the same case prepared again (e.g. noise-harmonized): a new file
    case.image[0, 4:8, 4:8, 4:8] += 0.5
    prior({"stage": 2})
    assert len(list((tmp_path / "priors").iterdir())) == 3


def test_extra_arrays_are_cut_and_flipped_with_the_labels():
    case = tiny_case(2)
    extra = {"prior": np.stack([case.labels == 1, case.labels == 2]).astype(np.float16)}
    sample = sample_patch(case, (16, 32, 32), np.random.default_rng(4), extra=extra)
    again = sample_patch(case, (16, 32, 32), np.random.default_rng(4))
    assert np.array_equal(sample["labels"], again["labels"])  # extra draws nothing from the rng
    augmentation = Augmentation(flip_axes=(0, 1, 2))
    _, (labels, prior) = augmentation.apply(sample["image"], [sample["labels"], sample["prior"]],
                                            np.random.default_rng(1))
    assert np.array_equal(prior[0] > 0.5, labels == 1) and np.array_equal(prior[1] > 0.5, labels == 2)


def test_stagewise_training_withcached_priors_runs_and_is_deterministic(tmp_path):
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=4, lr=1e-3, seed=2, mode="stagewise",
                         stage_steps=(1, 1, 1, 1), cached_priors=True, val_every=4, val_patches=1,
                         checkpoint_every=4, inference_window=(16, 32, 32))
    cases = [tiny_case(0), tiny_case(1)]
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    train(config, cases, output=first, progress=False)
    train(config, cases, output=second, progress=False)
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert a["step"] == 4 and a["training_config"]["cached_priors"] is True
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    with pytest.raises(ValueError, match="cached_priors"):
        train(TrainConfig(**{**config.to_dict(), "mode": "joint"}), cases, output=tmp_path / "c.pt", progress=False)


def test_train_cli_rejectscached_priors_outside_stagewise_cascade(tmp_path, hipas):
    out = tmp_path / "x.pt"
    for extra in (["--baseline"], ["--mode", "joint"]):
        result = hipas("train", "--out", out, "--cached-priors", *extra, "--data", tmp_path, "--steps", "1")
        assert result.returncode == 2 and "--cached-priors" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
