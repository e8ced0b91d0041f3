"""Run one of the benchmark scripts in `benchmarks/` (a checkout of the repository is needed).

Each script warms up, takes medians, prints a table and writes JSON (`--out`); the arguments after
the name go to the script unchanged (`ssdbench benchmark postprocess --help`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

EPILOG = """examples:
  ssdbench benchmark list
  ssdbench benchmark postprocess --threads 1
  ssdbench benchmark data --only eval
  ssdbench benchmark gpu --device cpu --quick
"""

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "timing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="benchmark script name, or 'list'")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def run(args: argparse.Namespace) -> int:
    names = available()
    if not names:
        raise FileNotFoundError(f"no benchmarks folder at {BENCH_DIR}: run from a checkout of the repository")
    if args.name == "list":
        print("\n".join(names))
        return 0
    if args.name not in names:
        raise ValueError(f"unknown benchmark {args.name!r}; choose one of {', '.join(names)}")
    cmd = [sys.executable, str(BENCH_DIR / f"{args.name}.py"), *args.args]
    return subprocess.run(cmd, check=False).returncode
