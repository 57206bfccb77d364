"""The `hipas` dispatcher: every listed command exists; user errors are one line and exit 2."""

from __future__ import annotations

import argparse
import importlib

import pytest

from hipas_core.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_parser_and_a_runner(name, capsys):
    module = importlib.import_module(f"hipas_core.cli.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"hipas {name}")
    module.build_parser(parser)
    assert callable(module.run)
    assert [action for action in parser._actions if action.dest != "help"]  # the command's own options
    # and the dispatcher reaches that parser: `hipas NAME --help` shows its usage and help line
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: hipas {name} ") and " ".join(COMMANDS[name][1].split()) in " ".join(shown.split())


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


def test_allocator_settings_unless_the_user_chose_or_declined():
    import platform

    from hipas_core.allocator import SETTINGS, tuned_environment

    glibc = platform.libc_ver()[0] == "glibc"
    tuned = tuned_environment({"PATH": "/bin"})
    assert (tuned == {"PATH": "/bin", **SETTINGS}) if glibc else tuned is None
    assert tuned_environment({"HIPAS_MALLOC_TUNING": "0"}) is None
    assert tuned_environment({"MALLOC_TRIM_THRESHOLD_": "1000000"}) is None  # the user's own choice stays


def test_the_hipas_command_runs_with_the_tuned_allocator(tmp_path, hipas, monkeypatch):
    """The console script restarts itself once with the settings (glibc reads them at start-up)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings apply to glibc only")
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "HIPAS_MALLOC_TUNING"):
        monkeypatch.delenv(key, raising=False)
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys\nfrom hipas_core.allocator import restart_with_tuned_allocator\n"
                     "restart_with_tuned_allocator()\nprint(os.environ.get('MALLOC_TRIM_THRESHOLD_'), len(sys.argv))\n")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(probe), "x"], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(64 << 30), "2"]
    assert hipas("--version").returncode == 0
