"""The MLPerf SSD learning-rate schedule: linear warmup, then step decay (benchmark.md §6).

`MLPerfSchedule` is the multiplier `torch.optim.lr_scheduler.LambdaLR` applies to the base lr
(`TrainConfig.base_lr`); the scheduler steps once per optimiser step, so its argument is the
global iteration, and iteration ``it`` trains with ``base x schedule(it)``.

The reference (mlcommons/training retired_benchmarks/ssd-v1/ssd/train.py) sets the lr in two
places only: at the start of each decay epoch, ``current_lr *= 0.1`` (train.py:331-336), and
before each step of the warmup, ``lr_warmup`` (train.py:176-183, called at :360). Nothing sets
it when the warmup ends, so it stays at the last warmup value, base x (1 - 1 / (W x 2^f)), until
the next decay epoch (the "plateau"). ``plateau=False`` is ssdbench's former rule: the base lr
right after the warmup.
"""

from __future__ import annotations


class MLPerfSchedule:
    """Learning-rate multiplier at global iteration `it` (0-based), for `LambdaLR`.

    Decay: x decay_factor for every boundary b with epoch >= b, epoch = it // iters_per_epoch
    counted from 0 (b = 40 starts after 40 completed epochs). Warmup (it < W): that times
    1 - (W - it) / (W x 2^f), f = warmup_factor (f = 0: linear from 0). After the warmup, with
    ``plateau``, the value of iteration W - 1 stays until an iteration at which a decay epoch
    starts; from there on the decayed base. A plain object (not a lambda) so that
    `LambdaLR.state_dict()` can save it.
    """

    def __init__(self, iters_per_epoch: int, warmup_iters: int, warmup_factor: float = 0.0,
                 decay_epochs=(40, 50), decay_factor: float = 0.1, plateau: bool = True):
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.plateau = bool(plateau)

    def _decay(self, it: int) -> float:
        epoch = it // self.iters_per_epoch
        return self.decay_factor ** sum(epoch >= b for b in self.decay_epochs)

    def _warm(self, it: int) -> float:
        w = self.warmup_iters
        return 1.0 - (w - it) / (w * 2.0 ** self.warmup_factor)

    def __call__(self, it: int) -> float:
        w = self.warmup_iters
        if it < w:
            return self._decay(it) * self._warm(it)
        if self.plateau and w > 0:
            # the last decay epoch started at or before `it`, at iteration b x iters_per_epoch
            starts = [b * self.iters_per_epoch for b in self.decay_epochs if b * self.iters_per_epoch <= it]
            if not starts or max(starts) < w:  # no decay since the warmup: its last lr stays
                return self._decay(w - 1) * self._warm(w - 1)
        return self._decay(it)
