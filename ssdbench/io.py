"""Files: atomic writes, reading a user-named JSON file, the cache folder and folder locks. Once, here.

Every file that another run or process may read (checkpoints, run-folder JSON, cached samples,
exported ONNX files, result files) is written to a temporary name in the same folder and then
renamed with `os.replace`, so a reader never sees half a file, a crash leaves the previous
version in place, and the temporary file is removed when the write fails. A failed write (full
disk, read-only folder, file-size limit) raises `WriteError`: one line naming the path and the
cause, printed by the CLI like every user-facing error.

`FolderLock` keeps a second process out of a folder that a run is writing (`.lock`, see there).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssdbench.errors import CliError

CACHE_ENV = "SSDBENCH_CACHE"


class WriteError(CliError, OSError):
    """A file could not be written: ``cannot write PATH: CAUSE`` (e.g. No space left on device)."""

    def __init__(self, path: str | Path, exc: BaseException):
        cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        super().__init__(f"cannot write {path}: {cause}")
        self.path, self.cause = Path(path), exc


class FolderLockedError(CliError):
    """Another live process holds the folder's lock; the message names it (pid, host, start)."""


def cache_dir(*parts: str) -> Path:
    """``$SSDBENCH_CACHE`` (``~/.cache/ssdbench`` when unset or empty), joined with ``parts``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ssdbench")
    return Path(root).joinpath(*parts)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name keeps the suffix (``.x.tmp-PID.npy``), for writers that insist on one.
    The parent folder is created. On any failure the temporary file is deleted and the error
    propagates (an OSError as `WriteError` naming ``path``); ``path`` is then unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{id(write):x}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from exc
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


class FolderLock:
    """An exclusive lock on ``folder`` while one process writes into it (a training run folder).

    ``<folder>/.lock`` is locked with ``flock`` and holds its owner as JSON (pid, host, start
    time, command). A second process is refused at once (`FolderLockedError` naming the owner);
    the kernel drops the lock of a process that died, so a lock left by a killed run is taken
    over (with a note naming the dead owner). `release` deletes the file. Where the file system
    has no locks (some network mounts) the run goes on unlocked, with a warning.
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path):
        self.folder, self.path, self._fd = Path(folder), Path(folder) / self.NAME, None

    def acquire(self) -> FolderLock:
        """Take the lock (idempotent); FolderLockedError when another process holds it."""
        import fcntl

        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(_read_fd(fd))
                os.close(fd)
                raise FolderLockedError(f"{self.folder} is in use by {holder}; wait for that run to end "
                                        "or choose another --out") from None
            except OSError as exc:  # ENOLCK & co: no locks on this file system
                os.close(fd)
                print(f"warning: cannot lock {self.folder} ({exc.strerror}); two runs into it would clash",
                      file=sys.stderr, flush=True)
                return self
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous owner released (deleted) it meanwhile: lock the new file
        previous = _read_fd(fd)
        if previous:
            print(f"note: taking over the lock of {_describe_holder(previous)}, which is no longer running",
                  file=sys.stderr, flush=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join(sys.argv)[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(fd)

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown: the kernel drops the lock anyway
            self.release()


def _read_fd(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _describe_holder(owner: dict) -> str:
    if not owner.get("pid"):
        return "another process"
    return (f"process {owner['pid']} on host {owner.get('host', '?')} (started {owner.get('started', '?')}: "
            f"{owner.get('command', '')})")
