"""The package's shape: no import cycles, and every import goes down the pipeline.

Layers, lowest first (a module may import its own layer and the layers below it):
  base     errors, checks, io, dist, precision, progress, sysinfo, workers
  model    network, default boxes, encoding, loss, post-processing
  data     COCO, synthetic data, augmentation, loaders
  eval     COCO scoring, evaluate
  train    (and infer, on the same level but never importing each other)
  loadgen  (uses infer and eval)
  cli      the commands (nothing imports them)
Every import counts, also those inside functions. A module name (file stem) is used once outside
cli/ (whose modules are named after their commands), so that a name says which module it is.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssdbench"
BASE = {"errors", "checks", "io", "dist", "precision", "progress", "sysinfo", "workers"}
ALLOWED = {
    "base": {"base"},
    "model": {"base", "model"},
    "data": {"base", "model", "data"},
    "eval": {"base", "model", "data", "eval"},
    "train": {"base", "model", "data", "eval", "train"},
    "infer": {"base", "model", "data", "infer"},
    "loadgen": {"base", "model", "data", "eval", "infer", "loadgen"},
    "cli": {"base", "model", "data", "eval", "train", "infer", "loadgen", "cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ssdbench" or len(parts) == 1:
        return None
    if parts[1] == "__main__":
        return "cli"  # `python -m ssdbench` is the command line
    return "base" if parts[1] in BASE else parts[1]


def _imports(path: Path) -> set[str]:
    """Every ssdbench module `path` imports (absolute names), at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.startswith("ssdbench")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _names_used_twice() -> dict[str, list[str]]:
    """Module names (file stems, ``__init__`` and cli/ left out) of two or more files: name -> paths."""
    names: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name != "__init__.py" and rel.parts[0] != "cli":
            names.setdefault(path.stem, []).append(rel.as_posix())
    return {name: paths for name, paths in names.items() if len(paths) > 1}


def test_no_module_name_is_used_twice_outside_cli():
    twice = _names_used_twice()
    assert not twice, "module names used twice outside cli/ (rename one): " + "; ".join(
        f"{name}: {', '.join(paths)}" for name, paths in sorted(twice.items()))


def test_imports_go_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        layer = _layer(module)
        if layer is None:
            continue  # ssdbench/__init__.py: the lazy public API
        assert layer in ALLOWED, f"{module}: package {layer!r} has no place in the layers; add it"
        for target in targets:
            if _layer(target) is not None and _layer(target) not in ALLOWED[layer]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components; a component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The two checks above can fail: a model module importing train is caught."""
    fake = tmp_path / "ssdbench"
    for sub in ("model", "train"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "model" / "a.py").write_text("from ssdbench.train import b\n")
    (fake / "train" / "b.py").write_text("def f():\n    from ssdbench.model import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    graph = _graph()
    assert graph["ssdbench.model.a"] == {"ssdbench.train", "ssdbench.train.b"}
    assert "ssdbench.model.a" in graph["ssdbench.train.b"]
    with pytest.raises(AssertionError, match="ssdbench.model.a -> ssdbench.train.b"):
        test_imports_go_down_the_layers()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


def test_the_checker_sees_a_module_name_used_twice(tmp_path, monkeypatch):
    """Two coco.py outside cli/ are caught; a cli/ module may share a name (cli/eval.py, eval/)."""
    fake = tmp_path / "ssdbench"
    for sub in ("data", "eval", "cli"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    for name in ("data/coco.py", "eval/coco.py", "eval/evaluate.py", "cli/evaluate.py"):
        (fake / name).write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _names_used_twice() == {"coco": ["data/coco.py", "eval/coco.py"]}
    with pytest.raises(AssertionError, match="coco: data/coco.py, eval/coco.py"):
        test_no_module_name_is_used_twice_outside_cli()
