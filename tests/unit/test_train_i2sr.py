"""I2SR training on phantom pairs (hipas_core.i2sr.data / training / evaluation) and ``hipas train-i2sr``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hipas_core.cli import main
from hipas_core.i2sr import (
    I2SRConfig,
    I2SRNet,
    PhantomPair,
    checkpoint_info,
    evaluate_pairs,
    load_model,
    output_positions,
    phantom_pairs,
    save_model,
    simulate_thick,
    super_resolve_array,
    synthetic_vessel_volume,
    train,
)
from hipas_core.i2sr.data import pair_crops

TINY = I2SRConfig(channels=4, fe_blocks=1, i2ff_layers=1)
# a 2-step run on one small phantom at 5 mm, evaluated on one small synthetic volume
TINY_RUN = ["--phantom-seeds", "3", "--thicknesses", "5", "--steps", "2", "--patch", "8", "16", "--batch-size", "2",
            "--vesselness-steps", "2", "--eval-data", "synthetic", "--eval-volumes", "1", "--eval-thicknesses", "5",
            "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def synthetic_pair(seed: int = 0, thickness: float = 2.5, first_position: float = 0.0) -> PhantomPair:
    """A pair made of a synthetic 1 mm volume and its box-profile thick slices (no generator)."""
    thin = synthetic_vessel_volume(seed, shape=(31, 28, 28))
    thick = simulate_thick(thin, thickness)
    keep = int(np.floor((thick.shape[0] - 1 - first_position) * thickness + 1e-6)) + 1  # within the thick span
    return PhantomPair(seed=seed, protocol="ncct", thickness_mm=thickness, inplane_spacing_mm=0.7,
                       thin=np.round(thin[:keep]).astype(np.int16), thick=np.round(thick).astype(np.int16),
                       labels=((thin[:keep] > -300) & (thin[:keep] < 300)).astype(np.uint8),
                       first_position=first_position)


def test_phantom_pair_is_one_anatomy_on_one_grid(tmp_path):
    """The thick acquisition is the mean of 1 mm sub-slices of the same anatomy: the 1 mm target,
    averaged over each thick slice's profile at the pair's positions, matches it best unshifted."""
    (pair,) = phantom_pairs([(5, "ctpa")], (3.0,), cache_dir=tmp_path)
    assert pair.thin.shape[1:] == pair.thick.shape[1:] and pair.thin.dtype == np.int16
    assert pair.positions[0] >= 0 and pair.positions[-1] <= pair.thick.shape[0] - 1
    thin = pair.thin.astype(np.float32)

    sub_slices = int(round(pair.thickness_mm))  # the generator's 1 mm sub-slices per thick slice
    offsets = ((np.arange(sub_slices) + 0.5) / sub_slices - 0.5) * pair.thickness_mm

    def mismatch(shift_mm: float) -> float:
        """Mean |thick - profile average of the 1 mm target| (HU), the target shifted by ``shift_mm``."""
        errors = []
        for k in range(pair.thick.shape[0]):
            at = (k - pair.first_position) * pair.thickness_mm + shift_mm + offsets  # thin-slice indices
            if at.min() >= 0 and at.max() <= thin.shape[0] - 1:
                lower = np.floor(at).astype(int)
                upper, weight = np.minimum(lower + 1, thin.shape[0] - 1), (at - lower)[:, None, None]
                average = ((1 - weight) * thin[lower] + weight * thin[upper]).mean(axis=0)
                errors.append(np.abs(average - pair.thick[k]).mean())
        return float(np.mean(errors))

    assert mismatch(0.0) < 0.8 * min(mismatch(-1.0), mismatch(1.0))
    (again,) = phantom_pairs([(5, "ctpa")], (3.0,), cache_dir=tmp_path)  # read from the cache
    np.testing.assert_array_equal(again.thick, pair.thick)
    assert again.first_position == pair.first_position and len(list(tmp_path.iterdir())) == 1


def test_pair_crops_share_positions_and_cut_both_acquisitions_alike():
    pair = synthetic_pair(first_position=0.2)
    crops = pair_crops(pair, np.random.default_rng(0), count=3, depth=12, size=16)
    assert len(crops) == 3
    for thick, positions, truth in crops:
        assert thick.shape[0] == 1 and thick.shape[2:] == (16, 16) and truth.shape == (1, 12, 16, 16)
        assert float(positions.min()) >= 0 and float(positions.max()) <= thick.shape[1] - 1
        torch.testing.assert_close(positions, crops[0][1])
        assert float(thick.min()) >= 0.0 and float(thick.max()) <= 1.0  # windowed


def test_positions_option_and_untrained_model_is_linear_on_pairs():
    model = I2SRNet(TINY).eval()
    pair = synthetic_pair(first_position=0.3)
    default = super_resolve_array(pair.thick.astype(np.float32), 2.5, model=model, progress="off")
    explicit = super_resolve_array(pair.thick.astype(np.float32), 2.5, model=model, progress="off",
                                   positions=output_positions(pair.thick.shape[0], 2.5))
    np.testing.assert_array_equal(default, explicit)
    (row,) = evaluate_pairs(model, [pair], crop=(10, 20, 20))
    assert row["psnr_i2sr"] == pytest.approx(row["psnr_linear"]) and row["thickness_mm"] == 2.5
    assert row["psnr_vessels_i2sr"] == pytest.approx(row["psnr_vessels_linear"])


def test_training_on_pairs_resumes_exactly(tmp_path):
    pairs = [synthetic_pair(0), synthetic_pair(1, thickness=4.0, first_position=0.5)]
    settings = dict(seed=3, config=TINY, pairs=pairs, patch_depth=10, patch_size=12, vesselness_steps=2, log_every=0)
    whole, record = train(steps=4, output=tmp_path / "whole.pt", **settings)
    assert record["finished"] and record["step"] == 4 and len(record["last_losses"]) == 4
    train(steps=2, output=tmp_path / "part.pt", **settings)
    resumed, record = train(steps=4, output=tmp_path / "part.pt", resume=True, **settings)
    assert record["resumed_at_steps"] == [2] and record["step"] == 4
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0)
    assert checkpoint_info(tmp_path / "part.pt")["training"]["finished"] is True


def test_cli_train_i2sr_writes_a_checkpoint_load_model_reads(tmp_path, capsys):
    out, report = tmp_path / "i2sr.pt", tmp_path / "eval.json"
    assert main(["train-i2sr", "--out", str(out), "--cache", str(tmp_path / "cache"), "--report", str(report),
                 *TINY_RUN]) == 0
    model = load_model(out)
    assert model.config == I2SRConfig()
    info = checkpoint_info(out)["training"]
    assert info["step"] == 2 and info["finished"] and info["data"]["plan"] == [[3, "ncct", [5.0]]]
    means = json.loads(capsys.readouterr().out)
    assert set(means["synthetic"]["5 mm"]) == {"psnr_i2sr", "psnr_linear", "psnr_vessels_i2sr", "psnr_vessels_linear"}
    assert json.loads(report.read_text())["rows"]["synthetic"][0]["thickness_mm"] == 5.0
    # evaluating checkpoints only: the shipped-format file and the new one, on the same data
    assert main(["train-i2sr", "--evaluate", str(out), "--eval-data", "synthetic", "--eval-volumes", "1",
                 "--eval-thicknesses", "5"]) == 0
    assert f"{out} synthetic" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("options", "words"), [
    (["--steps", "0"], "--steps 0"),
    (["--thicknesses", "0.8"], "--thicknesses 0.8"),
    (["--eval-seeds", "3"], "also train"),
    (["--phantom-seeds", "two"], "--phantom-seeds two"),
    (["--lr", "-1"], "--lr -1"),
    (["--thicknesses-per-seed", "3"], "--thicknesses-per-seed 3"),
])
def test_cli_bad_options_are_one_line_and_exit_2(options, words, tmp_path, capsys):
    out = tmp_path / "i2sr.pt"
    assert main(["train-i2sr", "--out", str(out), *TINY_RUN, *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hipas train-i2sr: error: ") and words in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_needs_out_and_resumes_only_from_a_training_checkpoint(tmp_path, capsys):
    assert main(["train-i2sr", *TINY_RUN]) == 2
    assert "--out" in capsys.readouterr().err
    text, inference_only = tmp_path / "text.pt", tmp_path / "inference.pt"
    text.write_text("not a checkpoint\n")
    save_model(I2SRNet(TINY), inference_only)
    for path, words in ((text, "not an I2SR checkpoint"), (inference_only, "no training state")):
        before = path.read_bytes()
        assert main(["train-i2sr", "--out", str(path), "--resume", *TINY_RUN]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and path.name in err[0] and words in err[0], err
        assert path.read_bytes() == before
    assert main(["train-i2sr", "--evaluate", str(text), "--eval-data", "synthetic"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
