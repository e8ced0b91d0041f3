"""`ssdbench accuracy --log FILE`: COCO mAP of a LoadGen accuracy log (`ssdbench.loadgen.accuracy`)."""

from __future__ import annotations

from ssdbench.eval.coco_scoring import BACKENDS
from ssdbench.loadgen.accuracy import report_accuracy

EPILOG = """examples:
  ssdbench accuracy --log runs/lg/mlperf_log_accuracy.json               # embedded val set
  ssdbench accuracy --log mlperf_log_accuracy.json --data /coco --backend pycocotools
"""


def add_arguments(parser) -> None:
    parser.add_argument("--log", required=True, help="mlperf_log_accuracy.json of an accuracy-mode run")
    parser.add_argument("--data", default=None, help="COCO-format dataset root (default: the embedded one)")
    parser.add_argument("--backend", choices=BACKENDS, default="faster", help="COCO eval implementation")


def run(args) -> int:
    report_accuracy(args.log, args.data, args.backend)
    return 0
