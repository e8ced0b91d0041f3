"""`ssdbench submission run --category datacenter|edge --division closed|open ...`: one resumable command.

Every step from nothing to a checked submission tree (`ssdbench.loadgen.pipeline`): per required
scenario the performance run (Server: find the peak, then confirm it), the accuracy run, the
compliance tests; then the tree and its check, a table and a picture. Data, model and backend
flags are those of `ssdbench loadgen`; per-scenario LoadGen keys go in --user-conf. Rerun the same
command after a failure or a SIGTERM: finished steps are kept, the rest runs.
"""

from __future__ import annotations

from pathlib import Path

from ssdbench.checks import Range, output_folder
from ssdbench.cli import loadgen as L
from ssdbench.loadgen.pipeline import Plan, run_submission
from ssdbench.loadgen.rules import WAIVABLE

EPILOG = """examples:
  ssdbench submission run --category edge --division open --org MyOrg --system cpu1 --preset cpu \\
      --model ssd128_mini --user-conf my.conf --system-json system.json --out runs/sub_edge
  ssdbench submission run --category datacenter --division closed --org MyOrg --system h100 \\
      --preset gpu_h100 --weights resnet34-ssd1200.pt --data /coco --system-json system.json --out runs/sub_dc
exit status: 0 the tree passes the check, 1 it does not, 2 error; rerun the same command to resume
"""


def add_arguments(parser) -> None:
    L.add_arguments(parser)  # the loadgen flags (--scenario, --mode and --find-peak are refused below)
    a = parser.add_argument
    a("--category", required=True, choices=("datacenter", "edge", "datacenter,edge"), help="system category")
    a("--division", required=True, choices=("closed", "open"), help="closed or open")
    a("--org", required=True, help="submitting organisation")
    a("--system", required=True, help="system name")
    a("--system-json", help="JSON object with the system-description fields the machine cannot tell")
    a("--waive", default="", help=f"comma-separated rules reported but not failing: {', '.join(WAIVABLE)} "
      "(CI-sized runs; never for a real submission)")  # fmt: skip
    a("--skip-find-peak", action="store_true", help="Server: run at the settings' target_qps, no peak search")
    a("--peak-margin", type=Range(float, gt=0, le=1), default=0.95,
      help="Server: the performance run at this fraction of the peak find-peak found (default 0.95)")
    a("--skip-compliance", action="store_true", help="open division only: no compliance tests")


def run(args) -> int:
    from ssdbench.errors import CliError

    given = [f for f, v in (("--scenario", args.scenario), ("--mode", args.mode != "performance"),
                            ("--find-peak", args.find_peak)) if v]  # fmt: skip
    if given:
        raise CliError(f"{', '.join(given)}: `submission run` runs every scenario and mode of the category itself")
    out = Path(args.out if args.out != "runs/loadgen" else "runs/submission")
    output_folder(str(out), "--out")
    plan = Plan(category=args.category, division=args.division, org=args.org, system=args.system, out=out,
                round=args.round, preset=args.preset, user_conf=args.user_conf, flags=L.flags_from_args(args),
                data=args.data, weights=args.weights, model_file=args.model_file, allow_pickle=args.allow_pickle,
                system_json=args.system_json, waive=tuple(w for w in args.waive.split(",") if w),
                find_peak=not args.skip_find_peak, peak_margin=args.peak_margin, compliance=not args.skip_compliance)  # fmt: skip
    ok, _ = run_submission(plan, say=lambda line: print(line, flush=True))
    return 0 if ok else 1
