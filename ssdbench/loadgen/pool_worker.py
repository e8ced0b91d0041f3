"""A pool worker's side (`ssdbench.loadgen.instances.InstancePool`): pin, pick the device, build
the backend, warm up, then answer requests (slot numbers of the QSL's shared uint8 set, or
float32 pixels) with compact detections until told to stop; pickled messages whose bytes the
parent counts. OpenVINO takes the shared uint8 samples straight (its model normalises them,
`ssdbench.infer.file_backends.uint8_input_model`); other backends normalise them on their device first."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
from dataclasses import replace

import torch

from ssdbench.loadgen.shared_samples import Normaliser, SampleReader, pack_detections


def send_message(conn, obj) -> int:
    """Pickle ``obj`` onto ``conn``; the bytes written."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    conn.send_bytes(data)
    return len(data)


def recv_message(conn) -> tuple[object, int]:
    data = conn.recv_bytes()
    return pickle.loads(data), len(data)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the SUT's process dies (even by SIGKILL), so a
    worker still building its backend is never left behind (strictly: when the thread that
    started it ends, so a pool is made and closed by one long-lived thread)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # elsewhere: the worker leaves at its next pipe read (EOF)
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request took hold
        os._exit(1)


def _start_worker(backend_kwargs: dict, cores: list[int], device: str, factory):
    """Pin, select the device, build the backend there."""
    _die_with_parent()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    from ssdbench.infer.backends import BackendOptions

    if factory is None:
        from ssdbench.infer.backends import make_backend as factory
    options = replace(backend_kwargs.get("options") or BackendOptions(), device=device, threads=len(cores))
    return factory(**{**backend_kwargs, "options": options})


def _answer(backend, message, reader: SampleReader, normalise: Normaliser) -> tuple:
    """One request: ("slots", path, shape, slots) from the shared set, or float32 pixels. A
    backend that ``accepts_uint8`` (OpenVINO: normalisation compiled into the model) gets the
    shared uint8 samples as they are."""
    if isinstance(message, tuple) and message[0] == "slots":
        _, path, shape, slots = message
        images = reader.batch(path, shape, slots)
        if not getattr(backend, "accepts_uint8", False):
            images = normalise(images)
    else:
        images = torch.from_numpy(message).to(normalise.device)
    return pack_detections(backend.predict(images))


def serve(conn, backend_kwargs: dict, cores: list[int], device: str, warmup: list[tuple[int, int]],
           buckets: int | None, factory=None) -> None:  # fmt: skip
    """One worker: pin, build, warm up, then answer batches until it receives None (or EOF)."""
    try:
        backend = _start_worker(backend_kwargs, cores, device, factory)
        if buckets and hasattr(backend, "use_batch_buckets"):
            backend.use_batch_buckets(buckets)
        s = backend.input_size
        dtypes = (torch.float32, torch.uint8) if getattr(backend, "accepts_uint8", False) else (torch.float32,)
        for batch, iterations in warmup:
            for _, dtype in itertools.product(range(iterations), dtypes):  # both compiled models
                backend.predict(torch.zeros(batch, 3, s, s, dtype=dtype, device=device)).counts.cpu()
        send_message(conn, ("ready", backend.describe()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        send_message(conn, ("error", f"{type(exc).__name__}: {exc}"))
        return
    reader, normalise = SampleReader(), Normaliser(device)
    while True:
        try:
            message, _ = recv_message(conn)
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        try:
            send_message(conn, ("ok", _answer(backend, message, reader, normalise)))
        except BaseException as exc:  # noqa: BLE001
            send_message(conn, ("error", f"{type(exc).__name__}: {exc}"))
