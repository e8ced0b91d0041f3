"""Reading a user-named JSON file with one-line errors that name it (config files, LoadGen logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
