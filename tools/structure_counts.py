"""The package's shape in numbers: modules per package, parameter lists, module names used twice.

    python tools/structure_counts.py            # table on stdout
    python tools/structure_counts.py --json F   # the same as JSON
    python tools/structure_counts.py --trace-train [--json F]
        also runs a one-step training on the embedded dataset under a profiler and counts the
        package files whose functions receive the run's config (the argparse Namespace, the
        TrainConfig, or a TrainSetup holding it) as an argument: how many files the config passes
        through, how many stops (calls that move it to another file) and how many returns to a file
        it had already left.

Static counts read the source with `ast`; nothing of the package is imported for them.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssdbench"


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _param_count(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names = [n for n in names if n not in ("self", "cls")]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def static_counts() -> dict:
    modules: dict[str, int] = Counter()
    names: dict[str, list[str]] = {}
    params = []
    lines = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        package = rel.parts[0] if len(rel.parts) > 1 else "(top)"
        if path.name != "__init__.py":
            modules[package] += 1
            if package != "cli":
                names.setdefault(path.stem, []).append(str(rel))
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            params.append((_param_count(fn), f"{rel}:{fn.name}"))
            lines.append(fn.end_lineno - fn.lineno + 1)
    params.sort(key=lambda p: (-p[0], p[1]))
    lines.sort()
    return {
        "modules_per_package": dict(sorted(modules.items())),
        "modules_total": sum(modules.values()),
        "longest_parameter_lists": [{"params": n, "function": f} for n, f in params[:10]],
        "functions_with_8_or_more_params": sum(1 for n, _ in params if n >= 8),
        "function_lines_median_p90_max": [
            statistics.median(lines), lines[int(0.9 * (len(lines) - 1))], lines[-1]],
        "module_names_used_twice_outside_cli": {k: v for k, v in sorted(names.items()) if len(v) > 1},
    }


def trace_train() -> dict:
    """Run `ssdbench train` for one step and follow the config objects through the package."""
    import argparse as _argparse
    import tempfile

    sys.path.insert(0, str(ROOT))
    from ssdbench.train import config

    # What carries the config: the flags, the TrainConfig, and an object that holds it (TrainSetup)
    carriers = tuple(t for t in (config.TrainConfig, _argparse.Namespace, getattr(config, "TrainSetup", None)) if t)
    package_root = str(PACKAGE) + "/"
    route: list[str] = []  # every call that receives the config, its methods included
    passed: list[str] = []  # calls that receive it as an argument other than `self`

    def carries_config(frame) -> tuple[bool, bool]:
        code = frame.f_code
        anywhere = as_argument = False
        for i, name in enumerate(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]):
            if isinstance(frame.f_locals.get(name), carriers):
                anywhere = True
                as_argument = as_argument or not (i == 0 and name == "self")
        return anywhere, as_argument

    def profile(frame, event, arg):
        if event != "call":
            return
        filename = frame.f_code.co_filename
        if not filename.startswith(package_root):
            return
        anywhere, as_argument = carries_config(frame)
        rel = filename[len(package_root):]
        for hit, seq in ((anywhere, route), (as_argument, passed)):
            if hit and (not seq or seq[-1] != rel):
                seq.append(rel)

    from ssdbench.cli import main

    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--preset", "demo", "--epochs", "1", "--steps-per-epoch", "1",
                "--max-samples", "16", "--batch-size", "8", "--eval-batch-size", "8",
                "--workers", "0", "--no-final-eval", "--out", out]
        sys.setprofile(profile)
        try:
            code = main(argv)
        finally:
            sys.setprofile(None)
    return {"exit": code, "with_methods": _route_counts(route), "as_argument": _route_counts(passed)}


def _route_counts(route: list[str]) -> dict:
    seen: set[str] = set()
    returns = 0
    for f in route:
        returns += f in seen
        seen.add(f)
    return {"files": len(seen), "stops": len(route), "returns": returns, "files_list": sorted(seen), "route": route}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument("--trace-train", action="store_true", help="follow the training config at run time")
    args = parser.parse_args()
    counts = static_counts()
    if args.trace_train:
        counts["train_config_trace"] = trace_train()
    print("modules per package:", ", ".join(f"{k} {v}" for k, v in counts["modules_per_package"].items()),
          f"(total {counts['modules_total']})")
    print("longest parameter lists:")
    for p in counts["longest_parameter_lists"][:5]:
        print(f"  {p['params']:3d}  {p['function']}")
    print("functions with 8 or more parameters:", counts["functions_with_8_or_more_params"])
    print("function lines median / p90 / max:", counts["function_lines_median_p90_max"])
    print("module names used twice outside cli/:",
          "; ".join(f"{k}: {', '.join(v)}" for k, v in counts["module_names_used_twice_outside_cli"].items())
          or "none")
    if args.trace_train:
        trace = counts["train_config_trace"]
        for key, what in (("as_argument", "passed as an argument"), ("with_methods", "its own methods included")):
            t = trace[key]
            print(f"training config, {what}: {t['files']} files, {t['stops']} stops, {t['returns']} returns "
                  f"to a file already left (exit {trace['exit']})")
            print("  route:", " -> ".join(t["route"]))
    if args.json:
        args.json.write_text(json.dumps(counts, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
