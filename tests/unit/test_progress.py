"""Progress output: a bar on a terminal, throttled lines elsewhere, nothing when off; the STS
predictor reports its steps and windows and gives the same labels with progress on or off."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_sts_predictor import tiny_chest

from hipas_core import progress
from hipas_core.errors import InvalidInputError
from hipas_core.progress import Progress, resolve_mode, stage
from hipas_core.sts.cascade import CascadeConfig
from hipas_core.sts.checkpoint import build_model, save_checkpoint
from hipas_core.sts.network import StageConfig
from hipas_core.sts.predictor import Predictor


class _Terminal:
    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(progress.MODE_ENV, raising=False)


def test_mode_follows_the_terminal_unless_forced(monkeypatch, capsys):
    assert resolve_mode() == "lines"  # capsys: stderr is not a terminal
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert resolve_mode() == "bar" and resolve_mode("auto") == "bar"
    assert resolve_mode("lines") == "lines" and resolve_mode("off") == "off"
    monkeypatch.setenv(progress.MODE_ENV, "off")
    assert resolve_mode() == "off" and resolve_mode("bar") == "bar"  # an explicit mode wins
    monkeypatch.setenv(progress.MODE_ENV, "loud")
    with pytest.raises(InvalidInputError, match="HIPAS_PROGRESS"):
        resolve_mode()


def test_lines_are_throttled_and_the_last_one_always_comes(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 1e9)
    with Progress("job", total=3, unit="windows") as bar:
        for _ in range(3):
            bar.update()
        bar.set_postfix(loss="0.5")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"job: windows 3/3 \(\d+\.\d s\), loss 0\.5", lines[0])

    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    with Progress("job", total=3, unit="windows") as bar:
        for _ in range(3):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"job: windows {k}/3" for k in (1, 2, 3)]


def test_bar_on_a_terminal_and_nothing_when_off(capsys):
    with Progress("job", total=4, unit="tiles", mode="bar") as bar:
        bar.update(4)
        bar.log("a line of its own")
    err = capsys.readouterr().err
    assert "4/4" in err and "tiles" in err and "a line of its own" in err
    with Progress("job", total=4, mode="off") as bar, stage("step", mode="off"):
        bar.update(4)
        bar.log("never")
    assert capsys.readouterr().err == ""
    with stage("branch labels"):
        pass
    assert re.fullmatch(r"branch labels: done \(\d+\.\d s\)\n", capsys.readouterr().err)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    config = CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1))).to_dict()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, {
        "kind": "cascade", "model_config": config, "state_dict": build_model("cascade", config).state_dict(),
        "inference": {"window": [16, 32, 32], "overlap": 0.25, "thresholds": [0.5, 0.5],
                      "vesselness_sigmas_mm": [1.0]},
    })
    return path


def test_predictor_reports_stages_and_windows_and_labels_do_not_change(tiny_model, tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)  # a line for every window
    ct = tmp_path / "chest.nii.gz"
    sitk.WriteImage(tiny_chest(), str(ct))
    reported = Predictor(tiny_model, branch_consistent=True).segment_file(ct)
    err = capsys.readouterr().err
    for step in ("normalize", "lung box and thoracic cavity", "vesselness", "branch labels",
                 "labels and probabilities to the input grid"):
        assert re.search(rf"^chest\.nii\.gz: {step}: done \(\d+\.\d s\)$", err, re.M), step
    for index in range(1, 5):
        counts = re.findall(rf"^chest\.nii\.gz: STS stage {index}/4: windows (\d+)/(\d+) \(\d+\.\d s\)$", err, re.M)
        total = int(counts[0][1])
        assert total > 1 and counts == [(str(k), str(total)) for k in range(1, total + 1)], index

    silent = Predictor(tiny_model, branch_consistent=True, progress="off").segment_file(ct)
    assert capsys.readouterr().err == ""
    assert np.array_equal(sitk.GetArrayFromImage(reported.labels), sitk.GetArrayFromImage(silent.labels))
    assert np.array_equal(sitk.GetArrayFromImage(reported.standard_labels),
                          sitk.GetArrayFromImage(silent.standard_labels))
