"""The training loops' shared bookkeeping (``hipas_core.training_loop``): RNG capture and restore,
the time budget, the checkpoint payload and resume, files of the layouts before (MAE's
``pretrain_config``, "hipas-i2sr/1"), and one-line errors naming a bad file."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from test_sts_pretrain import tube_volume
from test_sts_training import TINY_MODEL, tiny_case
from test_train_i2sr import TINY, synthetic_pair

from hipas_core import i2sr
from hipas_core.errors import InvalidInputError
from hipas_core.sts.checkpoint import FORMAT as STS_FORMAT
from hipas_core.sts.checkpoint import load_checkpoint, save_checkpoint
from hipas_core.sts.network import StageConfig
from hipas_core.sts.pretrain import PretrainConfig, pretrain
from hipas_core.sts.training import TrainConfig
from hipas_core.sts.training import train as train_sts
from hipas_core.training_loop import (
    TrainingRun,
    cpu_weights,
    error_summary,
    load_payload,
    resume_check,
    write_checkpoint,
)

SHARED_KEYS = ("format", "kind", "model_config", "state_dict", "training_config", "versions", "step", "history",
               "finished", "train_seconds", "optimizer", "rng")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _draws(run: TrainingRun) -> tuple:
    """One draw from each generator a run holds (numpy, global torch, the named "mask")."""
    return (run.rng.integers(0, 2**62, size=4).tolist(), torch.rand(4).tolist(),
            torch.randperm(50, generator=run.generators["mask"]).tolist())


def _tiny_loop(path, steps: int, *, resume: bool = False) -> tuple[TrainingRun, torch.nn.Module]:
    """A loop in the way the three use ``TrainingRun``: numpy data, dropout (the global torch
    RNG) and a named generator, Adam; the checkpoint written at the end."""
    run = TrainingRun(seed=7, generators={"mask": torch.Generator().manual_seed(7)})
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    if resume and path.is_file():
        payload = load_payload(path)
        model.load_state_dict(payload["state_dict"])
        run.resume_from(payload, source=path, optimizer=optimizer)
    run.start()
    while run.step < steps:
        x = torch.from_numpy(run.rng.standard_normal((6, 4)).astype(np.float32))
        target = torch.randn(6, 1, generator=run.generators["mask"])
        loss = ((model(x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step += 1
        run.history.append({"step": run.step, "loss": float(loss.detach())})
    write_checkpoint(path, run.payload(format="test/1", kind="tiny", model_config={"width": 8},
                                       state_dict=cpu_weights(model), training_config={"steps": steps},
                                       optimizer=optimizer, finished=True, extra_key=[1, 2]))
    return run, model


def test_rng_capture_and_restore_continue_the_same_draws(tmp_path):
    run = TrainingRun(seed=11, generators={"mask": torch.Generator().manual_seed(11)})
    _draws(run)  # somewhere in the middle of every stream
    state = run.capture_rng()
    assert set(state) == {"numpy", "torch", "mask"}
    expected = _draws(run)
    write_checkpoint(tmp_path / "rng.pt", {"rng": state})  # and through a file (plain data and tensors)
    other = TrainingRun(seed=99, generators={"mask": torch.Generator().manual_seed(99)})
    assert _draws(other) != expected
    other.restore_rng(load_payload(tmp_path / "rng.pt")["rng"])
    assert _draws(other) == expected
    # a state without the global torch RNG (MAE checkpoints before) leaves that one alone
    numpy_and_mask = {k: v for k, v in state.items() if k != "torch"}
    torch.manual_seed(5)
    before = torch.get_rng_state()
    other.restore_rng(numpy_and_mask)
    assert torch.equal(torch.get_rng_state(), before)
    again = _draws(other)
    assert again[0] == expected[0] and again[2] == expected[2]
    with pytest.raises(KeyError):  # a named generator the state lacks
        other.restore_rng({"numpy": state["numpy"]})


def test_seeding_matches_the_loops_of_before():
    run = TrainingRun(seed=3)
    assert run.rng.integers(0, 1000, size=5).tolist() == np.random.default_rng(3).integers(0, 1000, size=5).tolist()
    torch.manual_seed(3)
    expected = torch.rand(3)
    TrainingRun(seed=3)
    assert torch.equal(torch.rand(3), expected)


def test_out_of_time_and_train_seconds():
    assert not TrainingRun(seed=0).out_of_time()  # no budget
    run = TrainingRun(seed=0, max_minutes=0.2 / 60)  # 0.2 s
    time.sleep(0.3)
    run.start()  # the budget counts from the start of the loop, not from creation
    assert not run.out_of_time()
    time.sleep(0.3)
    assert run.out_of_time()
    assert not TrainingRun(seed=0, max_minutes=10.0).out_of_time()

    run = TrainingRun(seed=0)
    run.seconds_before = 100.0
    time.sleep(0.2)
    run.start()
    assert 100.0 <= run.train_seconds < 100.1  # setup not counted, the resumed runs' time added
    counted = TrainingRun(seed=0)
    time.sleep(0.2)
    counted.start(count_setup=True)
    assert counted.train_seconds >= 0.2  # I2SR counts fitting O_F and preparing data


def test_payload_round_trip_and_resume_continue_exactly(tmp_path):
    straight, model = _tiny_loop(tmp_path / "straight.pt", 6)
    _tiny_loop(tmp_path / "resumed.pt", 3)
    first = load_payload(tmp_path / "resumed.pt")
    assert list(first)[:len(SHARED_KEYS)] == list(SHARED_KEYS) and first["extra_key"] == [1, 2]
    assert first["step"] == 3 and first["finished"] and "torch" in first["versions"] and first["train_seconds"] >= 0
    resumed, resumed_model = _tiny_loop(tmp_path / "resumed.pt", 6, resume=True)
    assert resumed.history == straight.history  # the same losses, step for step
    assert resumed.seconds_before == first["train_seconds"] and resumed.train_seconds >= first["train_seconds"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left


def test_mae_checkpoint_with_pretrain_config_is_read_and_resumed(tmp_path):
    """MAE files written before name the config ``pretrain_config`` and keep no torch RNG state."""
    volumes = [tube_volume(2, shape=(24, 40, 40))]
    stage = StageConfig(in_channels=4, width=4, blocks_per_level=(0, 1, 1, 1, 1))
    config = PretrainConfig(stage=stage.to_dict(), patch=(16, 32, 32), steps=4, mask_cube=16, seed=5, checkpoint_every=2)
    pretrain(config, volumes, output=tmp_path / "straight.pt", progress=False)
    pretrain(PretrainConfig(**{**config.to_dict(), "steps": 2}), volumes, output=tmp_path / "old.pt", progress=False)
    new = load_payload(tmp_path / "old.pt")
    old = {("pretrain_config" if k == "training_config" else k): v for k, v in new.items()}
    old["rng"] = {"numpy": new["rng"]["numpy"], "mask": new["rng"]["mask"]}
    save_checkpoint(tmp_path / "old.pt", old)
    state = load_checkpoint(tmp_path / "old.pt")
    assert state["training_config"] == config.to_dict() | {"steps": 2} and "pretrain_config" not in state
    pretrain(config, volumes, output=tmp_path / "old.pt", resume=True, progress=False)
    straight, resumed = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "old.pt")
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert all(torch.equal(v, resumed["state_dict"][k]) for k, v in straight["state_dict"].items())
    assert set(resumed["rng"]) == {"numpy", "torch", "mask"}


def _as_format_1(source, destination) -> None:
    """Rewrite an I2SR checkpoint as ``save_model`` wrote "hipas-i2sr/1" (resume state nested)."""
    payload = load_payload(source)
    old = {"format": "hipas-i2sr/1", "config": payload["model_config"], "state_dict": payload["state_dict"],
           "versions": payload["versions"], "training": payload["training"]}
    if "optimizer" in payload:
        old["resume"] = {
            "step": payload["step"], "optimizer": payload["optimizer"], "vesselness_net": payload["vesselness_net"],
            "rng": payload["rng"]["numpy"], "torch_rng": payload["rng"]["torch"],
            "losses": [h["loss"] for h in payload["history"]],
            "baselines": [h["linear_loss"] for h in payload["history"]], "seconds": payload["train_seconds"],
        }
    torch.save(old, destination)


def test_i2sr_format_1_still_loads_shows_its_info_and_resumes(tmp_path):
    pairs = [synthetic_pair(0), synthetic_pair(1, thickness=4.0, first_position=0.5)]
    settings = dict(seed=3, config=TINY, pairs=pairs, patch_depth=10, patch_size=12, vesselness_steps=2, log_every=0)
    whole, record = i2sr.train(steps=4, output=tmp_path / "whole.pt", **settings)
    payload = load_payload(tmp_path / "whole.pt")
    assert payload["format"] == i2sr.CHECKPOINT_FORMAT == "hipas-i2sr/2" and payload["kind"] == "i2sr"
    assert set(SHARED_KEYS) <= set(payload) and [h["step"] for h in payload["history"]] == [1, 2, 3, 4]
    assert [h["loss"] for h in payload["history"]] == record["last_losses"]

    i2sr.train(steps=2, output=tmp_path / "part.pt", **settings)
    _as_format_1(tmp_path / "part.pt", tmp_path / "old.pt")
    info = i2sr.checkpoint_info(tmp_path / "old.pt")
    assert info["config"] == i2sr.checkpoint_info(tmp_path / "part.pt")["config"] and info["training"]["step"] == 2
    assert "torch" in info["versions"]
    loaded = i2sr.load_model(tmp_path / "old.pt")
    for name, tensor in i2sr.load_model(tmp_path / "part.pt").state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    resumed, record = i2sr.train(steps=4, output=tmp_path / "old.pt", resume=True, **settings)
    assert record["resumed_at_steps"] == [2] and load_payload(tmp_path / "old.pt")["format"] == "hipas-i2sr/2"
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name

    # the shipped model is a format-1 file written for inference: it loads and tells its record
    from hipas_core.resources import shipped_model

    shipped = shipped_model("i2sr-demo.pt")
    assert load_payload(shipped)["format"] == "hipas-i2sr/1"
    assert i2sr.load_model(shipped).config == i2sr.I2SRConfig(**i2sr.checkpoint_info(shipped)["config"])
    with pytest.raises(InvalidInputError, match="no training state"):
        i2sr.checkpoint.load_training_state(shipped)


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    i2sr.save_model(i2sr.I2SRNet(TINY), tmp_path / "good.pt")
    corrupt.write_bytes((tmp_path / "good.pt").read_bytes()[:300])  # a truncated torch file
    for read in (load_checkpoint, i2sr.load_model, i2sr.checkpoint_info, i2sr.checkpoint.load_training_state):
        with pytest.raises(InvalidInputError, match="corrupt.pt") as caught:
            read(corrupt)
        assert len(str(caught.value).splitlines()) == 1

    with pytest.raises(InvalidInputError, match=r"run\.pt: cannot resume from this checkpoint \(KeyError: 'numpy'\)"):
        TrainingRun(seed=0).resume_from({"step": 2, "rng": {}}, source=tmp_path / "run.pt")
    with pytest.raises(InvalidInputError, match=r"run\.pt: cannot resume .*ValueError"):
        TrainingRun(seed=0).resume_from({"step": "two"}, source=tmp_path / "run.pt")
    with pytest.raises(InvalidInputError, match=r"x\.pt: cannot resume .*TypeError: boom"), resume_check("x.pt"):
        raise TypeError("boom\nsecond line")
    assert error_summary(ValueError("")) == "ValueError"

    # an STS checkpoint whose RNG state is broken: resume fails before any step, the file kept
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=1, seed=0, val_every=1, val_patches=1)
    out = tmp_path / "sts.pt"
    train_sts(config, [tiny_case()], output=out, progress=False)
    payload = load_payload(out)
    assert payload["format"] == STS_FORMAT and set(SHARED_KEYS) <= set(payload)
    save_checkpoint(out, {**payload, "rng": {"numpy": {"state": "not a state"}}})
    before = out.read_bytes()
    with pytest.raises(InvalidInputError, match="sts.pt: cannot resume from this checkpoint"):
        train_sts(TrainConfig(**{**config.to_dict(), "steps": 2}), [tiny_case()], output=out, resume=True,
                  progress=False)
    assert out.read_bytes() == before
