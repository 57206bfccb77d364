"""MAE pre-training of the STS stage encoder: masks, no leak through masked cubes, loss goes down,
checkpoint round trip, transfer into a cascade (exact copy, frozen), ``hipas pretrain`` CLI."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hipas_core.errors import InvalidInputError
from hipas_core.sts.cascade import CascadeConfig, STSCascade
from hipas_core.sts.checkpoint import load_checkpoint
from hipas_core.sts.network import StageConfig, StageNet
from hipas_core.sts.pretrain import (
    ENCODER_PREFIXES,
    MaskedAutoencoder,
    PretrainConfig,
    load_pretrained_encoder,
    masked_l2_loss,
    pretrain,
    random_cube_mask,
)

TINY_STAGE = StageConfig(in_channels=4, width=4, blocks_per_level=(1, 1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tube_volume(seed: int = 0, shape=(40, 72, 72)) -> np.ndarray:
    """(2, Z, Y, X) float16 like ``TrainingCase.image``: a lung-grey background with bright tubes
    and noise (channel 0) and a vesselness-like tube indicator (channel 1)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    ct = 0.1 + 0.02 * rng.standard_normal(shape)
    tubes = np.zeros(shape, bool)
    for _ in range(6):
        cy, cx = rng.integers(8, shape[1] - 8, size=2)
        tubes |= ((y - cy) ** 2 + (x - cx) ** 2) <= 9 if rng.random() < 0.5 else ((z - cy % shape[0]) ** 2 + (y - cx) ** 2) <= 9
    ct[tubes] = 0.65
    return np.stack([ct, tubes * 0.8]).astype(np.float16)


def test_random_cube_mask_ratio_alignment_and_determinism():
    shape, cube = (32, 64, 96), 16
    mask = random_cube_mask(shape, cube=cube, ratio=0.6, generator=torch.Generator().manual_seed(3))
    assert mask.shape == shape and mask.dtype == torch.bool
    cubes = mask.reshape(2, cube, 4, cube, 6, cube).permute(0, 2, 4, 1, 3, 5).reshape(48, -1)
    assert bool(((cubes.all(dim=1)) | (~cubes.any(dim=1))).all())  # every cube wholly masked or visible
    assert int(cubes[:, 0].sum()) == round(0.6 * 48)  # exactly 29 of 48 cubes
    again = random_cube_mask(shape, cube=cube, ratio=0.6, generator=torch.Generator().manual_seed(3))
    other = random_cube_mask(shape, cube=cube, ratio=0.6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    paper = random_cube_mask((64, 96, 96), generator=torch.Generator().manual_seed(0))  # 32^3 cubes, 60 %
    assert int(paper.sum()) == round(0.6 * 18) * 32**3


def test_masked_cubes_carry_no_information_into_the_encoder():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(TINY_STAGE).eval()
    mask = random_cube_mask((32, 64, 64), cube=16, ratio=0.6, generator=torch.Generator().manual_seed(1))[None]
    image = torch.rand(1, 4, 32, 64, 64)
    changed = image.clone()
    changed[:, :, mask[0]] = torch.rand(4, int(mask.sum())) * 10 - 5  # anything at all under the mask
    with torch.no_grad():
        first, second = mae.encode(image, mask), mae.encode(changed, mask)
        unmasked_changed = image.clone()
        unmasked_changed[:, :, ~mask[0]] += 0.5
        third = mae.encode(unmasked_changed, mask)
    assert len(first) == 5
    for level, (a, b) in enumerate(zip(first, second, strict=True)):
        assert torch.equal(a, b), f"level {level} depends on masked voxels"
        coarse = torch.nn.functional.max_pool3d((~mask).float()[:, None], 2**level)[:, 0] > 0
        assert float(a[0][:, ~coarse[0]].abs().max()) == 0.0  # nothing at masked positions (sparse emulation)
        assert float(a[0][:, coarse[0]].abs().max()) > 0.0
    assert not torch.equal(first[-1], third[-1])  # but visible voxels do matter


def test_pretrain_lowers_the_reconstruction_loss_and_checkpoint_round_trips(tmp_path):
    volumes = [tube_volume(0), tube_volume(1)]
    config = PretrainConfig(stage=TINY_STAGE.to_dict(), patch=(32, 64, 64), steps=6, lr=1e-2, mask_cube=16, seed=0,
                            checkpoint_every=100)
    out = tmp_path / "mae.pt"
    summary = pretrain(config, volumes, output=out, progress=False)
    assert summary["step"] == config.steps and summary["kind"] == "mae-encoder"
    state = load_checkpoint(out)
    assert set(state["state_dict"]) == {k for k in StageNet(TINY_STAGE).state_dict() if k.startswith(ENCODER_PREFIXES)}
    assert state["training_config"]["mask_ratio"] == 0.6 and "torch" in state["versions"]
    assert "pretrain_config" not in state and set(state["rng"]) == {"numpy", "torch", "mask"}

    # fixed evaluation patch and mask: the trained autoencoder reconstructs the masked CT better
    image = torch.from_numpy(np.concatenate([volumes[0][:, 4:36, 4:68, 4:68].astype(np.float32),
                                             np.zeros((2, 32, 64, 64), np.float32)]))[None]
    mask = random_cube_mask((32, 64, 64), cube=16, generator=torch.Generator().manual_seed(99))[None]
    torch.manual_seed(config.seed)
    fresh = MaskedAutoencoder(TINY_STAGE).eval()
    trained = MaskedAutoencoder(TINY_STAGE).eval()
    trained.load_state_dict({**state["state_dict"], **state["decoder_state_dict"]})
    with torch.no_grad():
        before = float(masked_l2_loss(fresh(image, mask), image[:, :1], mask))
        after = float(masked_l2_loss(trained(image, mask), image[:, :1], mask))
    assert after < 0.5 * before, (before, after)
    print(f"masked L2 fixed patch: {before:.4f} -> {after:.4f}")


def test_pretrain_is_deterministic_and_resumes_exactly(tmp_path):
    volumes = [tube_volume(2, shape=(24, 40, 40))]
    stage = StageConfig(in_channels=4, width=4, blocks_per_level=(0, 1, 1, 1, 1))
    config = PretrainConfig(stage=stage.to_dict(), patch=(16, 32, 32), steps=4, mask_cube=16, seed=5, checkpoint_every=2)
    pretrain(config, volumes, output=tmp_path / "a.pt", progress=False)
    straight = load_checkpoint(tmp_path / "a.pt")
    pretrain(PretrainConfig(**{**config.to_dict(), "steps": 2}), volumes, output=tmp_path / "b.pt", progress=False)
    pretrain(config, volumes, output=tmp_path / "b.pt", resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "b.pt")
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    for key, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][key]), key


def test_load_pretrained_encoder_copies_exactly_and_freezes(tmp_path):
    from hipas_core.sts.checkpoint import save_checkpoint

    torch.manual_seed(1)
    mae = MaskedAutoencoder(TINY_STAGE)
    encoder = mae.encoder_state_dict()
    path = tmp_path / "mae.pt"
    save_checkpoint(path, {"kind": "mae-encoder", "model_config": TINY_STAGE.to_dict(), "state_dict": encoder})
    cascade = STSCascade(CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(1, 1, 1, 1, 1))))
    decoder_before = {k: v.clone() for k, v in cascade.stages[2].state_dict().items() if not k.startswith(ENCODER_PREFIXES)}
    assert load_pretrained_encoder(cascade, path, freeze=True) == 4
    for stage in cascade.stages:
        own = stage.state_dict()
        for key, tensor in encoder.items():
            assert torch.equal(own[key], tensor), key
        for name, parameter in stage.named_parameters():
            frozen = name.startswith(ENCODER_PREFIXES) and name != "stem.weight"
            assert parameter.requires_grad is not frozen, name
    for key, tensor in decoder_before.items():  # decoder untouched
        assert torch.equal(cascade.stages[2].state_dict()[key], tensor)

    # the stem's pre-trained (CT, vesselness) inputs get no gradient; the prior inputs do
    cascade(torch.rand(1, 2, 16, 32, 32))[-1].sum().backward()
    grad = cascade.stages[1].stem.weight.grad
    assert float(grad[:, :2].abs().max()) == 0.0 and float(grad[:, 2:].abs().max()) > 0.0

    plain = StageNet(TINY_STAGE)
    load_pretrained_encoder(plain, path, freeze=False)
    assert all(p.requires_grad for p in plain.parameters())
    assert torch.equal(plain.state_dict()["bottleneck.0.fuse.weight"], encoder["bottleneck.0.fuse.weight"])

    wider = STSCascade(CascadeConfig(stage=StageConfig(width=8, blocks_per_level=(1, 1, 1, 1, 1))))
    with pytest.raises(InvalidInputError, match="does not fit"):
        load_pretrained_encoder(wider, path)


def test_training_with_encoder_init_keeps_the_encoder_fixed(tmp_path):
    from hipas_core.sts.checkpoint import save_checkpoint
    from hipas_core.sts.data import TrainingCase, level_territories
    from hipas_core.sts.losses import level_weights
    from hipas_core.sts.training import TrainConfig, train

    stage = StageConfig(in_channels=4, width=4, blocks_per_level=(0, 1, 1, 1, 1))
    torch.manual_seed(2)
    path = tmp_path / "mae.pt"
    encoder = MaskedAutoencoder(stage).encoder_state_dict()
    save_checkpoint(path, {"kind": "mae-encoder", "model_config": stage.to_dict(), "state_dict": encoder})
    shape = (16, 32, 32)
    labels = np.zeros(shape, np.uint8)
    labels[:, 10:13, 10:13] = 1
    labels[8:11, 20:23, :] = 2
    levels = np.where(labels > 0, 1, 0).astype(np.uint8)
    image = np.stack([0.1 + 0.6 * (labels > 0), 0.8 * (labels > 0)]).astype(np.float16)
    case = TrainingCase(name="t", image=image, labels=labels, levels=levels, lungs=np.ones(shape, np.uint8),
                        territory=level_territories(levels), weights=level_weights(levels, labels))
    config = TrainConfig(model_config=CascadeConfig(stage=stage).to_dict(), patch=shape, steps=2, lr=1e-2,
                         mode="stagewise", val_every=100, val_patches=1, checkpoint_every=100,
                         encoder_init=str(path))
    train(config, [case], output=tmp_path / "cascade.pt", progress=False)
    weights = load_checkpoint(tmp_path / "cascade.pt")["state_dict"]
    for key, tensor in encoder.items():
        if key == "stem.weight":
            assert torch.equal(weights[f"stages.0.{key}"][:, :2], tensor[:, :2])
        else:
            assert torch.equal(weights[f"stages.0.{key}"], tensor), key
    torch.manual_seed(config.seed)  # the initial weights train() starts from
    fresh = STSCascade(CascadeConfig(stage=stage)).state_dict()
    assert not torch.equal(weights["stages.0.head.weight"], fresh["stages.0.head.weight"])  # the decoder learned


def _write_ct(path, shape=(24, 48, 48), seed=0):
    """A tiny chest-like CT in HU (body, two lungs, a bright vessel) with 1 x 0.65 x 0.65 mm voxels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    ct = np.full(shape, -1000.0)
    ct[((y - 24) ** 2 + (x - 24) ** 2) < 22**2] = 40.0
    ct[(np.abs(y - 24) < 12) & (((x > 6) & (x < 21)) | ((x > 27) & (x < 42)))] = -850.0
    ct[((y - 22) ** 2 + (x - 14) ** 2) <= 4] = 300.0
    image = sitk.GetImageFromArray((ct + rng.normal(0, 10, shape)).astype(np.int16))
    image.SetSpacing((334 / 512, 334 / 512, 1.0))
    sitk.WriteImage(image, str(path))


def test_hipas_pretrain_cli_tiny_run_and_bad_input(tmp_path, hipas):
    images = tmp_path / "images"
    images.mkdir()
    _write_ct(images / "a.nii.gz", seed=0)
    _write_ct(images / "b.nii.gz", seed=1)
    out = tmp_path / "mae.pt"
    common = ["--patch", "16", "32", "32", "--mask-cube", "16", "--width", "4", "--blocks", "0", "1", "1", "1", "1",
              "--threads", "1", "--no-progress"]
    result = hipas("pretrain", "--images", images, "--out", out, "--steps", "2", *common)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(out)
    assert state["step"] == 2 and state["model_config"]["width"] == 4 and state["data"]["volumes"] == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    result = hipas("pretrain", "--images", empty, "--out", tmp_path / "x.pt", "--steps", "1", *common)
    assert result.returncode == 2 and str(empty) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()

    (empty / "broken.nii.gz").write_bytes(b"not a nifti at all")
    result = hipas("pretrain", "--images", empty, "--out", tmp_path / "x.pt", "--steps", "1", *common)
    assert result.returncode == 2 and "broken.nii.gz" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
