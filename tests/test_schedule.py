"""The MLPerf learning-rate schedule (benchmark.md §6) against values worked out by hand.

The closed presets' schedule against the reference's own formulas is in test_recipe.py."""

import pytest

from ssdbench.train.build import MLPerfSchedule


def test_schedule_by_hand():
    # 10 iterations per epoch, 4 warmup iterations from 0, decay at epochs 2 and 3.
    s = MLPerfSchedule(iters_per_epoch=10, warmup_iters=4, warmup_factor=0, decay_epochs=(2, 3))
    assert [s(i) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.75])  # plateau at 3/4
    assert s(19) == 0.75 and s(20) == pytest.approx(0.1) and s(30) == pytest.approx(0.01)
    # Reference warmup factor f: lr starts at 1 - 2**-f of the base (f = 1: 0.5).
    half = MLPerfSchedule(10, 4, warmup_factor=1, decay_epochs=())
    assert [half(i) for i in range(6)] == pytest.approx([0.5, 0.625, 0.75, 0.875, 0.875, 0.875])


def test_without_plateau_the_base_lr_follows_the_warmup():
    s = MLPerfSchedule(10, 4, 0, (2, 3), plateau=False)
    assert [s(i) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert s(19) == 1.0 and s(20) == pytest.approx(0.1)


def test_decay_inside_the_warmup_scales_it():
    # The decay epoch 1 starts at iteration 10 < W = 15: the warmup continues from the decayed base
    # (train.py:331-336 decays current_lr, lr_warmup then scales it) and its last value stays.
    s = MLPerfSchedule(10, 15, 0, (1, 3))
    assert s(9) == pytest.approx(1 - 6 / 15) and s(10) == pytest.approx(0.1 * (1 - 5 / 15))
    assert s(15) == pytest.approx(0.1 * (1 - 1 / 15)) and s(29) == s(15)
    assert s(30) == pytest.approx(0.01)  # the next decay epoch resets to the decayed base
    assert MLPerfSchedule(10, 0, 0, (1,))(5) == 1.0  # no warmup at all: the base lr
