"""Lay training runs out as an MLPerf submission tree and run MLPerf's checkers on it.

Writes OUT/results/<system>/ssd/result_{0..N-1}.txt (the runs' MLPerf logs) and
OUT/systems/<system>.json, then runs mlperf_logging's package checker, seed checker, RCP checker
(closed division) and compliance checker (each log), prints one verdict line per checker, and the
score as `ssdbench score OUT` computes it. Exit status 0 when every checker passes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssdbench.train.mlperf_checks import RULESET

EPILOG = """examples:
  ssdbench train --preset mlperf --data /coco --runs 5 --out runs/sub
  ssdbench package --system dgx1_x8 --org MyOrg --system-json my_system.json --out submission runs/sub/run_*
  ssdbench package --system cpu1 --org MyOrg --system-json cpu.json runs/demo5/run_*

--system-json holds the system description fields this machine cannot tell (interconnects,
storage type, networking, memory configuration, cooling, ...); a missing one is named in the error.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (their mlperf_log.txt) or log files")
    parser.add_argument("--system", required=True, help="system name: results/<system>/, systems/<system>.json")
    parser.add_argument("--org", required=True, help="submitter (the system description's submitter)")
    parser.add_argument("--system-json", help="JSON object of system description fields (wins over the machine's)")
    parser.add_argument("--out", default="submission", help="submission tree folder (default: submission)")
    parser.add_argument("--ruleset", default=RULESET, help=f"training ruleset ({RULESET}: the last with SSD-ResNet34)")
    parser.add_argument("--no-check", action="store_true", help="only lay the tree out")


def _verdict(name: str, ok: bool | None, detail: str = "", lines=()) -> bool:
    word = "n/a " if ok is None else ("PASS" if ok else "FAIL")
    print(f"{word}  {name}" + (f": {detail}" if detail else ""))
    for line in lines:
        print(f"      {line}")
    return ok is not False


def run(args: argparse.Namespace) -> int:
    from ssdbench.checks import safe_name
    from ssdbench.train.mlperf_checks import compliance, package_check, rcp_check, seed_check
    from ssdbench.train.package import lay_out, read_system_json
    from ssdbench.train.score import format_tree, score_tree

    safe_name(args.system, "--system")  # it names results/<system>/ and systems/<system>.json
    safe_name(args.org, "--org")  # the submitter, also a folder name in the inference tree
    tree = lay_out(args.out, args.system, args.org, args.runs, read_system_json(args.system_json))
    print(f"submission tree: {args.out} ({len(tree['files'])} results in {tree['results']}, "
          f"{tree['system_json']}, {tree['division']} division)")
    if args.no_check:
        return 0
    ok = True
    passed, errors = package_check(args.out, args.ruleset)
    ok &= _verdict("package checker", passed, "no errors" if passed else f"{len(errors)} error(s)", errors)
    passed, errors = seed_check(tree["files"], args.ruleset)
    ok &= _verdict("seed checker", passed, "every run logs its own seed" if passed else "", errors)
    if tree["division"] == "closed":
        passed, message, factor = rcp_check(tree["results"], args.ruleset)
        ok &= _verdict("RCP checker", passed, f"{message}; score factor {factor:.6f}")
    else:
        _verdict("RCP checker", None, "open division (the package checker runs it for closed only)")
    for path in tree["files"]:
        failed = compliance(path, args.ruleset)
        ok &= _verdict(f"compliance {Path(path).name}", not failed, "" if not failed else
                       f"{len(failed)} failed rule(s)", failed)
    print(format_tree(score_tree(args.out, args.ruleset)))
    return 0 if ok else 1
