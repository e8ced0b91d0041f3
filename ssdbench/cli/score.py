"""`ssdbench score RUN...`: the MLPerf olympic mean of the time-to-train of several runs.

The scoring rules are in `ssdbench.train.score`. A submission tree (from `ssdbench package`) is
scored as mlperf_logging's result summarizer scores it, RCP normalisation included.
"""

from __future__ import annotations

import argparse

from ssdbench.checks import output_file
from ssdbench.io import atomic_write_json
from ssdbench.train.mlperf_checks import RULESET
from ssdbench.train.score import format_table, format_tree, is_tree, olympic_mean, read_run, score_tree

EPILOG = """examples:
  ssdbench score runs/mlperf-*                 # five run folders of one config
  ssdbench score run1/mlperf_log.txt run2/mlperf_log.txt ...
  ssdbench score submission                    # a tree from `ssdbench package`: the result summarizer's score
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folder (summary.json or MLPerf log), MLPerf log file, or one submission tree")
    parser.add_argument("--json", dest="json_out", help="also write the score as JSON to this file")
    parser.add_argument("--ruleset", default=RULESET, help=f"training ruleset of a submission tree (default {RULESET})")


def _tree(args: argparse.Namespace) -> int:
    entries = score_tree(args.runs[0], args.ruleset)
    print(format_tree(entries))
    if args.json_out:
        atomic_write_json(args.json_out, [dict(e, runs=[vars(r) for r in e["runs"]]) for e in entries])
    return 0 if entries and all(e["score"] is not None for e in entries) else 1


def run(args: argparse.Namespace) -> int:
    if args.json_out:
        output_file(args.json_out, "--json")
    if len(args.runs) == 1 and is_tree(args.runs[0]):
        return _tree(args)
    results = [read_run(r) for r in args.runs]
    summary = olympic_mean(results)
    print(format_table(results, summary))
    if args.json_out:
        payload = dict(summary, runs=[vars(r) for r in results])
        atomic_write_json(args.json_out, payload)
    return 0 if summary["score"] is not None else 1
