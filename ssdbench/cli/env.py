"""The SSDBENCH_* environment variables, checked once when a command starts.

A variable is a value like a flag: a bad one is a one-line error naming it, before any work (an
unparsable SSDBENCH_MAX_IMAGE_PIXELS used to make every image a skipped sample and `eval` exit 0).
"""

from __future__ import annotations

import os
from pathlib import Path


def _positive_int(text: str) -> str | None:
    try:
        return None if int(text) >= 1 else "a positive integer"
    except ValueError:
        return "a positive integer"


def _one_of(*choices: str):
    return lambda text: None if text.lower() in choices else f"one of {', '.join(choices)}"


def _folder(text: str) -> str | None:
    return "a folder, not a file" if Path(text).exists() and not Path(text).is_dir() else None


# variable -> check of its (non-empty, stripped) text: None when fine, else what it must be
CHECKS = {
    "SSDBENCH_MAX_IMAGE_PIXELS": _positive_int,  # data/decode.py max_image_pixels
    "SSDBENCH_PROGRESS": _one_of("bar", "lines", "final", "off"),  # progress.py
    "SSDBENCH_CPU_BF16": _one_of("0", "1"),  # precision.py native_cpu_bf16
    "SSDBENCH_CACHE": _folder,  # io.py cache_dir
    "SSDBENCH_LOADGEN_TRACE": _one_of("0", "1"),  # loadgen/report.py trace_enabled
}


def check_environment(environ=None) -> None:
    """ValueError ``SSDBENCH_X must be ..., got 'text'`` for the first bad variable; unset or
    empty variables mean the default."""
    environ = os.environ if environ is None else environ
    for name, check in CHECKS.items():
        text = environ.get(name, "").strip()
        if text and (want := check(text)):
            raise ValueError(f"environment variable {name} must be {want}, got {environ[name]!r}")
