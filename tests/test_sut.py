"""The LoadGen SUT's side of the contract (`ssdbench.loadgen.sut`): response tuples and the
detections a ``predict`` must return. The batcher itself runs under LoadGen in test_run.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loadgen_fixtures import one_detection

from ssdbench.loadgen.sut import check_detections, detections_to_responses
from ssdbench.model.postprocess import PaddedDetections


def test_response_tuples_put_y_before_x():
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], [[0.0, 0.0, 0.0, 0.0]] * 2])
    scores = torch.tensor([[0.9, 0.8], [0.0, 0.0]])
    labels = torch.tensor([[3, 7], [0, 0]])
    dets = PaddedDetections(boxes=boxes, labels=labels, scores=scores, counts=torch.tensor([2, 0]))
    out = detections_to_responses(np.array([5, 9]), dets)
    expected = np.array([[5, 0.2, 0.1, 0.4, 0.3, 0.9, 3], [5, 0.6, 0.5, 0.8, 0.7, 0.8, 7]], np.float32)
    np.testing.assert_array_equal(out[0], expected)
    assert out[0].dtype == np.float32 and out[0].flags.c_contiguous and out[1].shape == (0, 7)


def test_predict_must_return_named_detections():
    """A positional tuple is refused (its order is ambiguous), naming the expected container."""
    dets = one_detection(2)
    assert check_detections(dets) is dets
    with pytest.raises(TypeError, match="predict must return a PaddedDetections"):
        check_detections((dets.boxes, dets.scores, dets.labels, dets.counts))
