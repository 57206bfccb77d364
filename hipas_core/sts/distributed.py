"""Distributed data-parallel training (DDP) of ``hipas train``: the rank environment, the process
group, the gradient wrapper and the few collectives the training loop needs.

A run is distributed when it is started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) with ``WORLD_SIZE`` > 1, or as several tasks of one ``srun`` step
without torchrun (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``; ``MASTER_ADDR`` from the environment or the first host of the step's node list,
``MASTER_PORT`` from the environment or ``20000 + SLURM_JOB_ID % 20000``). A batch script that
merely asked for several tasks is not distributed: srun sets ``SLURM_STEP_NUM_TASKS``, sbatch does
not. ``HIPAS_DISTRIBUTED=0`` turns detection off.

Backends: NCCL when the device is CUDA (rank ``r`` uses GPU ``LOCAL_RANK % device_count``, so a
task that sees only its own GPU uses it), gloo on the CPU. Without a process group every helper
here is the single-process no-op (rank 0 of 1), so the training code calls them unconditionally.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DISABLE_ENV = "HIPAS_DISTRIBUTED"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class RankEnv:
    """Where this process stands in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" or "srun"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``."""
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):  # the first item at the top level (commas inside [] do not split)
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    host = nodelist[:end].strip()
    while "[" in host:  # each range group -> its first value (zero padding kept)
        host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], host, count=1)
    return host


def detect(environ: Mapping[str, str] | None = None) -> RankEnv | None:
    """The distributed environment of this process, or None for a single-process run."""
    env = os.environ if environ is None else environ
    if env.get(DISABLE_ENV, "").strip().lower() in ("0", "no", "off", "false"):
        return None
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        if world <= 1:
            return None
        return RankEnv(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", 0)),
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)), launcher="torchrun")
    tasks = env.get("SLURM_STEP_NUM_TASKS")  # set by srun for its tasks, not in the batch script itself
    if tasks and int(tasks) > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else "127.0.0.1")
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)
        return RankEnv(rank=int(env["SLURM_PROCID"]), world_size=int(tasks),
                       local_rank=int(env.get("SLURM_LOCALID", 0)), master_addr=addr, master_port=int(port),
                       launcher="srun")
    return None


def setup(device: str = "cpu", *, environ: Mapping[str, str] | None = None) -> tuple[RankEnv | None, str]:
    """Join the process group when this is a distributed run: returns (environment or None, the
    device this rank trains on). ``device`` "cuda"/"cuda:N" becomes this rank's GPU (NCCL);
    anything else trains on the CPU over gloo. A single-process run returns (None, device)."""
    env = detect(environ)
    if env is None:
        return None, device
    import torch
    import torch.distributed as dist

    from hipas_core.errors import InvalidInputError

    if str(device).startswith("cuda"):
        count = torch.cuda.device_count()
        if count == 0:
            raise InvalidInputError(f"--device {device}: no CUDA device on this node (rank {env.rank})")
        index = env.local_rank % count
        torch.cuda.set_device(index)
        device, backend = f"cuda:{index}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        for key, value in (("MASTER_ADDR", env.master_addr), ("MASTER_PORT", str(env.master_port)),
                           ("RANK", str(env.rank)), ("WORLD_SIZE", str(env.world_size)),
                           ("LOCAL_RANK", str(env.local_rank))):
            os.environ.setdefault(key, value)
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size)
    return env, device


def teardown() -> None:
    """Leave the process group (no-op without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: Sequence[float], device) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (the values themselves without a group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def rank_positions(rank: int, world_size: int, batch_per_rank: int) -> range:
    """Positions of the global batch (``world_size * batch_per_rank`` patches per step, in the
    order one process would draw them) that ``rank`` trains on: ``rank * B .. (rank + 1) * B - 1``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return range(rank * batch_per_rank, (rank + 1) * batch_per_rank)


def wrap(module, device, *, previous=None):
    """``module`` in DistributedDataParallel over the parameters that require gradients now.

    ``previous``: the wrapper this one replaces (its gradient hooks are removed first, so a stage
    frozen since is no longer waited for). DDP averages the gradients over the ranks; with the
    loss a mean over each rank's (equal) batch that is the gradient of the global batch's mean.
    """
    from torch.nn.parallel import DistributedDataParallel

    if previous is not None:
        remove = getattr(previous, "_remove_autograd_hooks", None)
        if remove is not None:
            remove()
    device = _device(device)
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)


def _device(device):
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)
