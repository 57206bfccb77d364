"""Distributed data-parallel training: 2 gloo ranks with batch B train as one process with 2B,
a resumed 2-rank run equals an uninterrupted one, and the rank environment is read from torchrun's
or srun's variables (tiny cascade, tiny synthetic cases, CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sts_training import TINY_MODEL, tiny_case

from hipas_core.sts import distributed
from hipas_core.sts.batches import make_batch, patch_seed_batch
from hipas_core.sts.checkpoint import load_checkpoint
from hipas_core.sts.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
# one rank: build the tiny cases, join the process group from the environment, train, leave
WORKER = """
import json, sys
import torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from test_sts_training import tiny_case
from hipas_core.sts import distributed
from hipas_core.sts.training import TrainConfig, train
args = json.loads(sys.argv[1])
env, device = distributed.setup("cpu")
assert env is not None and (env.world_size, env.launcher) == (args["world"], args["launcher"]), env
try:
    train(TrainConfig(**args["config"]), [tiny_case(s) for s in args["cases"]], output=args["output"],
          resume=args["resume"], progress=False)
finally:
    distributed.teardown()
"""
CASES = [0, 1, 2]
# float summation order: the batch's gradient is summed inside one convolution's backward in one
# process and as two per-rank gradients averaged by DDP in two; Adam then divides by the gradient's
# own size, so its updates keep those last-bit differences (losses agree to ~1e-7)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _gradient_free(state_dict: dict, model_config: dict) -> set[str]:
    """Biases of a depthwise conv followed by a GroupNorm of one channel per group: the norm
    subtracts them again, so their gradient is rounding noise, which Adam turns into steps of up
    to lr in either direction (any two float orders of the same training differ there)."""
    from hipas_core.sts.checkpoint import build_model

    model = build_model("cascade", model_config)
    return {f"{name}.depthwise.bias" for name, module in model.named_modules()
            if isinstance(getattr(module, "norm", None), torch.nn.GroupNorm) and hasattr(module, "depthwise")
            and module.norm.num_groups == module.norm.num_channels}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _config(**changes) -> TrainConfig:
    base = TrainConfig(model_config=TINY_MODEL, patch=(16, 32, 32), steps=20, batch_size=1, lr=1e-3, seed=3,
                       val_every=10, val_patches=1, checkpoint_every=10)
    return TrainConfig(**{**base.to_dict(), **changes})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return {**env, "OMP_NUM_THREADS": "1", "HIPAS_PROGRESS": "lines"}


def _rank_env(launcher: str, rank: int, world: int, port: int) -> dict:
    """What torchrun, or srun (one task per rank, no torchrun), gives rank ``rank``."""
    if launcher == "srun":  # the address comes from the step's node list
        return {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_NUM_TASKS": str(world),
                "SLURM_NTASKS": str(world), "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_ID": "4242",
                "MASTER_PORT": str(port)}
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _run_ranks(config: TrainConfig, output: Path, *, world: int = 2, resume: bool = False, torchrun: bool = False,
               launcher: str = "torchrun"):
    """Train on ``world`` gloo ranks: torchrun itself, or processes given the variables of
    ``launcher`` ("torchrun" or "srun") by hand."""
    args = json.dumps({"config": config.to_dict(), "cases": CASES, "output": str(output), "resume": resume,
                       "world": world, "launcher": "torchrun" if torchrun else launcher})
    code = WORKER.format(here=str(HERE))
    if torchrun:
        script = output.with_suffix(".worker.py")
        script.write_text(code)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   str(script), args]
        result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", code, args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**_env(), **_rank_env(launcher, r, world, port)})
             for r in range(world)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return logs


def _assert_same_training(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    free = _gradient_free(a["state_dict"], a["model_config"])
    assert free and free <= set(a["state_dict"])
    lr, steps = a["training_config"]["lr"], a["step"]
    for key in a["state_dict"]:
        tolerance = {"rtol": 0.0, "atol": lr * steps} if key in free else TOLERANCE
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], **tolerance, msg=key)
    assert np.allclose([h["loss"] for h in a["history"]], [h["loss"] for h in b["history"]], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """20 steps on 2 gloo ranks, batch 1 per rank (joint cascade, augmentation on)."""
    output = tmp_path_factory.mktemp("ddp") / "two.pt"
    logs = _run_ranks(_config(), output)
    return output, logs


def test_two_gloo_ranks_with_batch_b_train_as_one_process_with_batch_2b(two_rank_run, tmp_path):
    output, logs = two_rank_run
    single = tmp_path / "single.pt"
    train(_config(batch_size=2), [tiny_case(s) for s in CASES], output=single, progress=False)
    two, one = load_checkpoint(output), load_checkpoint(single)
    _assert_same_training(two, one)
    assert two["distributed"] == {"world_size": 2, "batch_per_rank": 1, "global_batch": 2}
    assert "distributed" not in one
    assert [h.get("val_dice_vein") for h in two["history"]] == pytest.approx(
        [h.get("val_dice_vein") for h in one["history"]], abs=1e-6)  # rank 0 validated, as one process does
    assert "2 ranks (gloo)" in logs[0] and "train cascade" not in logs[1]  # only rank 0 reports


@pytest.mark.slow
def test_resume_of_a_two_rank_run_equals_the_uninterrupted_one(two_rank_run, tmp_path):
    """10 steps on 2 ranks (torchrun), resumed to 20 on 2 ranks; and resumed to 20 in one process
    with the same global batch."""
    uninterrupted = load_checkpoint(two_rank_run[0])
    half = tmp_path / "half.pt"
    _run_ranks(_config(steps=10), half, torchrun=True)
    single_resume = tmp_path / "single-resume.pt"
    single_resume.write_bytes(half.read_bytes())
    _run_ranks(_config(), half, resume=True)
    resumed = load_checkpoint(half)
    assert resumed["step"] == 20 and resumed["history"] == uninterrupted["history"]
    assert all(torch.equal(resumed["state_dict"][k], t) for k, t in uninterrupted["state_dict"].items())  # exactly
    train(_config(batch_size=2), [tiny_case(s) for s in CASES], output=single_resume, resume=True, progress=False)
    _assert_same_training(load_checkpoint(single_resume), uninterrupted)


def test_stagewise_two_ranks_rewrap_each_stage_and_per_patch_stream(tmp_path):
    """Stagewise (a new DDP wrapper per stage, frozen stages left out) with the per-patch stream,
    ranks started as srun tasks (SLURM's variables): 2 ranks x 1 equal 1 process x 2."""
    config = _config(mode="stagewise", stage_steps=(2, 2, 2, 2), steps=8, patch_stream="per-patch",
                     val_every=8, checkpoint_every=8)
    _run_ranks(config, tmp_path / "two.pt", launcher="srun")
    train(TrainConfig(**{**config.to_dict(), "batch_size": 2}), [tiny_case(s) for s in CASES],
          output=tmp_path / "one.pt", progress=False)
    _assert_same_training(load_checkpoint(tmp_path / "two.pt"), load_checkpoint(tmp_path / "one.pt"))


def test_a_rank_draws_its_slice_of_the_global_batch():
    cases = [tiny_case(0), tiny_case(1)]
    config = _config(batch_size=4)
    whole = make_batch(cases, config, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    part = make_batch(cases, config, rng, keep=distributed.rank_positions(1, 2, 2))
    assert part["image"].shape[0] == 2 and torch.equal(part["image"], whole["image"][2:4])
    assert torch.equal(part["labels"], whole["labels"][2:4])
    after = np.random.default_rng(7)
    make_batch(cases, config, after)
    assert rng.bit_generator.state == after.bit_generator.state  # the stream moved over the whole batch
    per_patch = patch_seed_batch(cases, config, 5, range(4))
    assert torch.equal(patch_seed_batch(cases, config, 5, [2, 3])["image"], per_patch["image"][2:4])
    with pytest.raises(ValueError, match="patch_stream"):
        TrainConfig(patch_stream="shuffled")


def test_rank_environment_from_torchrun_and_srun():
    assert distributed.detect({}) is None
    assert distributed.detect({"RANK": "0", "WORLD_SIZE": "1"}) is None
    env = distributed.detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
                              "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == (
        3, 4, 1, "n1", 1234, "torchrun")
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "gpu[07-09,12],cpu1", "SLURM_JOB_ID": "123456"}
    env = distributed.detect(srun)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == (
        5, 8, 1, "gpu07", 20000 + 123456 % 20000, "srun")
    assert distributed.detect({**srun, "MASTER_ADDR": "head", "MASTER_PORT": "29400"}).master_addr == "head"
    # a batch script that asked for 8 tasks but runs hipas train itself (no srun step) is one process
    assert distributed.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}) is None
    assert distributed.detect({**srun, "HIPAS_DISTRIBUTED": "0"}) is None
    assert distributed.first_host("node001") == "node001"
    assert distributed.first_host("a[1-2]-ib[3-4],b") == "a1-ib3"
    assert distributed.world() == (0, 1)  # no process group here: the single-process no-ops
    assert distributed.all_sum([1.5, 2.0], "cpu") == [1.5, 2.0]


def test_hipas_train_under_torchrun_trains_on_two_ranks(tmp_path):
    """``torchrun --nproc-per-node 2 hipas train``: one phantom (cache warmed here), 3 steps; rank 0
    alone prints and writes; --global-batch-size splits over the ranks; a bad split is one line."""
    import shutil

    from hipas_core.sts.phantom_cases import phantom_case

    cache = tmp_path / "cache"
    phantom_case(1, protocol="ncct", cache_dir=cache)  # both ranks would prepare it otherwise
    exe = shutil.which("hipas", path=str(Path(sys.executable).parent)) or "hipas"
    out = tmp_path / "ddp.pt"
    train_args = ["train", "--out", str(out), "--phantom-seeds", "1", "--val-seeds", "1", "--cache", str(cache),
                  "--patch", "16", "32", "32", "--width", "4", "--blocks", "0", "0", "1", "1", "1", "--steps", "3",
                  "--lr", "1e-3", "--val-every", "3", "--checkpoint-every", "3", "--no-progress"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--no-python", exe]
    result = subprocess.run([*launch, *train_args, "--global-batch-size", "2"], env=_env(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(f"{out}: 3 steps") == 1  # the summary, from rank 0 only
    state = load_checkpoint(out)
    assert state["step"] == 3 and state["distributed"] == {"world_size": 2, "batch_per_rank": 1, "global_batch": 2}
    bad = subprocess.run([*launch, *train_args, "--global-batch-size", "3"], env=_env(), capture_output=True,
                         text=True, timeout=240)
    assert bad.returncode != 0 and "--global-batch-size 3: a multiple of the 2 ranks" in bad.stderr


def test_the_example_batch_script_is_valid_bash_with_its_directives_first():
    script = HERE.parents[1] / "workflow/profiles/slurm/train_ddp.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lines = script.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command  # sbatch reads #SBATCH lines up to the first command
    text = script.read_text()
    assert "torch.distributed.run" in text and "--rdzv-endpoint" in text and "--resume" in text


def test_resume_with_another_global_batch_says_so(tmp_path, capsys):
    out = tmp_path / "run.pt"
    train(_config(steps=1, val_every=1, checkpoint_every=1), [tiny_case(0)], output=out, progress=False)
    capsys.readouterr()
    train(_config(steps=2, batch_size=2, val_every=1, checkpoint_every=1), [tiny_case(0)], output=out, resume=True,
          progress=False)
    assert "global batch was 1, now 2" in capsys.readouterr().err
