import os
import signal

import pytest
import torch

# Two cores are shared by the whole suite: keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("SSDBENCH_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Training runs set deterministic algorithms and SIGTERM/SIGINT handlers process-wide; every
    test gets back the state it started with."""
    det = torch.are_deterministic_algorithms_enabled()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    torch.use_deterministic_algorithms(det)
    for s, h in handlers.items():
        signal.signal(s, h)
