"""Prepared training sets: hipas prepare-training writes case folders atomically, they round-trip
to the TrainingCase the in-memory path builds, the DataLoader stream draws exactly the in-memory
patches, bad cases exit 2 (or become excluded cases), a HiPaS-layout replica prepares and trains,
and the workflow plans the training set. Tiny: one small phantom, generated once per module."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hipas_core.cli import main as hipas_main
from hipas_core.exclusion import read_marker
from hipas_core.sts.batches import make_batch, patch_seed_batch
from hipas_core.sts.cascade import CascadeConfig
from hipas_core.sts.checkpoint import load_checkpoint
from hipas_core.sts.data import TrainingCase, level_territories
from hipas_core.sts.losses import level_weights
from hipas_core.sts.network import StageConfig
from hipas_core.sts.phantom_cases import phantom_case
from hipas_core.sts.prepared import load_prepared_case, write_prepared_case
from hipas_core.sts.streaming import PreparedPatches
from hipas_core.sts.training import TrainConfig, train, training_log_path
from hipas_core.sts.training_set import build_manifest, read_manifest, resolve_training_set

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1))).to_dict()
CASE_FIELDS = ("image", "labels", "levels", "lungs", "territory", "weights")
SEED = 1


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tube_case(seed: int, shape=(24, 40, 40)) -> TrainingCase:
    """Two straight tubes (artery along z, vein along x) with levels along their length."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    artery = ((y - 12 - seed) ** 2 + (x - 14) ** 2) <= 9
    vein = ((z - 12) ** 2 + (y - 28) ** 2) <= 9
    labels = np.zeros(shape, np.uint8)
    labels[artery], labels[vein] = 1, 2
    levels = np.zeros(shape, np.uint8)
    levels[artery] = 1 + np.minimum(z[artery] // 6, 3)
    levels[vein] = 1 + np.minimum(x[vein] // 10, 3)
    ct = 0.1 + 0.02 * rng.standard_normal(shape)
    ct[artery], ct[vein] = 0.7, 0.6
    return TrainingCase(
        name=f"tube-{seed}", image=np.stack([ct, (labels > 0) * 0.8]).astype(np.float16), labels=labels,
        levels=levels, lungs=np.ones(shape, np.uint8), territory=level_territories(levels),
        weights=level_weights(levels, labels), meta={"protocol": "ncct", "box": [(0, 24), (0, 40), (0, 40)]},
    )


def assert_cases_equal(a: TrainingCase, b: TrainingCase) -> None:
    assert a.name == b.name and a.meta == b.meta
    for name in CASE_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def phantom_in_memory() -> TrainingCase:
    return phantom_case(SEED, protocol="ncct")


@pytest.fixture(scope="module")
def prepared_phantom(work) -> Path:
    """``hipas prepare-training --phantom-seed 1`` (in a subprocess, as users run it)."""
    folder = work / "cases" / "phantom"
    exe = Path(sys.executable).parent / "hipas"
    result = subprocess.run([str(exe), "prepare-training", "--phantom-seed", str(SEED), "--out", str(folder)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def tube_folders(work) -> list[Path]:
    folders = []
    for seed in (0, 1):
        folder = work / "cases" / f"tube-{seed}"
        write_prepared_case(tube_case(seed), folder, source={"kind": "synthetic"}, settings={"vesselness_sigmas_mm": [0.7, 1.5]})
        folders.append(folder)
    return folders


def test_prepared_phantom_round_trips_to_the_in_memory_case(prepared_phantom, phantom_in_memory):
    files = sorted(p.name for p in prepared_phantom.iterdir())
    assert files == sorted(["case.json", "image.npy", "labels.npy", "levels.npy", "lungs.npy", "territory.npy",
                            "weights.npy", "skeleton.npy", "vessel_voxels.npy", "vessel_voxel_offsets.npy"])
    assert not [p for p in prepared_phantom.parent.iterdir() if p.name.startswith(".")]  # no staging left
    loaded = load_prepared_case(prepared_phantom)
    assert isinstance(loaded.labels, np.memmap) and isinstance(loaded.image, np.memmap)
    assert_cases_equal(loaded, phantom_in_memory)
    for level in range(1, 5):  # the stored vessel-voxel index is the one sampling would build
        assert np.array_equal(loaded.vessel_voxels(level), np.flatnonzero(phantom_in_memory.levels.ravel() == level))
    import json

    record = json.loads((prepared_phantom / "case.json").read_text())
    assert record["source"]["kind"] == "phantom" and record["protocol"] == "ncct"
    assert record["arrays"]["image"] == {"shape": [2, *loaded.shape], "dtype": "float16"}
    assert record["settings"]["vesselness_sigmas_mm"] == [0.7, 1.5] and record["hipas_version"]
    # the noise harmonization hipas segment applies is recorded (a smooth-kernel phantom: measured, not smoothed)
    assert record["settings"]["noise_harmonization"] == "auto"
    assert 0 < record["meta"]["input_noise_hu"] < 25 and record["meta"]["noise_smoothing_sigma_px"] == 0.0


def test_rewriting_a_case_replaces_it_and_a_failed_write_leaves_the_old_one(tmp_path, monkeypatch):
    folder = tmp_path / "case"
    write_prepared_case(tube_case(0), folder, source={"kind": "synthetic"}, settings={})
    before = (folder / "labels.npy").read_bytes()
    real_save, calls = np.save, []

    def save_then_die(*args, **kwargs):  # killed after two of the arrays were written
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_die)
    with pytest.raises(OSError, match="disk full"):
        write_prepared_case(tube_case(1), folder, source={"kind": "synthetic"}, settings={})
    monkeypatch.undo()
    assert len(calls) == 3 and (folder / "labels.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # the staging folder is gone
    assert load_prepared_case(folder).name == "tube-0"
    write_prepared_case(tube_case(1), folder, source={"kind": "synthetic"}, settings={})
    assert load_prepared_case(folder).name == "tube-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def _nifti(path: Path, array: np.ndarray, spacing=(0.7, 0.7, 1.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_bad_cases_exit_2_with_one_line_and_leave_nothing(tmp_path, capsys):
    ct = _nifti(tmp_path / "ct.nii.gz", np.full((20, 32, 32), -800, np.int16))
    shifted = _nifti(tmp_path / "other_grid.nii.gz", np.ones((20, 32, 30), np.uint8))
    empty = _nifti(tmp_path / "empty.nii.gz", np.zeros((20, 32, 32), np.uint8))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    out = tmp_path / "out" / "case"
    for labels, problem in ((shifted, "labels not on the CT grid"), (empty, "empty labels"), (broken, str(broken))):
        code = hipas_main(["prepare-training", "--ct", str(ct), "--labels", str(labels), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and problem in err, err
        assert str(labels) in err
        assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    # --exclude-invalid: an excluded case (only case.json, the exclusion marker), exit 0
    code = hipas_main(["prepare-training", "--ct", str(ct), "--labels", str(empty), "--out", str(out),
                       "--case-id", "c7", "--exclude-invalid"])
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["case.json"]
    marker = read_marker(out / "case.json")
    assert marker.scan_id == "c7" and marker.stage == "prepare-training" and "empty labels" in marker.reason
    assert str(tmp_path) not in marker.reason  # no input path in an output


def test_manifest_lists_splits_and_exclusions(tmp_path, tube_folders):
    excluded = tmp_path / "bad"
    from hipas_core.exclusion import Exclusion
    from hipas_core.sts.prepared import write_excluded_case

    write_excluded_case(excluded, Exclusion(scan_id="bad", stage="prepare-training", reason="empty labels"))
    manifest = tmp_path / "set" / "manifest.tsv"
    code = hipas_main(["training-manifest", "--cases", *map(str, tube_folders), str(excluded), "-o", str(manifest),
                       "--val", "tube-1"])
    assert code == 0
    rows = list(csv.DictReader(manifest.open(), delimiter="\t"))
    assert [(r["case_id"], r["split"]) for r in rows] == [("tube-0", "train"), ("tube-1", "val"), ("bad", "excluded")]
    assert rows[0]["shape"] == "24x40x40" and rows[0]["protocol"] == "ncct" and rows[2]["reason"] == "empty labels"
    for training_set in (read_manifest(manifest), resolve_training_set(manifest.parent)):
        assert training_set.train == [tube_folders[0].resolve()] and training_set.val == [tube_folders[1].resolve()]
        assert training_set.excluded == [("bad", "empty labels")]
    everything = resolve_training_set(tube_folders[0].parent)  # a folder of case folders: all train
    assert everything.train[-2:] == tube_folders and not everything.val
    with pytest.raises(Exception, match="no such case"):
        build_manifest(tube_folders, val_ids=["nope"], destination=tmp_path / "m2.tsv")
    assert not (tmp_path / "m2.tsv").exists()


def _loader_batches(folders, config, *, workers, steps):
    source = PreparedPatches(folders, workers=workers)
    stream = source.batches(config, config, first_step=0, rng=np.random.default_rng(config.seed), positions=range(config.batch_size))
    return [next(stream) for _ in range(steps)]


def _assert_batches_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_dataloader_draws_exactly_the_in_memory_patches(prepared_phantom, phantom_in_memory, tube_folders):
    folders = [prepared_phantom, *tube_folders]
    in_memory = [phantom_in_memory, tube_case(0), tube_case(1)]
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), batch_size=3, steps=3, seed=11,
                         patch_stream="per-patch", augmentation={**TrainConfig().augmentation, "thick_slice_probability": 0.5})
    streamed = _loader_batches(folders, config, workers=2, steps=3)
    for step, (batch, state) in enumerate(streamed):
        assert state is None
        _assert_batches_equal(batch, patch_seed_batch(in_memory, config, step, range(3)))
    sequential = TrainConfig(**{**config.to_dict(), "patch_stream": "sequential"})
    rng = np.random.default_rng(sequential.seed)
    for batch, state in _loader_batches(folders, sequential, workers=1, steps=3):
        _assert_batches_equal(batch, make_batch(in_memory, sequential, rng))
        assert state == rng.bit_generator.state  # the stream hands back where the generator stands


def test_training_on_prepared_cases_equals_in_memory_training_and_logs_csv(tmp_path, tube_folders):
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), batch_size=2, steps=3, lr=1e-3, seed=3,
                         val_every=2, val_patches=1, checkpoint_every=2, patch_stream="per-patch")
    memory = train(config, [tube_case(0), tube_case(1)], output=tmp_path / "memory.pt", progress=False)
    cases = [load_prepared_case(f) for f in tube_folders]
    streamed = train(config, cases, output=tmp_path / "stream.pt", progress=False,
                     patch_source=PreparedPatches(tube_folders, workers=1))
    assert [h["loss"] for h in memory["history"]] == [h["loss"] for h in streamed["history"]]
    a, b = load_checkpoint(tmp_path / "memory.pt"), load_checkpoint(tmp_path / "stream.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    rows = list(csv.DictReader(training_log_path(tmp_path / "stream.pt").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert rows[1]["val_dice_artery"] != "" and rows[0]["val_dice_artery"] == ""
    assert all(float(r["patches_per_s"]) > 0 and 0 <= float(r["data_wait_fraction"]) <= 1 for r in rows)
    with pytest.raises(ValueError, match="--workers 2"):  # the sequential stream is one stream
        train(TrainConfig(**{**config.to_dict(), "patch_stream": "sequential"}), cases, output=tmp_path / "x.pt",
              progress=False, patch_source=PreparedPatches(tube_folders, workers=2))
    assert not (tmp_path / "x.pt").exists()


def hipas_replica(root: Path, phantom) -> tuple[Path, Path, Path]:
    """The public HiPaS layout from a phantom: ct_scan/001.npz (key data, [x, y, z]),
    annotation/artery/001.npz + annotation/vein/001.npz, and a spacing table."""
    ct = sitk.GetArrayFromImage(phantom.ct)
    labels = sitk.GetArrayFromImage(phantom.labels)
    for sub, array in (("ct_scan", ct), ("annotation/artery", labels == 1), ("annotation/vein", labels == 2)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(root / sub / "001.npz", data=np.transpose(array, (2, 1, 0)))
    sx, sy, sz = phantom.ct.GetSpacing()
    table = root / "metadata.csv"
    table.write_text(f"case_id,spacing_x_mm,spacing_y_mm,spacing_z_mm\n001,{sx},{sy},{sz}\n")
    return root / "ct_scan" / "001.npz", root / "annotation" / "artery" / "001.npz", table


def test_hipas_layout_replica_prepares_and_trains_two_steps(tmp_path, hipas):
    from hipas_core.phantom import PhantomSpec, generate_phantom

    phantom = generate_phantom(PhantomSpec.from_seed(2, size="small", protocol="ctpa"))
    ct, labels, table = hipas_replica(tmp_path / "hipas", phantom)
    case = tmp_path / "set" / "001"
    hipas("prepare-training", "--ct", ct, "--labels", labels, "--metadata-table", table, "--protocol", "ctpa",
          "--out", case, check=True)
    prepared = load_prepared_case(case)
    assert prepared.name == "001" and prepared.meta["protocol"] == "ctpa" and (prepared.labels == 1).any()
    assert (prepared.labels == 2).any()
    manifest = tmp_path / "set" / "manifest.tsv"
    hipas("training-manifest", "--cases", case, "-o", manifest, check=True)
    out = tmp_path / "run" / "sts.pt"
    hipas("train", "--prepared", manifest, "--workers", "1", "--out", out, "--patch", "16", "32", "32",
          "--width", "4", "--blocks", "0", "0", "1", "1", "1", "--steps", "2", "--val-every", "2",
          "--checkpoint-every", "2", "--threads", "1", "--no-progress", check=True)
    checkpoint = load_checkpoint(out)
    assert checkpoint["step"] == 2 and checkpoint["data"]["prepared"]["cases"] == ["001"]
    assert training_log_path(out).is_file()
    staged = tmp_path / "run" / "stage3.pt"  # the last stage alone, on the frozen stages' cached priors
    hipas("train", "--prepared", manifest, "--workers", "1", "--out", staged, "--patch", "16", "32", "32",
          "--window", "64", "96", "96", "--width", "4", "--blocks", "0", "0", "1", "1", "1", "--mode", "stagewise",
          "--stage-steps", "0", "0", "0", "2", "--steps", "2", "--cached-priors", "--val-every", "2",
          "--checkpoint-every", "2", "--threads", "1", "--no-progress", check=True)
    assert load_checkpoint(staged)["step"] == 2
    assert [p.name.split("-prior")[0] for p in (tmp_path / "run" / "priors").glob("*.npy")] == ["001"]


def test_workflow_plans_the_demo_training_set(tmp_path):
    copy = tmp_path / "wc"
    copy.mkdir()
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    shutil.copytree(REPO / "workflow", copy / "workflow")
    shutil.copytree(REPO / "config", copy / "config")
    (copy / "models").mkdir()
    shutil.copy(REPO / "models" / "i2sr-demo.pt", copy / "models")  # thick cases go through it
    (copy / "profiles").symlink_to("workflow/profiles")
    snakemake = Path(sys.executable).parent / "snakemake"
    result = subprocess.run([str(snakemake), "-n", "training_set", "--configfile", "config/training-demo.yaml",
                             "--cores", "2", "-p"], cwd=copy, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in result.stdout.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2:
            break
        counts[parts[0]] = int(parts[1])
    assert counts == {"prepare_training_case": 8, "training_manifest": 1, "training_set": 1, "total": 10}
    assert "--phantom-seed 8 --case-id phantom-008" in result.stdout
    assert "--i2sr-model models/i2sr-demo.pt" in result.stdout
    assert "--val 'phantom-007,phantom-008'" in result.stdout


@pytest.mark.parametrize("stream", ["sequential", "per-patch"])
def test_cached_priors_stream_from_disk_as_the_in_memory_run_computes_them(tmp_path, tube_folders, stream):
    """Stagewise with cached priors: each stage's new stream carries the frozen stages' prior, read
    by the worker from the files the trainer wrote; the losses are the in-memory run's."""
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=4, lr=1e-3, seed=4, mode="stagewise",
                         stage_steps=(1, 1, 1, 1), cached_priors=True, val_every=4, val_patches=1,
                         checkpoint_every=4, patch_stream=stream)
    memory = train(config, [tube_case(0), tube_case(1)], output=tmp_path / "memory.pt", progress=False)
    priors = tmp_path / "priors"
    streamed = train(TrainConfig(**{**config.to_dict(), "prior_cache_dir": str(priors)}),
                     [load_prepared_case(f) for f in tube_folders], output=tmp_path / "stream.pt", progress=False,
                     patch_source=PreparedPatches(tube_folders, workers=1))
    assert [h["loss"] for h in streamed["history"]] == [h["loss"] for h in memory["history"]]
    assert sorted(p.name.split("-")[2] for p in priors.glob("*.npy")) == ["prior1", "prior1", "prior2", "prior2",
                                                                          "prior3", "prior3"]
    with pytest.raises(ValueError, match="prior_cache_dir"):  # the workers need the priors on disk
        train(config, [load_prepared_case(f) for f in tube_folders], output=tmp_path / "x.pt", progress=False,
              patch_source=PreparedPatches(tube_folders, workers=1))
    assert not (tmp_path / "x.pt").exists()


def test_sequential_stream_resumes_where_the_in_memory_run_would_be(tmp_path, tube_folders):
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=4, lr=1e-3, seed=5,
                         val_every=4, val_patches=1, checkpoint_every=2)
    straight = train(config, [tube_case(0), tube_case(1)], output=tmp_path / "straight.pt", progress=False)
    cases = [load_prepared_case(f) for f in tube_folders]
    out = tmp_path / "resumed.pt"
    train(TrainConfig(**{**config.to_dict(), "steps": 2}), cases, output=out, progress=False,
          patch_source=PreparedPatches(tube_folders, workers=1))
    resumed = train(config, cases, output=out, resume=True, progress=False,
                    patch_source=PreparedPatches(tube_folders, workers=1))
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]], rel=1e-5)
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(out)
    assert a["rng"]["numpy"] == b["rng"]["numpy"]  # the stream's generator came back to the trainer
    assert all(torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6) for k in a["state_dict"])


def test_a_rank_streams_its_slice_of_the_global_batch(tube_folders):
    """What rank 1 of 2 (batch 2 each) gets from the stream: positions 2-3 of the global batch."""
    rank_config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), batch_size=2, steps=2, seed=9)
    global_config = TrainConfig(**{**rank_config.to_dict(), "batch_size": 4})
    in_memory = [tube_case(0), tube_case(1)]
    source = PreparedPatches(tube_folders, workers=1)
    rng, stream_rng = np.random.default_rng(9), np.random.default_rng(9)
    stream = source.batches(rank_config, global_config, first_step=0, rng=stream_rng, positions=range(2, 4))
    for _ in range(2):
        batch, _state = next(stream)
        _assert_batches_equal(batch, make_batch(in_memory, global_config, rng, keep=range(2, 4)))
    per_patch = TrainConfig(**{**rank_config.to_dict(), "patch_stream": "per-patch"})
    stream = source.batches(per_patch, TrainConfig(**{**per_patch.to_dict(), "batch_size": 4}), first_step=1,
                            rng=stream_rng, positions=range(2, 4))
    _assert_batches_equal(next(stream)[0], patch_seed_batch(in_memory, per_patch, 1, range(2, 4)))


def test_train_refuses_cases_prepared_with_other_vesselness_scales(tmp_path, tube_folders, capsys):
    code = hipas_main(["train", "--prepared", str(tube_folders[0].parent), "--out", str(tmp_path / "x.pt"),
                       "--vesselness-sigmas", "1.0", "--patch", "16", "32", "32", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "vesselness sigmas" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_synthetic_ncct_variant_is_stored_and_streamed_as_in_memory(tmp_path, tube_folders):
    from hipas_core.sts.data import synthetic_ncct_case

    ctpa = tube_case(2)
    ctpa.meta["protocol"] = "ctpa"
    folder = tmp_path / "ctpa"
    write_prepared_case(ctpa, folder, source={"kind": "synthetic"}, settings={"vesselness_sigmas_mm": [0.7, 1.5]},
                        synthetic_ncct_sigmas_mm=(0.7, 1.5))
    loaded = load_prepared_case(folder)
    variant = loaded.variants["synthetic_ncct"]
    assert isinstance(variant.image, np.memmap) and variant.meta["protocol"] == "synthetic-ncct"
    assert np.array_equal(variant.image, synthetic_ncct_case(tube_case(2), vesselness_sigmas_mm=(0.7, 1.5)).image)
    config = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), batch_size=2, steps=4, seed=4,
                         patch_stream="per-patch",
                         augmentation={**TrainConfig().augmentation, "synthetic_ncct_probability": 0.5})
    in_memory = [tube_case(0), ctpa]
    batches = _loader_batches([tube_folders[0], folder], config, workers=1, steps=4)
    for step, (batch, _state) in enumerate(batches):
        _assert_batches_equal(batch, patch_seed_batch(in_memory, config, step, range(2)))
    plain = tmp_path / "ctpa-plain"
    write_prepared_case(tube_case(2), plain, source={"kind": "synthetic"}, settings={})
    (plain / "case.json").write_text((plain / "case.json").read_text().replace('"ncct"', '"ctpa"'))
    with pytest.raises(ValueError, match="no synthetic NCCT copy"):
        PreparedPatches([plain], workers=0).check(config)


def test_thick_cases_go_through_the_i2sr_model_segment_uses(tmp_path, hipas):
    """A 3 mm phantom is prepared through I2SR (by default the shipped model, as hipas segment
    normalizes it): the CT channels differ from trilinear z, the targets do not, and the case
    records which model it went through."""
    import hashlib
    import json

    from hipas_core.resources import shipped_model

    model = shipped_model("i2sr-demo.pt")
    linear = phantom_case(3, protocol="ncct", slice_thickness_mm=3.0)
    through_i2sr = phantom_case(3, protocol="ncct", slice_thickness_mm=3.0, i2sr_model=model)
    assert linear.meta["z_method"] == "linear" and through_i2sr.meta["z_method"] == "i2sr"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert through_i2sr.name == linear.name + f"-i2sr{digest[:8]}"
    assert np.array_equal(through_i2sr.labels, linear.labels) and np.array_equal(through_i2sr.levels, linear.levels)
    difference = np.abs(through_i2sr.image[0].astype(np.float32) - linear.image[0].astype(np.float32))
    assert difference.mean() > 1e-3  # windowed units: I2SR changed the image, not only its rounding
    thin = phantom_case(SEED, protocol="ncct", i2sr_model=model)  # thin slices: no I2SR, the plain cache name
    assert thin.meta["z_method"] == "linear" and not thin.name.endswith(digest[:8])

    folder = tmp_path / "thick"  # one thread, as in this process: I2SR's sums in the same order
    exe = Path(sys.executable).parent / "hipas"
    result = subprocess.run([str(exe), "prepare-training", "--phantom-seed", "3", "--slice-thickness", "3",
                             "--out", str(folder)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    record = json.loads((folder / "case.json").read_text())
    assert record["settings"]["i2sr"] == {"file": "i2sr-demo.pt", "sha256": digest}
    assert np.array_equal(load_prepared_case(folder).image, through_i2sr.image)
    refused = hipas("prepare-training", "--phantom-seed", "3", "--i2sr-model", tmp_path / "missing.pt",
                    "--out", tmp_path / "no")
    assert refused.returncode == 2 and "missing.pt" in refused.stderr and not (tmp_path / "no").exists()


def test_full_size_phantom_options_are_refused_where_they_do_not_apply(tmp_path, tube_folders, capsys):
    ct = _nifti(tmp_path / "ct.nii.gz", np.full((20, 32, 32), -800, np.int16))
    code = hipas_main(["prepare-training", "--ct", str(ct), "--labels", str(ct), "--phantom-size", "full",
                       "--out", str(tmp_path / "case")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--phantom-size" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "case").exists()
    code = hipas_main(["train", "--prepared", str(tube_folders[0].parent), "--full-phantom-seeds", "201-202",
                       "--out", str(tmp_path / "x.pt"), "--patch", "16", "32", "32", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--full-phantom-seeds" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
