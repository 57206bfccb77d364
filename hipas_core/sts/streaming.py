"""Training patches streamed from a prepared training set (``hipas train --prepared``).

The case folders (``hipas_core.sts.prepared``) are memory-mapped in each process that draws
patches, so the training process holds a case's pages only while patches are cut from it and
memory does not grow with the number of cases. Patches are drawn by the very functions the
in-memory path uses (``_draw_patch``, ``make_batch``), in ``torch.utils.data.DataLoader``
worker processes (``workers`` 0: in the training process itself); vessel-biased sampling,
augmentation and domain randomization run there. The batches are exactly those of the
in-memory path on the same cases:

* ``patch_stream="per-patch"``: patch i of step t comes from its own generator (seed, t, i)
  (``patch_seed_batch``), so the items (step, position) are independent and any number of
  workers draws them in parallel; the loader's batch of step t is this rank's positions;
* ``patch_stream="sequential"``: the one numpy stream a single process draws (``make_batch``;
  in a distributed run over the global batch, keeping this rank's positions) is inherently
  serial: it runs in one worker (``workers`` <= 1), which starts from the training's generator
  state and hands back, with each batch, the state after it, so checkpoints and resume see the
  stream where the in-memory path would leave it.

Cached priors (the frozen stages' prior map) are computed by the model in the training process,
once per case and stage, written to ``.npy`` files (``hipas_core.sts.prior_cache.prior_files``)
and memory-mapped by the workers, which cut each patch's prior beside its image. The
synthetic-NCCT variant of a CTPA case is read from its folder when it was prepared with
``--synthetic-ncct`` (computing it in each worker would keep a whole-case copy per CTPA case and
process); without it ``synthetic_ncct_probability`` > 0 is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def _open_cases(folders: Sequence[str]) -> list:
    from hipas_core.sts.prepared import load_prepared_case

    return [load_prepared_case(folder, mmap=True) for folder in folders]


class _MappedPriors:
    """case -> its prior, memory-mapped from the file ``files[case.name]`` on first use."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files, self.maps = dict(files), {}

    def __call__(self, case) -> np.ndarray:
        if case.name not in self.maps:
            self.maps[case.name] = np.load(self.files[case.name], mmap_mode="r", allow_pickle=False)
        return self.maps[case.name]

    @classmethod
    def of(cls, files: dict[str, str] | None) -> _MappedPriors | None:
        return None if files is None else cls(files)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the patch work is numpy/scipy; torch threads would oversubscribe


class PerPatchItems(Dataset):
    """Item k = patch (step, position) of the per-patch stream, for steps ``first_step`` ..
    ``steps - 1`` and this rank's ``positions``; the cases (and the priors of ``prior_files``)
    open on first use in each process."""

    def __init__(self, folders: Sequence[str | os.PathLike], config, *, first_step: int,
                 positions: Sequence[int], prior_files: dict[str, str] | None = None) -> None:
        self.folders = [str(f) for f in folders]
        self.config, self.first_step, self.positions = config, int(first_step), list(positions)
        self.prior_files = prior_files
        self._cases, self._priors = None, None

    def __len__(self) -> int:
        return max(0, self.config.steps - self.first_step) * len(self.positions)

    def __getitem__(self, index: int) -> dict:
        from hipas_core.sts.batches import config_augmentation, draw_patch

        if self._cases is None:
            self._cases, self._priors = _open_cases(self.folders), _MappedPriors.of(self.prior_files)
        step = self.first_step + index // len(self.positions)
        position = self.positions[index % len(self.positions)]
        rng = np.random.default_rng([self.config.seed, step, position])
        return draw_patch(self._cases, self.config, config_augmentation(self.config), rng, augment=True,
                          prior_of=self._priors)


class SequentialBatches(IterableDataset):
    """The sequential stream: one batch per step from a generator started at ``rng_state``,
    yielded with the generator's state after it. ``config``: the global batch's config;
    ``keep``: this rank's positions (None: all)."""

    def __init__(self, folders: Sequence[str | os.PathLike], config, *, steps: int, rng_state: dict,
                 keep: range | None, prior_files: dict[str, str] | None = None) -> None:
        self.folders = [str(f) for f in folders]
        self.config, self.steps, self.rng_state, self.keep = config, int(steps), rng_state, keep
        self.prior_files = prior_files

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        from hipas_core.sts.batches import make_batch

        cases, priors = _open_cases(self.folders), _MappedPriors.of(self.prior_files)
        rng = np.random.default_rng()
        rng.bit_generator.state = self.rng_state
        for _ in range(self.steps):
            yield make_batch(cases, self.config, rng, keep=self.keep, prior_of=priors), rng.bit_generator.state


def _as_is(item):
    return item


def _collate_patches(items, config):
    from hipas_core.sts.batches import collate

    return collate(items, config)


class PreparedPatches:
    """Where ``train`` gets its batches from with a prepared training set: the case folders and
    the number of worker processes. ``batches(...)`` is called once, when the loop starts."""

    def __init__(self, folders: Sequence[str | os.PathLike], *, workers: int = 0,
                 prefetch_batches: int = 2) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, not {workers}")
        self.folders = [Path(f) for f in folders]
        self.workers, self.prefetch_batches = int(workers), int(prefetch_batches)

    def check(self, config) -> None:
        """``ValueError`` (one line) for a setting the stream does not support."""
        if config.cached_priors and config.prior_cache_dir is None:
            raise ValueError("--cached-priors with --prepared: the priors need a folder on disk "
                             "(TrainConfig.prior_cache_dir)")
        if config.augmentation.get("synthetic_ncct_probability", 0.0) > 0:
            from hipas_core.sts.prepared import SYNTHETIC_NCCT_IMAGE, read_case_record

            for folder in self.folders:  # else each worker would keep a copy of every CTPA case
                record = read_case_record(folder)
                if record.get("protocol") == "ctpa" and SYNTHETIC_NCCT_IMAGE not in record["arrays"]:
                    raise ValueError(f"--synthetic-ncct with --prepared: the CTPA case {folder} has no synthetic "
                                     "NCCT copy (prepare it with hipas prepare-training --synthetic-ncct)")
        if config.patch_stream == "sequential" and self.workers > 1:
            raise ValueError(f"--workers {self.workers}: the sequential patch stream is one random stream "
                             "and runs in one worker; use --patch-stream per-patch for more workers")

    def batches(self, config, global_config, *, first_step: int, rng: np.random.Generator,
                positions: range, prior_files: dict[str, str] | None = None) -> Iterator[tuple[dict, dict | None]]:
        """(CPU batch, generator state after it or None) for steps ``first_step`` .. steps - 1.
        ``prior_files``: {case name: .npy file} of the frozen stages' prior (cached priors), cut
        beside each patch."""
        self.check(config)
        steps_left = max(0, config.steps - first_step)
        common = {"num_workers": self.workers, "worker_init_fn": _worker_init if self.workers else None,
                  "persistent_workers": False}
        if self.workers:
            common["prefetch_factor"] = max(1, self.prefetch_batches)
        if config.patch_stream == "per-patch":
            items = PerPatchItems(self.folders, config, first_step=first_step, positions=positions,
                                  prior_files=prior_files)
            # a loader batch is one step's patches; the workers take whole steps in turn
            loader = DataLoader(items, batch_size=len(positions), shuffle=False, drop_last=False,
                                collate_fn=partial(_collate_patches, config=config), **common)
            return ((batch, None) for batch in loader)
        keep = None if global_config is config else positions
        stream = SequentialBatches(self.folders, global_config, steps=steps_left,
                                   rng_state=rng.bit_generator.state, keep=keep, prior_files=prior_files)
        return iter(DataLoader(stream, batch_size=None, collate_fn=_as_is, **common))
