"""The training loop: a non-finite loss stops the run naming the step; a fast step that would
compute another loss than ``StepParts.loss_fn`` is refused."""

from dataclasses import replace

import pytest
import torch

from ssdbench.model.encoder import Encoder
from ssdbench.model.loss import ssd_loss
from ssdbench.train.build import MLPerfSchedule
from ssdbench.train.loop import (
    EpochHooks,
    NonFiniteLossError,
    StepParts,
    TrainState,
    step_function,
    train_one_epoch,
)


class _Tiny(torch.nn.Module):
    """Stand-in network: per-box outputs from a 1x1 conv over a pooled image (B = 1524)."""

    def __init__(self, classes=3, boxes=1524):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4 + classes, 1)
        self.classes, self.boxes = classes, boxes

    def forward(self, images):
        x = self.conv(torch.nn.functional.adaptive_avg_pool2d(images, 1)).flatten(1)  # (N, 4 + C)
        x = x[:, :, None].expand(-1, -1, self.boxes)
        return x[:, :4].contiguous(), x[:, 4:].contiguous()


def _parts(**kwargs) -> StepParts:
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return StepParts(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(10, 0, 0, ())),
                     Encoder("ssd128_mini"), torch.device("cpu"), **kwargs)


def _batches(count: int) -> list[dict]:
    boxes = torch.tensor([[[0.1, 0.1, 0.6, 0.7]]])
    return [{"images": torch.rand(1, 3, 8, 8), "boxes": boxes, "labels": torch.tensor([[1]])}
            for _ in range(count)]


def test_non_finite_loss_names_the_step():
    parts = _parts()
    batches = _batches(6)
    batches[4]["images"][0, 0, 0, 0] = float("nan")  # the 5th step's loss is NaN
    state = TrainState(step=100)  # steps continue from a resumed run: the message counts globally
    with pytest.raises(NonFiniteLossError, match="step 105"):
        train_one_epoch(parts, batches, state, log_every=3, hooks=EpochHooks(reduce=lambda v: v))


def _other_loss(locs, scores, loc_targets, labels):
    return locs.float().pow(2).mean()


def test_a_fast_step_with_another_loss_is_refused():
    from ssdbench.train.fast_step import FastStep

    parts = _parts(loss_fn=_other_loss)
    parts.fast_step = FastStep(replace(parts, loss_fn=ssd_loss))  # ssd_loss
    with pytest.raises(ValueError, match="loss_fn is _other_loss but the fast step computes ssd_loss"):
        train_one_epoch(parts, _batches(2), TrainState(), log_every=1, hooks=EpochHooks(reduce=lambda v: v))
    parts.fast_step = lambda batch: torch.zeros(())  # a step that cannot say which loss it computes
    with pytest.raises(ValueError, match="fast step computes"):
        step_function(parts)
    parts.fast_step = FastStep(parts)  # the parts' loss_fn, _other_loss
    state = TrainState()
    train_one_epoch(parts, _batches(2), state, log_every=1, hooks=EpochHooks(reduce=lambda v: v))
    assert state.step == 2 and step_function(parts) is parts.fast_step
