"""`ssdbench` command-line entry point: one program, one sub-command per mode.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``;
modules are imported only when their command runs, so `ssdbench --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ssdbench.cli.env import check_environment
from ssdbench.errors import CliError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ssdbench.cli.demo", "train the demo model on the embedded dataset, evaluate, draw predictions"),
    "train": ("ssdbench.cli.train", "train an SSD model (MLPerf recipe, system presets, demo)"),
    "eval": ("ssdbench.cli.eval", "COCO mAP of a model on a COCO-format dataset"),
    "score": ("ssdbench.cli.score", "MLPerf olympic mean of the time-to-train of several runs"),
    "package": ("ssdbench.cli.package", "training runs as an MLPerf submission tree; MLPerf's checkers on it"),
    "check-log": ("ssdbench.cli.check_log", "MLPerf's compliance checker on one training log"),
    "predict": ("ssdbench.cli.predict", "detect objects in images; JSON and drawn boxes"),
    "export": ("ssdbench.cli.export", "export a model (ONNX)"),
    "quantize": ("ssdbench.cli.quantize", "INT8 post-training quantization for OpenVINO or ONNX Runtime"),
    "loadgen": ("ssdbench.cli.loadgen", "SSD-Large under MLPerf LoadGen (four scenarios)"),
    "accuracy": ("ssdbench.cli.accuracy", "COCO mAP of a LoadGen accuracy log (MLPerf's scoring rule)"),
    "compliance": ("ssdbench.cli.compliance", "MLPerf compliance tests TEST01/04/05 of a LoadGen run"),
    "submission": ("ssdbench.cli.submission", "assemble and check an MLPerf inference submission tree"),
    "data": ("ssdbench.cli.data", "synthesize, download and check COCO-format datasets"),
    "model": ("ssdbench.cli.model", "model facts: default boxes, parameters, GFLOPs"),
    "benchmark": ("ssdbench.cli.benchmark", "run a benchmark script from benchmarks/ (table + JSON)"),
}

EPILOG = """examples:
  ssdbench demo                                  # the whole product on the embedded dataset
  ssdbench model info ssd1200_r34
  ssdbench data synth --out data/synth
  ssdbench train --preset mlperf --data /coco --backbone-weights resnet34-333f7ec4.pth
  torchrun --nproc_per_node 8 -m ssdbench train --preset dgxa100_x8 --data /coco
  ssdbench eval --data /coco --weights runs/x/checkpoints/last.pt --model ssd300_r34
  ssdbench loadgen --scenario Offline --mode performance --preset cpu
"""


class Parser(argparse.ArgumentParser):
    """argparse, with a value check's message naming its flag first: ``--qps must be a finite
    number > 0, got nan`` (argparse writes ``argument --qps: must be ...``; `ssdbench.checks`)."""

    def error(self, message: str):
        # One line, not the whole usage block before it (usage is for --help).
        message = re.sub(r"^argument ([^:]+): (must be )", r"\1 \2", message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ssdbench",
        description="MLPerf SSD-ResNet34: training (SSD300) and SSD-Large inference (LoadGen).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    if rest and rest[0] in getattr(module, "SUBCOMMANDS", {}):  # e.g. `ssdbench submission run`
        module = importlib.import_module(module.SUBCOMMANDS[rest[0]])
        name, rest = f"{name} {rest[0]}", rest[1:]
    parser = Parser(
        prog=f"ssdbench {name}",
        description=(module.__doc__ or COMMANDS[name][1]).strip().splitlines()[0],
        epilog=getattr(module, "EPILOG", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command_line = ["ssdbench", *name.split(), *rest]  # recorded by commands whose outputs must say how they were made
    try:
        check_environment()  # variables are values too: one line naming a bad one, before any work
        return int(module.run(args) or 0)
    except (CliError, OSError, ValueError) as exc:
        # One clear line naming the culprit; tracebacks only with SSDBENCH_DEBUG=1. OSError:
        # what the system refused (full disk, permissions), its message names the file.
        import os

        if os.environ.get("SSDBENCH_DEBUG"):
            raise
        print(f"ssdbench {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssdbench {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
