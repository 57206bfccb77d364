"""I2SR super-resolution (hipas_core.i2sr) and ``hipas super-resolve``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hipas_core.errors import InvalidInputError
from hipas_core.i2sr import (
    I2SRConfig,
    I2SRNet,
    VesselnessNet,
    i2sr_loss,
    interpolate_z,
    load_model,
    make_training_pair,
    output_positions,
    poisson_noise,
    save_model,
    simulate_thick,
    super_resolve,
    super_resolve_array,
    synthetic_vessel_volume,
    thick_slice_profile,
    train,
)
from hipas_core.resources import shipped_model
from hipas_core.writers import write_image

TINY = I2SRConfig(channels=4, fe_blocks=1, i2ff_layers=1)
DEMO_MODEL = shipped_model("i2sr-demo.pt")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def perturbed(config=TINY, seed=0):
    """A model whose residual is not zero (the reconstruction layer starts at zero)."""
    torch.manual_seed(seed)
    model = I2SRNet(config)
    torch.nn.init.normal_(model.re2.weight, std=0.2)
    return model.eval()


def test_output_positions_are_one_mm_apart():
    positions = output_positions(9, 2.5)
    np.testing.assert_allclose(positions * 2.5, np.arange(21))
    assert len(output_positions(5, 3.0)) == 13


def test_slice_profile_weights():
    weights = thick_slice_profile(21, 2.5)
    assert weights.shape == (9, 21)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    ramp = np.arange(21, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    thick = simulate_thick(ramp, 2.5)
    np.testing.assert_allclose(thick[1:-1, 0, 0], np.arange(1, 8) * 2.5, atol=1e-5)  # box is symmetric


def test_network_shapes_and_untrained_model_is_linear():
    model = I2SRNet(TINY).eval()
    thick = torch.rand(2, 1, 5, 12, 10)
    positions = torch.from_numpy(output_positions(5, 3.0))
    with torch.no_grad():
        out = model(thick, positions)
    assert out.shape == (2, 1, 13, 12, 10)
    torch.testing.assert_close(out, interpolate_z(thick, positions))


def test_tiled_inference_equals_whole_volume():
    model = perturbed()
    thick = simulate_thick(synthetic_vessel_volume(3, shape=(25, 24, 22)), 3.0)
    whole = super_resolve_array(thick, 3.0, model=model, slab_slices=100, tile_voxels=100)
    tiled = super_resolve_array(thick, 3.0, model=model, slab_slices=4, tile_voxels=13)
    assert whole.shape == (25, 24, 22)
    np.testing.assert_allclose(tiled, whole, atol=0.05)  # HU
    assert np.abs(whole - super_resolve_array(thick, 3.0, model=I2SRNet(TINY))).max() > 1.0


def test_super_resolve_output_grid():
    hu = simulate_thick(synthetic_vessel_volume(4, shape=(21, 20, 22)), 2.5)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.75, 2.5))
    image.SetOrigin((5.0, -3.0, -100.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0))
    out = super_resolve(image, model=perturbed())
    assert out.GetSize() == (22, 20, 21)
    assert out.GetSpacing() == (0.7, 0.75, 1.0)
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    assert out.GetPixelID() == sitk.sitkFloat32


def test_poisson_noise_grows_as_counts_fall():
    hu = torch.full((20000,), 40.0)
    generator = torch.Generator().manual_seed(0)
    low_dose = poisson_noise(hu, 500.0, generator)
    high_dose = poisson_noise(hu, 50000.0, generator)
    assert abs(float(high_dose.mean()) - 40.0) < 5.0
    assert float(low_dose.std()) > 3 * float(high_dose.std()) > 0


def test_a_few_training_steps_lower_the_loss():
    rng = np.random.default_rng(0)
    volume = synthetic_vessel_volume(5, shape=(21, 32, 32))
    thick, positions, truth = make_training_pair(volume, 3.0, rng, depth=13, size=16, noise=False)
    thick, truth = thick[None], truth[None]
    torch.manual_seed(0)
    model, o_f = I2SRNet(TINY), VesselnessNet(channels=4, layers=3)
    for parameter in o_f.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = i2sr_loss(model, o_f, thick, positions, truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_train_entry_point_and_checkpoint_round_trip(tmp_path):
    volumes = [synthetic_vessel_volume(6, shape=(17, 24, 24))]
    model, record = train(steps=3, seed=1, config=TINY, volumes=volumes, patch_depth=13, patch_size=16,
                          vesselness_steps=3, log_every=0)
    assert record["steps"] == 3 and len(record["last_losses"]) == 3
    save_model(model, tmp_path / "m.pt", training=record)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config == TINY
    thick = torch.rand(1, 1, 5, 16, 16)
    positions = torch.from_numpy(output_positions(5, 2.5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(thick, positions), model(thick, positions))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(InvalidInputError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")


def test_demo_model_is_shipped_small_and_loads():
    assert DEMO_MODEL.is_file() and DEMO_MODEL.stat().st_size <= 5 * 1024 * 1024
    model = load_model(DEMO_MODEL)
    assert model.config.target_spacing_mm == 1.0


def _thick_nifti(path: Path, spacing_z: float) -> Path:
    hu = np.round(simulate_thick(synthetic_vessel_volume(7, shape=(41, 20, 20)), spacing_z)).astype(np.int16)
    hu = np.concatenate([hu] * 2) if hu.shape[0] < 16 else hu
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.7, spacing_z))
    write_image(path, image)
    return path


def test_cli_super_resolve_thick_input(tmp_path, hipas):
    model_path = tmp_path / "tiny.pt"
    save_model(perturbed(), model_path)
    source = _thick_nifti(tmp_path / "thick.nii.gz", 2.5)
    out = tmp_path / "sr.nii.gz"
    result = hipas("super-resolve", "-i", source, "-o", out, "--model", model_path)
    assert result.returncode == 0, result.stderr
    image = sitk.ReadImage(str(out))
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.7, 1.0), rtol=1e-6)
    assert image.GetSize()[2] == int((sitk.ReadImage(str(source)).GetSize()[2] - 1) * 2.5) + 1
    sidecar = json.loads((tmp_path / "sr.json").read_text())
    assert sidecar["copied_through"] is False and sidecar["input_slice_thickness_mm"] == 2.5
    assert len(sidecar["hipas_parameters"]["model_sha256"]) == 64


def test_cli_super_resolve_copies_thin_input(tmp_path, hipas):
    source = _thick_nifti(tmp_path / "thin.nii.gz", 1.25)
    out = tmp_path / "sr.nii.gz"
    result = hipas("super-resolve", "-i", source, "-o", out, "--model", tmp_path / "absent.pt")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(source))))
    sidecar = json.loads((tmp_path / "sr.json").read_text())
    assert sidecar["copied_through"] is True and "copied unchanged" in sidecar["reason"]


def test_cli_super_resolve_bad_model_exits_2(tmp_path, hipas):
    source = _thick_nifti(tmp_path / "thick.nii.gz", 3.0)
    out = tmp_path / "sr.nii.gz"
    result = hipas("super-resolve", "-i", source, "-o", out, "--model", tmp_path / "absent.pt")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "absent.pt" in result.stderr
    assert not out.exists() and not (tmp_path / "sr.json").exists()


def test_cli_super_resolve_threshold_option_copies_below_it(tmp_path, hipas):
    source = _thick_nifti(tmp_path / "thick.nii.gz", 3.0)
    out = tmp_path / "sr.nii.gz"
    result = hipas("super-resolve", "-i", source, "-o", out, "--threshold-mm", "3.5",
                   "--model", tmp_path / "absent.pt")
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "sr.json").read_text())
    assert sidecar["copied_through"] is True and sidecar["threshold_mm"] == 3.5
