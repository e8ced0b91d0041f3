"""Backend factories for `WorkerRecipe(factory=...)` tests: they run inside spawned instances, so
they live in an importable module of their own."""

import os
import time

import torch

from ssdbench.model.postprocess import PaddedDetections


class TinyBackend:
    """Answers any batch with one detection per image; a batch of ``die_at`` images kills the process."""

    input_size = 8

    def __init__(self, die_at: int | None, delay: float = 0.0, hang_at: int | None = None):
        self.die_at, self.delay, self.hang_at, self.batches = die_at, delay, hang_at, 0

    def describe(self) -> dict:
        return {"backend": "tiny"}

    def predict(self, images: torch.Tensor) -> PaddedDetections:
        n = images.shape[0]
        if n == self.die_at:
            os._exit(5)
        self.batches += 1
        if self.batches == self.hang_at:  # a hung device: the pool must stop it
            time.sleep(600)
        time.sleep(self.delay)
        return PaddedDetections(torch.zeros(n, 2, 4), torch.ones(n, 2, dtype=torch.int64), torch.zeros(n, 2),
                                torch.ones(n, dtype=torch.int64))


def tiny(options=None, die_at=None, delay=0.0, hang_at=None, **_):
    return TinyBackend(die_at, delay, hang_at)


def die(**_):
    os._exit(3)


def hang(**_):
    time.sleep(600)


def die_if_one_thread_else_hang(options, **_):
    if options.threads == 1:
        os._exit(3)
    time.sleep(600)
