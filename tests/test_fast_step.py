"""FastStep: same parameters as the plain `train_step` (with the same loss function), no host sync,
one-sort hard negatives."""

import contextlib
import copy
import functools

import pytest
import torch

from ssdbench.model.encoder import Encoder
from ssdbench.model.loss import hard_negative_mask, ssd_loss
from ssdbench.model.ssd import build_model
from ssdbench.train.build import MLPerfSchedule
from ssdbench.train.fast_step import FastStep, make_sgd, no_host_sync
from ssdbench.train.loop import StepParts, train_step

MODEL, CLASSES = "ssd128_mini", 5


def _batch(seed: int, n: int = 2, m: int = 4) -> dict:
    """Random normalised images and padded ltrb targets (last slot of each image = padding)."""
    g = torch.Generator().manual_seed(seed)
    lt = torch.rand(n, m, 2, generator=g) * 0.5
    boxes = torch.cat([lt, lt + 0.1 + 0.4 * torch.rand(n, m, 2, generator=g)], dim=-1)
    labels = torch.randint(1, CLASSES, (n, m), generator=g)
    labels[:, -1] = 0
    return {"images": torch.randn(n, 3, 128, 128, generator=g), "boxes": boxes, "labels": labels}


@functools.lru_cache(maxsize=1)
def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(MODEL, num_classes=CLASSES)


def _pair(channels_last=False, **loss):
    """(plain StepParts with float-lr SGD, FastStep with fused tensor-lr SGD) on equal weights.

    ``loss``: ``loss_fn=...`` for both (default: each one's default, ssd_loss)."""
    net, ref = copy.deepcopy(_network()), copy.deepcopy(_network())
    schedule = MLPerfSchedule(iters_per_epoch=10, warmup_iters=4)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    parts = StepParts(ref, opt_ref, torch.optim.lr_scheduler.LambdaLR(opt_ref, schedule), Encoder(MODEL),
                      torch.device("cpu"), **loss)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_sgd(net.parameters(), 0.01)
    fast = FastStep(StepParts(net, opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule), Encoder(MODEL),
                              torch.device("cpu"), channels_last=channels_last, **loss))
    return parts, fast


def _max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a.state_dict().values(),
                                                                         b.state_dict().values()))


def test_eager_fast_step_matches_plain_step_and_never_syncs():
    parts, fast = _pair()
    lr = fast.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and fast.optimizer.defaults["fused"]
    for i in range(3):
        batch = _batch(i)
        expected = train_step(parts, batch)
        with no_host_sync():
            loss = fast(batch)  # encode + forward + loss + backward + fused SGD + LambdaLR
        assert torch.allclose(loss, expected, rtol=1e-5)
    # The scheduler wrote the warm-up lr (3/4 of 0.01 after 3 steps) into the same tensor.
    assert fast.optimizer.param_groups[0]["lr"] is lr and abs(float(lr) - 0.0075) < 1e-9
    assert _max_param_diff(parts.model, fast.model) < 1e-6  # fp32: same maths, other kernels


def _smooth_loss(locs, scores, loc_targets, labels):
    """Not the SSD loss: CE over every box + SmoothL1 on positives, no hard-negative mining."""
    ce = torch.nn.functional.cross_entropy(scores, labels, reduction="none").mean(1)
    sl1 = torch.nn.functional.smooth_l1_loss(locs.transpose(1, 2), loc_targets, reduction="none").sum(2)
    return (ce + (sl1 * (labels > 0)).sum(1) / (labels > 0).sum(1).clamp(min=1)).mean()


def test_fast_step_trains_on_the_given_loss_function():
    parts, fast = _pair(loss_fn=_smooth_loss)
    assert fast.loss_fn is _smooth_loss
    batch = _batch(5)
    with torch.no_grad():
        locs, scores = copy.deepcopy(fast.model)(batch["images"])  # a copy: BN running stats move
        targets = Encoder(MODEL)(batch["boxes"], batch["labels"])
        smooth, ssd = _smooth_loss(locs, scores, *targets), ssd_loss(locs, scores, *targets)
    assert abs(float(smooth) - float(ssd)) > 0.1 * float(ssd)  # the two losses really differ here
    expected = train_step(parts, batch)
    with no_host_sync():
        loss = fast(batch)
    assert torch.allclose(loss, smooth, rtol=1e-5) and torch.allclose(loss, expected, rtol=1e-5)
    assert _max_param_diff(parts.model, fast.model) < 1e-6  # the same gradients: the same loss


def test_channels_last_and_pre_encoded_targets_give_the_same_step():
    parts, fast = _pair(channels_last=True)
    batch = _batch(7)
    loc_targets, box_labels = Encoder(MODEL)(batch["boxes"], batch["labels"])
    encoded = {"images": batch["images"], "loc_targets": loc_targets, "box_labels": box_labels}
    expected = train_step(parts, batch)
    with no_host_sync():
        loss = fast(encoded)
    assert torch.allclose(loss, expected, rtol=1e-4)
    assert _max_param_diff(parts.model, fast.model) < 1e-5  # channels_last convolutions differ slightly


def test_bf16_step_runs_close_to_fp32():
    parts, fast = _pair()
    fast.amp_dtype = torch.bfloat16
    batch = _batch(3)
    expected = train_step(parts, batch)
    with no_host_sync():
        loss = fast(batch)
    assert loss.dtype == torch.float32 and abs(float(loss) / float(expected) - 1) < 0.05  # bf16: 8-bit mantissa


def test_guard_catches_host_syncs():
    x = torch.arange(6.0)
    with no_host_sync():
        for sync in (lambda: x.sum().item(), lambda: bool(x.sum()), lambda: x[x > 2],
                     lambda: x.nonzero(), lambda: x.tolist(), lambda: float(x[0])):
            with pytest.raises(RuntimeError, match="host sync"):
                sync()
    assert x.sum().item() == 15.0  # restored afterwards
    # Plain (single-tensor) SGD turns a tensor lr into a Python number: a sync the guard sees.
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=torch.tensor(0.1), momentum=0.9, foreach=False)
    p.grad = torch.ones(3)
    with no_host_sync(), pytest.raises(RuntimeError, match="host sync"):
        opt.step()


def _two_sort_mask(ce: torch.Tensor, positive: torch.Tensor, ratio: int = 3) -> torch.Tensor:
    """The references' definition: rank = argsort(argsort(-ce)) among negatives; keep rank < 3 x pos."""
    ranked = torch.where(positive, torch.full_like(ce, -1.0), ce)
    rank = ranked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    k = torch.minimum(ratio * positive.sum(1, keepdim=True), (~positive).sum(1, keepdim=True))
    return rank < k


def test_hard_negatives_one_sort_equal_two_sorts():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n, b = 4, int(torch.randint(5, 300, (1,), generator=g))
        ce = torch.rand(n, b, generator=g) * 5
        ce[0, : b // 2] = ce[0, 0]  # ties: the lower index wins in both
        positive = torch.rand(n, b, generator=g) < [0.0, 0.02, 0.3, 0.9][trial % 4]
        mask = hard_negative_mask(ce, positive)
        assert torch.equal(mask, _two_sort_mask(ce, positive)), trial
        assert not (mask & positive).any()


def test_cuda_graph_needs_cuda():
    _, fast = _pair()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
            FastStep(StepParts(fast.model, fast.optimizer, None, fast.encoder, "cpu"), cuda_graph=True)
    with pytest.raises(ValueError, match="amp_dtype"):
        FastStep(StepParts(fast.model, fast.optimizer, None, fast.encoder, "cpu", amp_dtype=torch.float16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_step_matches_eager_step_on_gpu():
    torch.manual_seed(0)
    nets = [build_model(MODEL, num_classes=CLASSES).cuda() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    steps = []
    for net, graph in zip(nets, (False, True)):
        opt = make_sgd(net.parameters(), 0.01, device="cuda")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(10, 4))
        steps.append(FastStep(StepParts(net, opt, sched, Encoder(MODEL), "cuda"), cuda_graph=graph))
    for i in range(4):
        batch = {k: v.cuda() for k, v in _batch(i).items()}
        losses = [steps[0](batch)]
        with no_host_sync() if i else contextlib.nullcontext():  # call 0 captures (synchronises)
            losses.append(steps[1](batch))
        assert torch.allclose(losses[0], losses[1], rtol=1e-3)
    assert _max_param_diff(nets[0], nets[1]) < 1e-3  # cuDNN picks other algorithms inside the graph
