"""LoadGen's ``mlperf_log_detail.txt``: one ``:::MLLOG {json}`` line per message.

Each message has ``key``, ``value`` and ``metadata.is_error`` / ``metadata.is_warning``. The MLPerf
submission checker (tools/submission/submission-checker.py, branch r2.0: ``MLPerfLog`` of
log_parser.py) takes the first message of a key and treats any error message as an invalid
result; so does ssdbench (`ssdbench.loadgen.report`, `ssdbench.loadgen.checker`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = ":::MLLOG"


@dataclass
class DetailLog:
    """The messages of one detail log, in file order."""

    path: Path
    messages: list[dict] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of the first message with ``key`` (``default`` when there is none)."""
        for message in self.messages:
            if message.get("key") == key:
                return message.get("value")
        return default

    def __contains__(self, key: str) -> bool:
        return any(message.get("key") == key for message in self.messages)

    def _flagged(self, flag: str) -> list[str]:
        return [f"{m.get('key')}: {m.get('value')}" for m in self.messages if m.get("metadata", {}).get(flag)]

    @property
    def errors(self) -> list[str]:
        """``key: value`` of every error message (e.g. ``error_invalid_config: Multiple conf files ...``)."""
        return self._flagged("is_error")

    @property
    def warnings(self) -> list[str]:
        """``key: value`` of every warning message (e.g. the audit.config notice)."""
        return self._flagged("is_warning")

    @property
    def peak_qps(self) -> float | None:
        """The target_qps LoadGen's FindPeakPerformance mode settled on (None in other modes)."""
        prefix = "FindPeakPerformance: Found peak performance field: "
        for message in self.messages:
            value = str(message.get("value", ""))
            if message.get("key") == "generic_message" and value.startswith(prefix):
                return float(value[len(prefix):])
        return None

    @property
    def found_audit_config(self) -> bool:
        """Whether LoadGen read an audit.config (its warning says so)."""
        return any("audit.config" in w.lower() for w in self.warnings)


def read_detail_log(path: str | Path) -> DetailLog:
    """Parse a detail log; FileNotFoundError when missing, ValueError naming a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoadGen detail log not found: {path}")
    log = DetailLog(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.startswith(MARKER):
                continue
            try:
                log.messages.append(json.loads(line[len(MARKER):]))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{lineno}: malformed {MARKER} line") from None
    return log
