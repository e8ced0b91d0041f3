"""Shared by the fault-probe tests (docs/robustness.md): a command under a time limit, its exit
status and its one error line; a folder's listing to show that nothing was written beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@contextmanager
def time_limit(seconds: int):
    """Fail (TimeoutError) when the block runs longer than ``seconds``: a hang must fail the test."""

    def expired(_signum, _frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(capsys, *argv, seconds: int = 120) -> tuple[int, str, str]:
    """``ssdbench ARGV`` in this process under a time limit: (exit status, stdout, stderr)."""
    from ssdbench.cli import main

    with time_limit(seconds):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's errors
            rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def cli_process(*argv, seconds: int = 120, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """``python -m ssdbench ARGV`` in a subprocess killed after ``seconds`` (TimeoutExpired fails the test)."""
    return subprocess.run([sys.executable, "-m", "ssdbench", *map(str, argv)], capture_output=True, text=True, check=False,
                          timeout=seconds, env={**ENV, **(env or {})}, cwd=cwd)  # fmt: skip


def error_line(err: str, command: str) -> str:
    """The one ``ssdbench COMMAND: error: ...`` line of stderr (the test fails without exactly one)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(f"ssdbench {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def listing(folder: Path) -> set[str]:
    """Every path under ``folder``, relative: compared before and after a command."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}
