"""MLPerf's own checkers (`mlperf_logging`), run on ssdbench's logs and submission trees.

Which ruleset: SSD-ResNet34 is the ``ssd`` benchmark of the training rulesets up to 1.1.0; from
2.0.0 on ``ssd`` names another network (RetinaNet), so 1.1.0 is the last ruleset of this model
and the one `train.mllog` writes to (`RULESET`).

- `compliance`: the compliance checker on one log (in this process, as the result summarizer
  runs it), its failed rules one line each;
- `seed_check`: the package checker's seed checker on the result files of one benchmark folder
  (distinct seeds per run; the package checker runs it for the closed division only);
- `rcp_check`: the RCP checker on a closed-division benchmark folder, and the normalisation
  factor the result summarizer applies to its score;
- `package_check`: the package checker on a whole tree, as a subprocess (its own command line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

RULESET = "1.1.0"
USAGE = "training"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def captured_logging():
    """The root logger's records inside the block go to a list (and nowhere else)."""
    root = logging.getLogger()
    handler, handlers, level = _Collect(), root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def one_line(message: str) -> str:
    """A checker message on one line: its first line, plus the failed test when it names one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    test = next((line for line in lines if line.startswith("failed test:")), None)
    head = lines[0].rstrip(":")
    return f"{head}; {test}" if test and test != lines[0] else head


def compliance(path: str | os.PathLike, ruleset: str = RULESET) -> list[str]:
    """The compliance checker's failed rules for one training log, one line each ([] = passes).

    FileNotFoundError when the log does not exist."""
    from mlperf_logging.compliance_checker import mlp_compliance

    if not os.path.isfile(path):
        raise FileNotFoundError(f"MLPerf log not found: {path}")
    mlp_compliance.enqueued_configs.clear()  # module state the checker fills as it goes
    checker = mlp_compliance.make_checker(USAGE, ruleset, quiet=True, werror=False)
    with captured_logging():
        valid = checker.check_file(os.fspath(path), f"{USAGE}_{ruleset}/common.yaml")
    if valid:
        return []
    return [one_line(m) for m in (*checker.overwritable.values(), *checker.not_overwritable)]


def seed_check(result_files: list[str | os.PathLike], ruleset: str = RULESET) -> tuple[bool, list[str]]:
    """(passed, error lines) of the package checker's `SeedChecker` on one benchmark's result files."""
    from mlperf_logging.package_checker.seed_checker import SeedChecker

    with captured_logging() as records:
        ok = SeedChecker(ruleset).check_seeds([os.fspath(f) for f in result_files])
    return ok, [r.getMessage().strip() for r in records if r.levelno >= logging.ERROR]


def rcp_check(benchmark_dir: str | os.PathLike, ruleset: str = RULESET) -> tuple[bool, str, float]:
    """(passed, the RCP checker's message, score factor) for a closed benchmark folder.

    The factor is what the result summarizer multiplies the olympic mean by: RCP mean epochs /
    the submission's mean epochs when the runs converge faster than the reference but within
    its allowed speedup (the RCP checker then writes it to scaling.json), else 1. Nothing is
    written here."""
    from mlperf_logging.rcp_checker import rcp_checker

    with captured_logging():
        passed, message, norm = rcp_checker.check_directory(
            os.fspath(benchmark_dir), USAGE, ruleset, False, False, rcp_pass="pruned_rcps", set_scaling=False)
    return passed, message, float(norm) if passed else 1.0


def package_check(tree: str | os.PathLike, ruleset: str = RULESET, log_output: str | os.PathLike | None = None,
                  timeout_s: float = 1800) -> tuple[bool, list[str]]:
    """(passed, ERROR lines) of ``python -m mlperf_logging.package_checker TREE training RULESET``.

    The checker prints "PACKAGE CHECKER FOUND NO ERRORS" on success (its exit status says nothing).
    ``log_output``: its detailed log (default: TREE/checks/package_checker.log)."""
    tree = Path(tree)
    log_output = Path(log_output or tree / "checks" / "package_checker.log")
    log_output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlperf_logging.package_checker", os.fspath(tree), USAGE, ruleset,
           "--log_output", os.fspath(log_output)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)  # verdict in text
    text = proc.stdout + proc.stderr
    errors = [line.split("ERROR - ", 1)[1].strip() for line in text.splitlines() if "ERROR - " in line]
    if proc.returncode != 0 and not errors:
        errors = [text.strip().splitlines()[-1] if text.strip() else f"exit status {proc.returncode}"]
    return "PACKAGE CHECKER FOUND NO ERRORS" in text and proc.returncode == 0, errors
