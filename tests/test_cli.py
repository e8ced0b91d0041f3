"""The command dispatcher: help, unknown commands, one-line errors, the benchmark runner."""

import subprocess
import sys

from ssdbench.cli import COMMANDS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "ssdbench", *args], check=False, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_an_error():
    proc = _run("nope")
    assert proc.returncode == 2 and "unknown command 'nope'" in proc.stderr


def test_user_errors_are_one_line():
    proc = _run("model", "info", "nope")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ssdbench model: error:") and "nope" in lines[0]


def test_benchmark_list_and_unknown(capsys):
    assert main(["benchmark", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert "postprocess" in names and "timing" not in names
    assert main(["benchmark", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
