"""Value checks for command-line flags and config keys, in one place.

A `Range` states what a numeric setting accepts (integer or real, bounds); the same object checks
a config key (`Range.check`, ValueError naming the key) and parses a flag (`Range.arg`, the
``type=`` of `argparse`, whose error the CLI prints naming the flag). Every number must be finite:
NaN fails every comparison, so ``value < 0`` alone lets it through, and ``inf`` would size
LoadGen's query schedule or a loop without bound.

Messages read ``--qps must be a finite number > 0, got nan`` and ``config lr must be a finite
number > 0, got nan``; booleans are not numbers here (JSON ``true`` is not a batch size).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Range:
    """Accepted values of one numeric setting: ``kind`` int or float, optional bounds.

    ``gt``/``ge``: lower bound (exclusive / inclusive), ``lt``/``le``: upper bound. ``optional``:
    None is accepted (a setting whose None means "derived", such as ``lr``).
    """

    kind: type = float
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    optional: bool = False

    def describe(self) -> str:
        """'a finite number > 0', 'an integer >= 1', 'a finite number in [0, 1]'."""
        what = "an integer" if self.kind is int else "a finite number"
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        high = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None else None
        if low and high:
            return f"{what} in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low:
            return f"{what} {'>' if low[0] == '(' else '>='} {_num(low[1])}"
        if high:
            return f"{what} {'<' if high[0] == ')' else '<='} {_num(high[1])}"
        return what

    def ok(self, value) -> bool:
        """True when ``value`` is a finite number of the right kind within the bounds."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.kind is int and value != int(value)):
            return False
        return not ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                    or (self.lt is not None and not value < self.lt) or (self.le is not None and not value <= self.le))

    def check(self, value, name: str):
        """``value`` (an int for ``kind=int``); ValueError '{name} must be {describe()}, got {value}'."""
        if value is None and self.optional:
            return None
        if not self.ok(value):
            raise ValueError(f"{name} must be {self.describe()}, got {_shown(value)}")
        return int(value) if self.kind is int else float(value)

    def arg(self, text: str):
        """argparse ``type=``: the flag's text parsed and checked (ArgumentTypeError otherwise)."""
        try:
            value = self.kind(text) if self.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}") from None
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value

    def __call__(self, text: str):  # so that `type=Range(...)` works directly
        return self.arg(text)

    @property
    def __name__(self) -> str:  # argparse names the type in some of its own messages
        return self.kind.__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# The usual ranges, shared by commands.
POSITIVE_INT = Range(int, ge=1)
NON_NEGATIVE_INT = Range(int, ge=0)
POSITIVE = Range(float, gt=0)
NON_NEGATIVE = Range(float, ge=0)
FRACTION = Range(float, ge=0, le=1)
SEED = Range(int, ge=0, le=2**32 - 1)  # numpy's generators take seeds in [0, 2**32)


def check_all(values: dict, ranges: dict[str, Range], prefix: str = "") -> None:
    """`Range.check` every key of ``ranges`` present in ``values`` (tuples: every element).

    The error names ``prefix + key`` ("config lr"); the first bad key raises.
    """
    for key, rule in ranges.items():
        if key not in values:
            continue
        value = values[key]
        for item in value if isinstance(value, (tuple, list)) else (value,):
            rule.check(item, f"{prefix}{key}")


def output_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder to write into: ValueError naming ``flag`` when it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
    return path


def output_file(path: str | Path, flag: str) -> Path:
    """``path`` as a file to write: ValueError naming ``flag`` when it is a folder or under a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a file")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
    return path


# A name that becomes a folder or file name (an organisation, a system, a scenario read from a
# file): the characters of MLPerf's own submission trees (letters, digits, '_', '-', '.', '+'),
# starting with a letter or digit, so that it is never '.', '..', absolute or nested.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def safe_name(value, what: str) -> str:
    """``value`` when it is a safe path component; ValueError naming ``what`` (a flag, a file's key)."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r}: use 1-100 letters, digits, '_', '-', '.', '+' starting with a letter "
                         "or digit (it becomes a folder or file name)")
    return value


def inside(path: str | Path, root: str | Path, what: str) -> Path:
    """``path`` when it resolves to ``root`` or below (symbolic links followed); ValueError naming
    ``what`` otherwise: a write must never land outside the output folder."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"{what}: {path} would be written outside {root}")
    return Path(path)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; os.cpu_count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
