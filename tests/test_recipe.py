"""The closed presets run the MLPerf reference's recipe: iterations per epoch, warmup steps, the
learning rate at chosen iterations, the eval epochs and the crowd boxes, each compared with
values computed here from the reference's own formulas (mlcommons/training
retired_benchmarks/ssd-v1/ssd: train.py, utils.py, run_and_time.sh, config_DGX1_*.sh), not from
ssdbench's code. ssdbench's own rules are options that make a run open division.
"""

import math

import pytest
import torch
from data_fixtures import tiny_coco

from ssdbench.data.loader import InputSettings, Shard, ShardedSampler, WorkerOptions, build_loader
from ssdbench.train.build import MLPerfSchedule
from ssdbench.train.config import REFERENCE_RULES, SYSTEM_WORLD_SIZES, resolve_config

COCO_TRAIN = 117266  # non-empty train2017 images (utils.py:552-555 drops the empty ones)
REFERENCE_WARMUP = 2.619685  # config_DGX1_singlenode.sh:6, config_DGX1_multinode.sh:6
# (preset, ranks): the closed presets at the world sizes they are meant for
CLOSED = [("mlperf", 1), ("mlperf", 8), *SYSTEM_WORLD_SIZES.items()]


class _Sized:
    """A dataset of ``n`` samples that is never read (lengths only)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


# ---------------------------------------------------------------- the reference's formulas
def ref_iters_per_epoch(n: int, world: int, batch: int) -> int:
    """train.py:243-250: DistributedSampler (drop_last=False pads every rank to ceil(n / world))
    under a DataLoader without drop_last (the last partial batch is kept); one rank alone: plain
    shuffled DataLoader, ceil(n / batch)."""
    per_rank = math.ceil(n / world) if world > 1 else n
    return math.ceil(per_rank / batch)


def ref_warmup_iters(warmup_epochs: float, n: int, world: int, batch: int) -> int:
    """train.py:309: wb = int(args.warmup * nonempty_imgs / (N_gpu * args.batch_size))."""
    return int(warmup_epochs * n / (world * batch))


def ref_lrs(base_lr: float, wb: int, factor: int, decay: list[int], ipe: int, epochs: int) -> list[float]:
    """The lr of every iteration of train.py's loop: decay at the start of epochs in the schedule
    (train.py:331-336), lr_warmup before each step (train.py:176-183, :360), nothing else."""
    lr, current, out, it = base_lr, base_lr, [], 0
    for epoch in range(epochs):
        if epoch in decay:
            current *= 0.1
            lr = current
        for _ in range(ipe):
            if it < wb:
                lr = current - (wb - it) * (current / (wb * (2 ** factor)))
            out.append(lr)
            it += 1
    return out


def ref_eval_epochs(val_interval: int, val_epochs: list[int], epochs: int) -> list[int]:
    """train.py:370-371: (epoch+1) in val_epochs or not (epoch+1) % val_interval."""
    return [e + 1 for e in range(epochs) if (val_epochs and (e + 1) in val_epochs)
            or (val_interval and not (e + 1) % val_interval)]


# ---------------------------------------------------------------- ours
def our_iters_per_epoch(cfg, world: int) -> int:
    inputs = InputSettings(shard=Shard(0, world))
    return len(build_loader(_Sized(COCO_TRAIN), cfg.batch_size, train=True, inputs=inputs, workers=0,
                            drop_last=cfg.drop_last, options=WorkerOptions(pin_memory=False)))


def our_lrs(cfg, world: int, iters: list[int]) -> dict[int, float]:
    ipe = our_iters_per_epoch(cfg, world)
    warmup = cfg.warmup_iters(COCO_TRAIN, cfg.global_batch(world))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.base_lr(world))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(
        ipe, warmup, cfg.warmup_factor, cfg.decay_epochs, cfg.decay_factor, plateau=not cfg.restore_lr_after_warmup))
    out = {}
    for it in range(max(iters) + 1):
        if it in iters:
            out[it] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("preset, world", CLOSED)
def test_iterations_per_epoch_are_the_reference_ones(preset, world):
    cfg = resolve_config(preset)
    assert our_iters_per_epoch(cfg, world) == ref_iters_per_epoch(COCO_TRAIN, world, cfg.batch_size)


def test_the_issue_numbers_at_8x128():
    cfg = resolve_config("dgx1_x8")
    assert ref_iters_per_epoch(COCO_TRAIN, 8, 128) == 115 == our_iters_per_epoch(cfg, 8)
    assert ref_warmup_iters(REFERENCE_WARMUP, COCO_TRAIN, 8, 128) == 299 == cfg.warmup_iters(COCO_TRAIN, 1024)
    assert our_iters_per_epoch(resolve_config("dgx1_x8", overrides={"drop_last": True}), 8) == 114


def test_padded_shards_are_torchs_distributed_sampler():
    from torch.utils.data.distributed import DistributedSampler

    for n, world in ((11, 4), (117266, 8), (3, 5)):  # 3 < 5: the padding repeats the order
        for rank in range(world):
            theirs = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
            ours = list(ShardedSampler(n, Shard(rank, world), shuffle=False, pad=True))
            assert ours == theirs, (n, world, rank)


@pytest.mark.parametrize("preset, world", CLOSED)
def test_warmup_steps_are_the_reference_ones(preset, world):
    cfg = resolve_config(preset)
    gb = cfg.global_batch(world)
    expected = cfg.warmup_steps if cfg.warmup_steps is not None else ref_warmup_iters(
        REFERENCE_WARMUP, COCO_TRAIN, world, cfg.batch_size)
    assert cfg.warmup_iters(COCO_TRAIN, gb) == expected >= 1  # 1.1.0 closed: warmup steps >= 1
    if preset in ("mlperf", "dgx1_x8", "modelzoo_8gpu"):
        assert cfg.warmup_steps is None and cfg.warmup_epochs == REFERENCE_WARMUP


@pytest.mark.parametrize("preset, world", CLOSED)
def test_learning_rate_at_chosen_iterations(preset, world):
    cfg = resolve_config(preset)
    ipe = ref_iters_per_epoch(COCO_TRAIN, world, cfg.batch_size)
    gb = world * cfg.batch_size
    wb = cfg.warmup_steps if cfg.warmup_steps is not None else ref_warmup_iters(
        REFERENCE_WARMUP, COCO_TRAIN, world, cfg.batch_size)
    base = cfg.lr if cfg.lr is not None else 2.5e-3 * gb / 32  # train.py:285
    d0, d1 = cfg.decay_epochs
    # start, inside the warmup, its last step, just after it, before / at / after each decay
    chosen = [0, wb // 2, wb - 1, wb, wb + 1, d0 * ipe - 1, d0 * ipe, d0 * ipe + 1, d1 * ipe - 1, d1 * ipe]
    reference = ref_lrs(base, wb, 0, list(cfg.decay_epochs), ipe, d1 + 1)
    ours = our_lrs(cfg, world, chosen)
    for it in chosen:
        assert ours[it] == pytest.approx(reference[it], rel=1e-12, abs=1e-15), (preset, it)
    assert reference[0] == 0.0 and reference[wb] == pytest.approx(base * (wb - 1) / wb)  # the plateau
    assert reference[d0 * ipe] == pytest.approx(0.1 * base) and reference[d1 * ipe] == pytest.approx(0.01 * base)


def test_restoring_the_base_lr_after_warmup_is_an_open_option():
    cfg = resolve_config("dgx1_x8", overrides={"restore_lr_after_warmup": True})
    assert our_lrs(cfg, 8, [299])[299] == pytest.approx(0.08)  # the reference: 0.08 x 298 / 299
    assert cfg.division("coco2017") == "open"


@pytest.mark.parametrize("preset, extra", [("mlperf", ()), ("dgxa100_x8", ()), ("mlperf", (42, 61))])
def test_eval_epochs_are_the_listed_ones_in_addition_to_every_5(preset, extra):
    overrides = {"eval_epochs": extra} if extra else {}
    cfg = resolve_config(preset, overrides=overrides)
    assert cfg.epochs == 70  # run_and_time.sh:42 NUMEPOCHS=70 (modelzoo_8gpu: its own 65)
    ours = [e for e in range(1, cfg.epochs + 1) if cfg.is_eval_epoch(e)]
    assert ours == ref_eval_epochs(5, list(cfg.eval_epochs), 70)
    if extra:
        assert 42 in ours and 61 in ours and 5 in ours and 45 in ours


def test_an_epoch_cap_off_the_eval_grid_is_not_evaluated():
    cfg = resolve_config("mlperf", overrides={"epochs": 72})
    assert [e for e in range(66, 73) if cfg.is_eval_epoch(e)] == ref_eval_epochs(5, [], 72)[-1:] == [70]
    final = resolve_config("mlperf", overrides={"epochs": 72, "final_eval": True})
    assert final.is_eval_epoch(72) and final.division("coco2017") == "open"


# ---------------------------------------------------------------- division
def test_the_reference_rules_are_closed_and_each_own_rule_opens():
    cfg = resolve_config("mlperf")
    assert cfg.own_rules() == [] and cfg.division("coco2017") == "closed"
    for rule in REFERENCE_RULES:
        opened = resolve_config("mlperf", overrides={rule: True})
        assert opened.own_rules() == [rule] and opened.division("coco2017") == "open"
        with pytest.raises(ValueError, match=rf"submission_division.*{rule}"):
            resolve_config("mlperf", overrides={rule: True, "submission_division": "closed"})
    assert set(resolve_config("demo").own_rules()) == set(REFERENCE_RULES)  # the demo keeps ssdbench's


def test_v07_eval_flag_is_open_division():
    import argparse

    from ssdbench.cli.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--preset", "mlperf", "--v07-eval"]))
    assert cfg.eval_only_listed and cfg.division("coco2017") == "open"
    assert [e for e in range(1, 71) if cfg.is_eval_epoch(e)] == [40, 50, 55, 60, 65, 70]


# ---------------------------------------------------------------- crowd boxes
@pytest.fixture
def tiny_root(tmp_path):
    tiny_coco(tmp_path, "train")
    tiny_coco(tmp_path, "val")
    return tmp_path


@pytest.mark.filterwarnings("ignore:.*non-positive:UserWarning")
@pytest.mark.parametrize("exclude", [False, True])
def test_a_crowd_box_is_a_training_target_in_the_closed_division(tiny_root, exclude):
    """Image 20 holds crowd box 3 ([0, 0, 40, 40], category 2) and box 4; image 50 only crowd box 7.
    Closed division (utils.py:545-550 appends every annotation): both are targets; the opt-out
    (open division) leaves them out."""
    from ssdbench.dist import Launch
    from ssdbench.train.build import build_data

    cfg = resolve_config("mlperf", overrides={"data": str(tiny_root), "dataset_name": "coco2017", "workers": 0,
                                              "exclude_crowd": exclude, "batch_size": 2})
    assert cfg.division("coco2017") == ("open" if exclude else "closed")
    data = build_data(cfg, Launch(0, 1, 0, torch.device("cpu")))
    i20, i50 = data.train_set.ids.index(20), data.train_set.ids.index(50)
    _, target20 = data.train_set.load(i20)
    _, target50 = data.train_set.load(i50)
    crowd = [0.0, 0.0, 1.0, 1.0]  # box 3 normalised by the 40 x 40 image
    assert (crowd in target20["boxes"].tolist()) != exclude
    assert len(target50["labels"]) == (0 if exclude else 1)
    # ... and the training loader's batch carries it (label 2 = category 2) unless excluded
    labels = torch.cat([b["labels"][b["image_ids"] == 50] for b in data.train_loader])
    assert int((labels > 0).sum()) == (0 if exclude else 1)
