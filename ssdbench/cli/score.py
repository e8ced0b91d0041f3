"""`ssdbench score RUN...`: the MLPerf olympic mean of the time-to-train of several runs.

The scoring rules are in `ssdbench.train.score`.
"""

from __future__ import annotations

import argparse

from ssdbench.checks import output_file
from ssdbench.io import atomic_write_json
from ssdbench.train.score import format_table, olympic_mean, read_run

EPILOG = """examples:
  ssdbench score runs/mlperf-*                 # five run folders of one config
  ssdbench score run1/mlperf_log.txt run2/mlperf_log.txt ...
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder (summary.json or MLPerf log) or MLPerf log file")
    parser.add_argument("--json", dest="json_out", help="also write the score as JSON to this file")


def run(args: argparse.Namespace) -> int:
    if args.json_out:
        output_file(args.json_out, "--json")
    results = [read_run(r) for r in args.runs]
    summary = olympic_mean(results)
    print(format_table(results, summary))
    if args.json_out:
        payload = dict(summary, runs=[vars(r) for r in results])
        atomic_write_json(args.json_out, payload)
    return 0 if summary["score"] is not None else 1
