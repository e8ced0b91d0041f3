"""Worker processes (`ssdbench.workers`): spawn, the ready handshake, an answer, a death named,
a hang stopped, nothing left behind."""

import multiprocessing as mp
import os
import signal
import time

import pytest
import worker_fakes

from ssdbench.workers import NotReady, Worker, WorkerDied, WorkerHung, first_messages


def _children() -> set[int]:
    return {p.pid for p in mp.active_children()}


def _started(target, *args, name="worker under test") -> Worker:
    worker = Worker(target, args, name=name)
    worker.start()
    return worker


def test_a_worker_reports_ready_answers_and_stops():
    before = _children()
    worker = _started(worker_fakes.echo, "hello")
    try:
        assert list(first_messages([worker], timeout_s=120)) == [(0, ("ready", "hello"))]
        answer, sent, received = worker.ask(21, timeout_s=60)
        assert answer == 42 and sent > 0 and received > 0
        assert worker.process.name == "worker under test"
    finally:
        worker.ask_to_stop()
        worker.stop(grace_s=30)
    assert worker.exitcode == 0  # it left on the stop message
    assert _children() <= before


def test_a_worker_that_dies_before_ready_is_named_with_its_exit_code():
    before = _children()
    worker = _started(worker_fakes.exit_at_once, 3, name="worker 7")
    try:
        with pytest.raises(WorkerDied) as caught:
            list(first_messages([worker], timeout_s=120))
        assert caught.value.worker is worker and caught.value.worker.name == "worker 7"
        assert worker.exit_text() == " (exit code 3)"
    finally:
        worker.stop()
    assert _children() <= before


def test_a_worker_killed_while_serving_is_a_death_not_a_hang():
    before = _children()
    worker = _started(worker_fakes.echo, "hi")
    try:
        list(first_messages([worker], timeout_s=120))
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(30)
        with pytest.raises(WorkerDied, match=r"^(EOFError|BrokenPipeError|ConnectionResetError)"):
            worker.ask(1, timeout_s=60)
        assert worker.exit_text() == f" (exit code {-signal.SIGKILL})"
    finally:
        worker.stop()
    assert _children() <= before


def test_a_worker_silent_past_the_answer_timeout_is_killed():
    before = _children()
    worker = _started(worker_fakes.ready_then_hang)
    try:
        list(first_messages([worker], timeout_s=120))
        start = time.monotonic()
        with pytest.raises(WorkerHung, match="no answer within 0.5 s"):
            worker.ask("batch", timeout_s=0.5)
        assert time.monotonic() - start < 30
        worker.process.join(30)
        assert not worker.alive()
    finally:
        worker.stop()
    assert _children() <= before


def test_the_ready_handshake_times_out_naming_the_silent_worker():
    before = _children()
    workers = [_started(worker_fakes.echo, "a", name="first"), _started(worker_fakes.silent, name="second")]
    seen = []
    try:
        with pytest.raises(NotReady) as caught:
            for i, message in first_messages(workers, timeout_s=5):
                seen.append((i, message))
        assert caught.value.worker is workers[1] and str(caught.value) == "second"
        assert seen == [(0, ("ready", "a"))]
    finally:
        for worker in workers:  # the silent one ignores a stop message: terminated
            worker.stop(grace_s=0.1)
    assert _children() <= before
    assert all(not w.alive() for w in workers)


def test_a_worker_never_started_stops_cleanly():
    worker = Worker(worker_fakes.silent, (), name="never")
    worker.stop()
    assert not worker.started
