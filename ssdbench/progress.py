"""Progress of long work: a tqdm bar on a terminal, plain log lines everywhere else.

A bar's carriage returns turn a Slurm or CI log into noise, so when the stream is not a terminal
(or ``SSDBENCH_PROGRESS=lines``) `Progress` prints one line per update instead, e.g.::

    epoch 3/20 | step 240/600 (40%) | 92.4 img/s | loss 2.113 | lr 1.50e-02 | ETA 0:01:12 | mem 1.3 GiB

Memory is this process's peak resident size, plus the peak CUDA allocation when CUDA is in use.
Plain lines are rate-limited (``min_interval_s``) except for the final one;
``SSDBENCH_PROGRESS=final`` prints only that final line (one line per epoch and per evaluation:
what `ssdbench demo` uses when its output is not a terminal).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

MODE_ENV = "SSDBENCH_PROGRESS"  # bar | lines | final | off (default: bar on a terminal, else lines)


def _mode(stream) -> str:
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("bar", "lines", "final", "off"):
        return mode
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


def memory_text() -> str:
    """Peak host memory of this process (and peak CUDA memory when used), e.g. "1.3 GiB"."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        text = f"{peak / 2**30:.1f} GiB"
    except (ImportError, OSError):
        text = "?"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", cuda {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    return text


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts ``done`` of ``total`` units; `update` moves it and sets the fields shown after it.

    ``rate_unit``: name of what `update`'s ``items`` count per second ("img" -> "img/s"); by
    default the rate counts the units themselves. ``unit_scale``: show counts and rates with
    binary prefixes (bytes: "12.0 MiB/778.0 MiB", "10.5 MiB/s"), as tqdm's ``unit_scale``.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", initial: int = 0,
                 enabled: bool = True, rate_unit: str | None = None, min_interval_s: float = 10.0,
                 stream=None, unit_scale: bool = False):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.unit_scale = unit_scale
        self.rate_unit = rate_unit or unit
        self.stream = stream or sys.stdout
        self.mode = _mode(self.stream) if enabled else "off"
        self.min_interval_s = min_interval_s
        self._t0 = self._last_line = time.perf_counter()
        self._start_done, self._items = initial, 0
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                             leave=False, file=self.stream, unit_scale=unit_scale,
                             unit_divisor=1024 if unit_scale else 1000)

    def update(self, done: int | None = None, items: int = 0, **fields) -> None:
        """Advance to ``done`` units (default: one more); ``items`` processed meanwhile; fields shown."""
        self.done = self.done + 1 if done is None else done
        self._items += items
        if self._bar is not None:
            self._bar.update(self.done - self._bar.n)
            if fields or items:
                self._bar.set_postfix(self._postfix(fields), refresh=False)
        elif self.mode in ("lines", "final"):
            now = time.perf_counter()
            final = self.total is not None and self.done >= self.total
            if final or (self.mode == "lines" and now - self._last_line >= self.min_interval_s):
                self._last_line = now
                print(self.line(fields), file=self.stream, flush=True)

    def _rate(self) -> float:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        count = self._items if self._items else self.done - self._start_done
        return count / elapsed

    def _postfix(self, fields: dict) -> dict:
        out = {k: _fmt(v) for k, v in fields.items()}
        if self._items:
            out[f"{self.rate_unit}/s"] = f"{self._rate():.1f}"
        return out

    def line(self, fields: dict | None = None) -> str:
        """The plain progress line (what a log gets)."""
        parts = [self.desc]
        if self.unit_scale:
            parts.append(self._scaled_count())
        elif self.total:
            parts.append(f"{self.unit} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.unit} {self.done}")
        rate = _binary(self._rate(), self.rate_unit) if self.unit_scale else f"{self._rate():.1f} {self.rate_unit}"
        parts.append(f"{rate}/s")
        parts += [f"{k} {_fmt(v)}" for k, v in (fields or {}).items()]
        unit_rate = (self.done - self._start_done) / max(time.perf_counter() - self._t0, 1e-9)
        if self.total and unit_rate > 0:
            parts.append(f"ETA {_clock((self.total - self.done) / unit_rate)}")
        parts.append(f"mem {memory_text()}")
        return " | ".join(parts)

    def _scaled_count(self) -> str:
        """ "12.0 MiB/778.0 MiB (2%)" (or "12.0 MiB" without a total)."""
        done = _binary(self.done, self.unit)
        if not self.total:
            return done
        return f"{done}/{_binary(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"

    def iterate(self, iterable: Iterable, items=None) -> Iterator:
        """Yield from ``iterable``, one unit per element (``items(element)``: items it carries)."""
        for element in iterable:
            yield element
            self.update(items=items(element) if items else 0)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _binary(value: float, unit: str) -> str:
    """``value`` with a binary prefix: 1536 B -> "1.5 KiB", 12 B -> "12 B"."""
    for prefix in ("", "Ki", "Mi", "Gi"):
        if abs(value) < 1024:
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} Ti{unit}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3f}"
    return str(value)
