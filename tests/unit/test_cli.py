"""The `hipas` dispatcher: every listed command exists; user errors are one line and exit 2."""

from __future__ import annotations

import argparse
import importlib

import pytest

from hipas_core.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_parser_and_a_runner(name):
    module = importlib.import_module(f"hipas_core.cli.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"hipas {name}")
    module.build_parser(parser)
    assert callable(module.run)
    assert parser.format_help()


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_missing_input_gives_one_line_and_exit_2(tmp_path, hipas):
    missing = tmp_path / "absent.nii.gz"
    result = hipas("normalize", "-i", missing, "-o", tmp_path / "out.nii.gz")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and str(missing) in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_allocator_tuning_is_applied_unless_the_user_chose_or_declined(monkeypatch):
    from hipas_core.allocator import tune_allocator

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("HIPAS_MALLOC_TUNING", "0")
    assert tune_allocator() is False
    monkeypatch.setenv("HIPAS_MALLOC_TUNING", "1")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert tune_allocator() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    import platform

    assert tune_allocator() is (platform.libc_ver()[0] == "glibc")
