"""Two gloo processes on loopback: DDP + group BatchNorm (`train.build`) through the training
loop equal one process with the global batch; a bn_span must divide the world size.

(A dead rank ending the other and the watchdog are in test_dist.py.)"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ssdbench import dist as L
from ssdbench.train import build as SB
from ssdbench.train.build import MLPerfSchedule
from ssdbench.train.loop import EpochHooks, StepParts, TrainState, train_one_epoch

STEPS, GLOBAL_BATCH, CLASSES = 3, 8, 5
# Tolerance: fp32 sums over 8 images taken in another order (two halves + all-reduce) differ by
# ~1e-7 relative per step; three SGD steps amplify that (through BatchNorm's 1/std) to 1e-4 .. 3e-3
# of the distance each tensor moved (measured 1.1e-4 on one machine, 2.3e-3 on an AMX Xeon whose
# oneDNN kernels differ by batch size). We require 1e-2 of that distance: a wrong BN statistic or
# gradient scale gives differences of the order of the distance itself.
RTOL_OF_MOVEMENT = 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(rank: int, world: int) -> list[dict]:
    """Fixed synthetic batches; rank r gets images r, r+world, ... of each global batch."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        images = torch.randn(GLOBAL_BATCH, 3, 128, 128, generator=g)
        xy = torch.rand(GLOBAL_BATCH, 3, 2, generator=g) * 0.5
        wh = 0.1 + torch.rand(GLOBAL_BATCH, 3, 2, generator=g) * 0.4
        boxes = torch.cat([xy, xy + wh], dim=-1)
        labels = torch.randint(1, CLASSES, (GLOBAL_BATCH, 3), generator=g)
        labels[:, 2] = 0  # one padding slot per image
        out.append({"images": images[rank::world], "boxes": boxes[rank::world], "labels": labels[rank::world]})
    return out


def smooth_loss(locs, scores, loc_targets, labels):
    """SSD loss without hard-negative mining: CE over every box + SmoothL1 on positives.

    The real loss picks the top-k negatives by CE, a discontinuous choice: fp32 sums taken in
    another order (two halves + all-reduce vs one batch) move CEs by ~1e-6 and can swap near-tied
    negatives of an untrained model. This smooth stand-in keeps the comparison exact-math.
    """
    ce = torch.nn.functional.cross_entropy(scores, labels, reduction="none").mean(1)
    sl1 = torch.nn.functional.smooth_l1_loss(locs.transpose(1, 2), loc_targets, reduction="none").sum(2)
    return (ce + (sl1 * (labels > 0)).sum(1) / (labels > 0).sum(1).clamp(min=1)).mean()


def _train(rank: int, world: int) -> dict:
    """STEPS steps of ssd128_mini through `train_one_epoch`; returns the final state dict."""
    from ssdbench.model.encoder import Encoder
    from ssdbench.model.ssd import build_model

    torch.manual_seed(0)
    net = build_model("ssd128_mini", num_classes=CLASSES)
    model = net
    if world > 1:
        net = SB.convert_sync_bn(net, SB.bn_group(world, world), torch.device("cpu"))
        model = torch.nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(STEPS, 1, 0.0, (), plateau=False))
    parts = StepParts(model, opt, sched, Encoder("ssd128_mini"), torch.device("cpu"), loss_fn=smooth_loss)
    train_one_epoch(parts, _batches(rank, world), TrainState(), log_every=STEPS,
                    hooks=EpochHooks(reduce=lambda v: L.all_reduce_sum(v, torch.device("cpu"))))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    L.init_distributed("cpu", timeout_s=60)
    try:
        torch.save(_train(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        L.shutdown()


def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.set_num_threads(1)
    single = _train(0, 1)
    torch.manual_seed(0)
    from ssdbench.model.ssd import build_model

    init = build_model("ssd128_mini", num_classes=CLASSES).state_dict()
    for key, value in single.items():
        assert torch.equal(r0[key], r1[key]), f"ranks differ in {key}"  # DDP keeps replicas identical
        if value.is_floating_point():
            moved = (value - init[key]).abs().max().item()
            diff = (r0[key] - value).abs().max().item()
            assert diff <= RTOL_OF_MOVEMENT * moved + 1e-7, f"{key}: 2 ranks != 1 process ({diff:.2e} vs {moved:.2e})"
    assert (single["backbone.conv1.weight"] - init["backbone.conv1.weight"]).abs().max() > 1e-3  # it trained


@pytest.mark.parametrize("span, world", [(2, 3)])
def test_bn_span_must_divide_world(span, world, monkeypatch):
    monkeypatch.setattr(SB.dist, "get_rank", lambda: 0)
    with pytest.raises(ValueError, match="bn_span=2"):
        SB.bn_group(span, world)
