"""`ssdbench compliance TEST01|TEST04-A|TEST04-B|TEST05 --run PERF_RUN`: MLPerf's compliance tests.

Reruns the performance run with each test's audit settings (`ssdbench.loadgen.compliance`) and
verifies it as MLPerf's scripts do; the outputs land in the layout the submission checker reads.
"""

from __future__ import annotations

from ssdbench.loadgen.compliance import run_compliance
from ssdbench.loadgen.run import RunInputs

EPILOG = """examples:
  ssdbench compliance all --run runs/offline --accuracy-run runs/offline_acc --out runs/compliance/Offline
  ssdbench compliance TEST04 --run runs/server --out runs/compliance/Server      # TEST04-A and TEST04-B
  ssdbench compliance TEST05 --run runs/server --out runs/compliance/Server
exit status: 0 every test passed, 1 a test failed, 2 error
"""


def add_arguments(parser) -> None:
    parser.add_argument("tests", nargs="+", metavar="TEST",
                        help="TEST01, TEST04-A, TEST04-B, TEST04 (A and B), TEST05 or all")  # fmt: skip
    parser.add_argument("--run", required=True, help="the performance run folder of `ssdbench loadgen` to audit")
    parser.add_argument("--accuracy-run", default=None,
                        help="the accuracy run folder of the same system and data (needed by TEST01)")  # fmt: skip
    parser.add_argument("--out", required=True,
                        help="output folder: compliance/<system>/ssd-resnet34/<Scenario> of the submission")  # fmt: skip
    parser.add_argument("--allow-pickle", action="store_true",
                        help="the run's weights are a pickled whole-model file (trusted files only)")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="do not cache resized samples on disk")


def run(args) -> int:
    inputs = RunInputs(cache=not args.no_cache, allow_pickle=args.allow_pickle)
    results = run_compliance(args.tests, args.run, args.out, accuracy_run=args.accuracy_run, inputs=inputs)
    return 0 if all(results.values()) else 1
