"""The command dispatcher: help, unknown commands, one-line errors, the benchmark runner."""

import argparse
import importlib
import subprocess
import sys

import pytest

from ssdbench.cli import COMMANDS, main

# The commands the README documents (its command table); written out here, not read from COMMANDS.
DOCUMENTED = ("demo", "train", "eval", "score", "package", "check-log", "loadgen", "accuracy", "compliance",
              "submission", "predict", "export", "quantize", "data", "model", "benchmark")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "ssdbench", *args], check=False, capture_output=True, text=True,
                          timeout=120)


def test_documented_commands_are_dispatched():
    assert set(COMMANDS) == set(DOCUMENTED)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_each_command_module_parses_its_flags(name):
    """Each command's module is under ssdbench.cli, builds its parser and has a run()."""
    module_name = COMMANDS[name][0]
    assert module_name.startswith("ssdbench.cli."), module_name
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ssdbench {name}")
    module.add_arguments(parser)
    assert callable(module.run)
    assert parser.format_help().startswith(f"usage: ssdbench {name}")


def test_help_lists_every_command():
    proc = _run("--help")
    assert proc.returncode == 0
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ") and line.split()}
    for name in DOCUMENTED:
        assert name in listed, f"{name} missing from `ssdbench --help`"


def test_command_help_shows_its_flags():
    proc = _run("eval", "--help")
    assert proc.returncode == 0 and "--weights" in proc.stdout and "examples:" in proc.stdout


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
