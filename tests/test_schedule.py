"""The MLPerf learning-rate schedule (benchmark.md §6) against values worked out by hand."""

import pytest

from ssdbench.train.schedule import MLPerfSchedule


def test_schedule_by_hand():
    # 10 iterations per epoch, 4 warmup iterations from 0, decay at epochs 2 and 3.
    s = MLPerfSchedule(iters_per_epoch=10, warmup_iters=4, warmup_factor=0, decay_epochs=(2, 3))
    assert [s(i) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert s(19) == 1.0 and s(20) == pytest.approx(0.1) and s(30) == pytest.approx(0.01)
    # Reference warmup factor f: lr starts at 1 - 2**-f of the base (f = 1: 0.5).
    half = MLPerfSchedule(10, 4, warmup_factor=1, decay_epochs=())
    assert [half(i) for i in range(5)] == pytest.approx([0.5, 0.625, 0.75, 0.875, 1.0])
