"""Files: atomic writes, reading a user-named JSON file, and the cache folder. Once, here.

Every file that another run or process may read (checkpoints, run-folder JSON, cached samples,
exported ONNX files, result files) is written to a temporary name in the same folder and then
renamed with `os.replace`, so a reader never sees half a file, a crash leaves the previous
version in place, and the temporary file is removed when the write fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "SSDBENCH_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$SSDBENCH_CACHE`` (``~/.cache/ssdbench`` when unset or empty), joined with ``parts``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ssdbench")
    return Path(root).joinpath(*parts)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name keeps the suffix (``.x.tmp-PID.npy``), for writers that insist on one.
    The parent folder is created. On any failure the temporary file is deleted and the error
    propagates; ``path`` is then unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{id(write):x}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """``data`` as JSON (arrays and tensors via ``tolist``, other objects via ``str``)."""
    text = json.dumps(data, indent=indent, default=jsonable)
    return atomic_write_text(path, text + "\n")


def jsonable(obj: Any) -> Any:
    """`json.dumps` ``default=``: arrays and tensors as lists, sets and tuples as lists, else str."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def read_json(path: str | Path, what: str, bad_hint: str = "") -> Any:
    """Parsed contents of the JSON file ``path``; ``what`` names it in errors ("config file").

    Raises FileNotFoundError ("{what} not found: {path}") or ValueError ("{what} {path} is not
    valid JSON (...)" followed by ``bad_hint``), both printed by the CLI as one line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc}){bad_hint}") from None
