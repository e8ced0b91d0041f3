"""`ssdbench submission --org ORG --system NAME --division D --category C RUN_DIR... --out DIR`.

Assembles the MLPerf inference submission tree of ssd-resnet34 from `ssdbench loadgen` runs and
`ssdbench compliance` folders (`ssdbench.loadgen.submission`), then checks it against the round's
rules (`ssdbench.loadgen.submission_check`) and prints each violation. `--check DIR` only checks a tree.
"""

from __future__ import annotations

import json
import sys

from ssdbench.checks import safe_name
from ssdbench.errors import CliError
from ssdbench.loadgen.rules import WAIVABLE
from ssdbench.loadgen.submission import Submitter, build_submission
from ssdbench.loadgen.submission_check import check_tree

SUBCOMMANDS = {"run": "ssdbench.cli.submission_run"}  # `ssdbench submission run ...`: every step in one command

EPILOG = """examples:
  ssdbench submission --org MyOrg --system cpu1 --division closed --category datacenter \\
      runs/server runs/server_acc runs/compliance/Server runs/offline runs/offline_acc runs/compliance/Offline \\
      --system-json system.json --out submission
  ssdbench submission --check submission --round v2.0
  ssdbench submission run --category edge --division open ...   # every step, resumable (submission run --help)
exit status: 0 the tree passes, 1 it has violations, 2 error
"""


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("runs", nargs="*", metavar="RUN_DIR", help="loadgen run folders (performance and accuracy, one each per "
      "scenario) and compliance --out folders")  # fmt: skip
    a("--org", help="submitting organisation (the folder name under the division)")
    a("--system", help="system name: systems/<NAME>.json and the results/<NAME>/ folders")
    a("--division", choices=("closed", "open"), help="closed or open")
    a("--category", choices=("datacenter", "edge", "datacenter,edge"), help="system category (system_type)")
    a("--system-json", help="JSON object with the system-description fields the machine cannot tell "
      "(status, host_storage_type, cooling, ...); its values win")  # fmt: skip
    a("--out", help="output folder (receives <division>/<org>/...)")
    a("--check", metavar="DIR", help="only check an existing tree")
    a("--round", default=None, help="round of the rules (default: the runs' round; v2.0 for --check)")
    a("--waive", default="", help=f"comma-separated rules reported but not failing: {', '.join(WAIVABLE)} "
      "(CI-sized runs; never for a real submission)")  # fmt: skip
    a("--json", action="store_true", help="print the check result as JSON")


def run(args) -> int:
    waive = [w for w in args.waive.split(",") if w]
    if args.check:
        root, round_name = args.check, args.round
    else:
        missing = [f for f in ("org", "system", "division", "category", "out") if not getattr(args, f)]
        if missing or not args.runs:
            raise CliError(f"building a tree needs --{', --'.join(missing or ['...'])} and RUN_DIRs (or --check DIR)")
        safe_name(args.org, "--org")  # both become folder names under --out
        safe_name(args.system, "--system")
        submitter = Submitter(args.org, args.system, args.division, args.category)
        root, round_name = build_submission(submitter, args.runs, args.out, args.system_json, args.round)
        print(f"submission tree written to {root} (round {round_name})")
    result = check_tree(root, round_name, waive)
    if args.json:
        print(json.dumps({"ok": result.ok, "violations": [str(v) for v in result.violations],
                          "waived": [str(v) for v in result.waived], "warnings": result.warnings,
                          "results": result.results, "units": result.units}, indent=2))
        return 0 if result.ok else 1
    for v in result.waived:
        print(f"waived: {v}")
    for w in result.warnings:
        print(f"warning: {w}")
    for v in result.violations:
        print(f"VIOLATION: {v}", file=sys.stderr)
    for name, value in sorted(result.results.items()):
        print(f"result {name}: {value:.6g} {result.units.get(name, '')}".rstrip())
    print(f"check ({round_name or 'v2.0'}): {'PASS' if result.ok else f'FAIL, {len(result.violations)} violation(s)'}")
    return 0 if result.ok else 1
