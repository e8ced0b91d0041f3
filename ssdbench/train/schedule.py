"""The MLPerf SSD learning-rate schedule: linear warmup, then step decay (benchmark.md §6).

`MLPerfSchedule` is the multiplier `torch.optim.lr_scheduler.LambdaLR` applies to the base lr
(`TrainConfig.base_lr`); the scheduler steps once per optimiser step, so its argument is the
global iteration.
"""

from __future__ import annotations


class MLPerfSchedule:
    """Learning-rate multiplier at global iteration `it` (0-based), for `LambdaLR`.

    Warmup (reference `lr_warmup`, benchmark.md §6): for it < W, lr = base x (1 - (W - it) / (W x 2^f))
    with f = warmup_factor (f = 0: linear from 0). Decay: x decay_factor for every boundary b with
    epoch >= b, epoch = it // iters_per_epoch counted from 0 (so b = 40 starts after 40 completed
    epochs). A plain object (not a lambda) so that `LambdaLR.state_dict()` can save it.
    """

    def __init__(self, iters_per_epoch: int, warmup_iters: int, warmup_factor: float = 0.0,
                 decay_epochs=(40, 50), decay_factor: float = 0.1):
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)

    def __call__(self, it: int) -> float:
        epoch = it // self.iters_per_epoch
        factor = self.decay_factor ** sum(epoch >= b for b in self.decay_epochs)
        w = self.warmup_iters
        if it < w:
            factor *= 1.0 - (w - it) / (w * 2.0 ** self.warmup_factor)
        return factor
