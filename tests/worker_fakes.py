"""Worker targets for tests/test_workers.py: they run inside spawned processes, so they live in an
importable module of their own."""

import os
import time

from ssdbench.workers import recv_message, send_message


def echo(conn, greeting: str) -> None:
    """Ready with ``greeting``, then each message back doubled, until None."""
    send_message(conn, ("ready", greeting))
    while True:
        message, _ = recv_message(conn)
        if message is None:
            return
        send_message(conn, message * 2)


def exit_at_once(conn, code: int) -> None:
    os._exit(code)


def silent(conn) -> None:
    """Never says a word (a worker stuck while starting)."""
    time.sleep(600)


def ready_then_hang(conn) -> None:
    send_message(conn, ("ready", None))
    recv_message(conn)
    time.sleep(600)  # a batch it never answers
