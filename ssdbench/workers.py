"""Worker processes: one `Worker` per spawned process and its pipe, used by the LoadGen device pool
(`ssdbench.loadgen.device_pool.InstancePool`) and the background COCO scorer
(`ssdbench.train.async_eval.Scorer`).

A worker is started with the ``spawn`` method (no copy of the parent's CUDA context, threads or
data-loader workers) as a daemon, and runs ``target(conn, *args)`` with its end of a pipe; the
parent closes that end at once, so the worker's death reads as EOF on the parent's end, not as
silence. On Linux the worker asks the kernel to kill it when its parent dies (`die_with_parent`),
so a worker still building its model is never left behind. Messages are pickled bytes whose size
each side learns (`send_message`, `recv_message`). The parent may wait for each worker's first
message (`first_messages`: the ready handshake, bounded by a timeout), ask a question and wait a
bounded time for the answer (`Worker.ask`: a worker silent past it is killed, `WorkerHung`), learns
of a death as `WorkerDied`, asks a worker to leave (`Worker.ask_to_stop`: a ``None`` message), and
stops it after a grace time by SIGTERM, then SIGKILL (`Worker.stop`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
from multiprocessing.connection import wait as _wait

_TERMINATE_S = 5.0  # a worker's time to leave after SIGTERM before SIGKILL


class WorkerDied(Exception):
    """The worker's pipe broke or it ended; ``str``: the cause (``EOFError: ...``); ``worker``: which
    one, where the caller may not know (`first_messages`)."""

    def __init__(self, cause: str, worker: Worker | None = None):
        super().__init__(cause)
        self.worker = worker


class WorkerHung(Exception):
    """The worker gave no answer in time (it has been killed)."""


class NotReady(Exception):
    """A worker sent no first message in time; ``worker``: the first such one."""

    def __init__(self, worker: Worker):
        super().__init__(worker.name)
        self.worker = worker


def send_message(conn, obj) -> int:
    """Pickle ``obj`` onto ``conn``; the bytes written."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    conn.send_bytes(data)
    return len(data)


def recv_message(conn) -> tuple[object, int]:
    """The next pickled message on ``conn`` and its size in bytes."""
    data = conn.recv_bytes()
    return pickle.loads(data), len(data)


def die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (even by SIGKILL), so a worker still
    starting is never left behind (strictly: when the thread that started it ends, so a worker is
    started and stopped by one long-lived thread)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # elsewhere: the worker leaves at its next pipe read (EOF)
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request took hold
        os._exit(1)


def _main(target, conn, args) -> None:
    die_with_parent()
    target(conn, *args)


class Worker:
    """One spawned worker process running ``target(conn, *args)`` and the parent's end of its pipe.

    ``name`` names the process (and the worker in its owner's errors). `start` launches it;
    ``ready`` is the owner's record that it answered its first message (then it obeys a stop
    message).
    """

    def __init__(self, target, args: tuple = (), name: str | None = None):
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, self._child = ctx.Pipe()
        self.process = ctx.Process(target=_main, args=(target, self._child, tuple(args)), name=name, daemon=True)
        self.ready = False

    def start(self) -> None:
        try:
            self.process.start()
        finally:
            self._child.close()  # only the worker holds its end: its death is EOF here, not silence

    @property
    def started(self) -> bool:
        return self.process.pid is not None

    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def exit_text(self, wait_s: float = 5.0) -> str:
        """`` (exit code N)`` once the process has ended (waiting up to ``wait_s``), else empty."""
        self.process.join(timeout=wait_s)
        return "" if self.exitcode is None else f" (exit code {self.exitcode})"

    def send(self, obj) -> int:
        """Send one message; its size in bytes. `WorkerDied` when the pipe is broken."""
        try:
            return send_message(self.conn, obj)
        except OSError as exc:
            raise WorkerDied(f"{type(exc).__name__}: {exc}") from None

    def poll(self, timeout: float | None = 0) -> bool:
        """Whether a message (or EOF) is waiting, within ``timeout`` seconds (None: until one is);
        `WorkerDied` when the pipe is broken."""
        try:
            return self.conn.poll(timeout)
        except OSError as exc:
            raise WorkerDied(f"{type(exc).__name__}: {exc}") from None

    def receive(self) -> tuple[object, int]:
        """The next message and its size; `WorkerDied` at EOF or a broken pipe."""
        try:
            return recv_message(self.conn)
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"{type(exc).__name__}: {exc}") from None

    def ask(self, message, timeout_s: float | None) -> tuple[object, int, int]:
        """``message`` out and the answer back: (answer, bytes sent, bytes received).

        A worker that gives no answer within ``timeout_s`` (None: no bound) is killed and
        `WorkerHung` raised; a broken pipe is `WorkerDied`.
        """
        sent = self.send(message)
        if timeout_s is not None and not self.poll(timeout_s):
            self.process.kill()
            raise WorkerHung(f"no answer within {timeout_s:g} s")
        answer, received = self.receive()
        return answer, sent, received

    def ask_to_stop(self) -> None:
        """Send the stop message (``None``); a broken pipe is ignored (the worker is gone)."""
        try:
            send_message(self.conn, None)
        except (OSError, ValueError):
            pass

    def stop(self, grace_s: float = 0.0) -> None:
        """Wait ``grace_s`` for the process to leave, then SIGTERM, then SIGKILL; close the pipe."""
        if self.started:
            if grace_s > 0:
                self.process.join(timeout=grace_s)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=_TERMINATE_S)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=_TERMINATE_S)  # a process stuck in the kernel is left, not waited on
        self._child.close()  # never started: the worker's end is still here
        self.conn.close()


def first_messages(workers: list[Worker], timeout_s: float):
    """Yield (index, message) as each worker's first message arrives (the ready handshake).

    `NotReady` names the first worker still silent after ``timeout_s``; `WorkerDied` (its
    ``worker`` set) when a worker's pipe reaches EOF before its first message.
    """
    pending = {i: w.conn for i, w in enumerate(workers)}
    deadline = time.monotonic() + timeout_s
    while pending:
        left = deadline - time.monotonic()
        done = _wait(list(pending.values()), timeout=left) if left > 0 else []
        if not done:
            raise NotReady(workers[min(pending)])
        for i in [i for i, conn in pending.items() if conn in done]:
            del pending[i]
            try:
                message, _ = workers[i].receive()
            except WorkerDied as exc:
                raise WorkerDied(str(exc), workers[i]) from None
            yield i, message
