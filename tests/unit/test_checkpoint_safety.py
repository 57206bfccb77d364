"""Every command that reads a checkpoint reads tensors and plain data only: a file that is not a
checkpoint (code planted in a pickle, random bytes, text, a torch file without the expected keys,
weights that do not fit) gives one error line naming the file and exit 2, runs nothing from the
file and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_sts_predictor import tiny_chest

from hipas_core.cli import main
from hipas_core.i2sr import CHECKPOINT_FORMAT as I2SR_FORMAT
from hipas_core.sts.checkpoint import FORMAT as STS_FORMAT


class _PlantedFile:
    """Unpickling this object would create ``path`` (what a hostile model file could do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


TINY_TRAIN = ["--phantom-seeds", "1", "--val-seeds", "2", "--patch", "16", "32", "32", "--width", "4",
              "--blocks", "0", "0", "1", "1", "1", "--steps", "1", "--threads", "1", "--no-progress"]
TINY_PRETRAIN = ["--phantom-seeds", "1", "--patch", "16", "32", "32", "--mask-cube", "16", "--width", "4",
                 "--blocks", "0", "1", "1", "1", "1", "--steps", "1", "--threads", "1", "--no-progress"]
# how a command reads a checkpoint -> (format, kind) that a real checkpoint of that use has
LOADERS = {
    "segment --model": (STS_FORMAT, "cascade"),
    "super-resolve --model": (I2SR_FORMAT, None),
    "train --encoder-init": (STS_FORMAT, "mae-encoder"),
    "train --init-from": (STS_FORMAT, "cascade"),
    "train --resume": (STS_FORMAT, "cascade"),
    "pretrain --resume": (STS_FORMAT, "mae-encoder"),
}


def _argv(loader: str, checkpoint, tmp_path) -> tuple[list[str], list]:
    """(hipas arguments reading ``checkpoint`` the ``loader`` way, paths the command would write)."""
    ct, out, cache = tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz", tmp_path / "cache"
    if loader == "segment --model":
        return ["segment", "-i", str(ct), "-o", str(out), "--model", str(checkpoint), "--threads", "1"], [out]
    if loader == "super-resolve --model":
        return ["super-resolve", "-i", str(ct), "-o", str(out), "--model", str(checkpoint)], [out, tmp_path / "out.json"]
    trained = tmp_path / "run.pt"
    if loader == "train --encoder-init":
        return ["train", "--out", str(trained), "--cache", str(cache), "--encoder-init", str(checkpoint),
                *TINY_TRAIN], [trained, cache]
    if loader == "train --init-from":
        return ["train", "--out", str(trained), "--cache", str(cache), "--init-from", str(checkpoint),
                *TINY_TRAIN], [trained, cache]
    if loader == "train --resume":
        return ["train", "--out", str(checkpoint), "--resume", "--cache", str(cache), *TINY_TRAIN], [cache]
    return ["pretrain", "--out", str(checkpoint), "--resume", "--cache", str(cache), *TINY_PRETRAIN], [cache]


def _bad_file(problem: str, path, loader: str, marker):
    fmt, kind = LOADERS[loader]
    if problem == "planted code":
        torch.save({"format": fmt, "kind": kind, "state_dict": _PlantedFile(marker)}, path)
    elif problem == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif problem == "text":
        path.write_text("this is a model, trust me\n")
    elif problem == "keys missing":
        torch.save({"format": fmt, **({"kind": kind} if kind else {})}, path)
    else:  # weights that do not fit the model the checkpoint describes
        from hipas_core.sts.cascade import CascadeConfig

        torch.save({"format": fmt, "kind": kind, "model_config": CascadeConfig().to_dict(),
                    "state_dict": {"stem.weight": torch.zeros(1)}}, path)


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("problem", ["planted code", "random bytes", "text", "keys missing"])
def test_a_bad_checkpoint_is_one_line_exit_2_and_nothing_else(loader, problem, tmp_path, capsys):
    sitk.WriteImage(tiny_chest(spacing_zyx=(5.0, 1.4, 1.3)), str(tmp_path / "ct.nii.gz"))  # thick: I2SR runs
    marker, checkpoint = tmp_path / "planted-code-ran", tmp_path / "model.pt"
    _bad_file(problem, checkpoint, loader, marker)
    before = checkpoint.read_bytes()
    argv, outputs = _argv(loader, checkpoint, tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pt" in err[0] and err[0].startswith(f"hipas {argv[0]}: error: "), err
    assert not marker.exists()
    assert checkpoint.read_bytes() == before
    assert not any(path.exists() for path in outputs)


def test_segment_weights_that_do_not_fit_the_model(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    _bad_file("weights", checkpoint, "segment --model", None)
    argv, outputs = _argv("segment --model", checkpoint, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pt" in err[0] and "does not make a model" in err[0], err
    assert not any(path.exists() for path in outputs)
