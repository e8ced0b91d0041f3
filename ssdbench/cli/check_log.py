"""Run MLPerf's compliance checker (training, ruleset 1.1.0) on one MLPerf log.

Prints PASS, or FAIL and one line per failed rule; exit status 0 when the log passes, 1 when it
does not. The ruleset: SSD-ResNet34 is the "ssd" benchmark up to training 1.1.0 (from 2.0.0 on
"ssd" is another network), so 1.1.0 is the one ssdbench's logs follow.
"""

from __future__ import annotations

import argparse

from ssdbench.train.mlperf_checks import RULESET

EPILOG = """examples:
  ssdbench check-log runs/mlperf-20240101-120000/mlperf_log.txt
  ssdbench check-log submission/results/cpu1/ssd/result_0.txt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="an MLPerf log (mlperf_log.txt or result_N.txt) or a run folder")
    parser.add_argument("--ruleset", default=RULESET, help=f"training ruleset (default {RULESET})")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ssdbench.train.mlperf_checks import compliance

    path = Path(args.log)
    if path.is_dir():
        path = path / "mlperf_log.txt"
    failed = compliance(path, args.ruleset)
    if not failed:
        print(f"PASS  {path}: MLPerf training {args.ruleset} compliance checker")
        return 0
    print(f"FAIL  {path}: {len(failed)} rule(s) failed (MLPerf training {args.ruleset} compliance checker)")
    for line in failed:
        print(f"  {line}")
    return 1
