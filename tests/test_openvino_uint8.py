"""OpenVINO takes the QSL's uint8 samples: the normalisation compiled into the model
(`ssdbench.infer.file_backends.uint8_input_model`) gives the float path's detections, in a pool
worker too."""

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from ssdbench.infer.backends import BackendOptions, make_backend
from ssdbench.infer.export import export_model
from ssdbench.loadgen.device_pool import InstancePool, WorkerRecipe, available_cores
from ssdbench.loadgen.samples import SharedSamples, normalise_uint8
from ssdbench.model.ssd import build_model

MODEL = "ssd128_mini"


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory):
    """A seeded ssd128_mini (10 classes, background raised so detections vary) as an ONNX file."""
    torch.manual_seed(0)
    model = build_model(MODEL, num_classes=10).eval()
    with torch.no_grad():
        for conv, nd in zip(model.conf, model.spec.boxes_per_cell):
            conv.bias[:nd] += 3.0
    return export_model(model, MODEL, tmp_path_factory.mktemp("ov_u8") / "mini.onnx")


def _images(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 128, 128), dtype=torch.uint8, generator=gen)


def _assert_same_detections(got, want) -> None:
    assert torch.equal(got.counts.cpu(), want.counts.cpu())
    for i, k in enumerate(want.counts.tolist()):
        assert torch.equal(got.labels[i, :k].cpu(), want.labels[i, :k].cpu())
        torch.testing.assert_close(got.boxes[i, :k].float(), want.boxes[i, :k].float(), atol=1e-4, rtol=0)
        torch.testing.assert_close(got.scores[i, :k].float(), want.scores[i, :k].float(), atol=1e-4, rtol=0)


def test_uint8_input_gives_the_float_paths_detections(mini_onnx):
    backend = make_backend("openvino", MODEL, BackendOptions(threads=1), model_file=mini_onnx)
    assert backend.accepts_uint8
    images = _images(4)
    want = backend.predict(normalise_uint8(images, "cpu"))  # torch normalisation, float32 model
    got = backend.predict(images)  # uint8 straight into the model with compiled preprocessing
    assert int(want.counts.sum()) > 0  # something to compare
    _assert_same_detections(got, want)
    assert {uint8 for _, uint8 in backend._compiled} == {False, True}  # two compiled models, one per input type


def test_a_pool_worker_hands_shared_uint8_samples_to_openvino(mini_onnx):
    images = _images(3)
    store = SharedSamples(4, (3, 128, 128))
    kwargs = {"name": "openvino", "model_name": MODEL, "model_file": str(mini_onnx)}
    pool = InstancePool(WorkerRecipe(kwargs, warmup=((2, 1),)), devices=["cpu"], cores=[available_cores()[:1]],
                        timeout_s=120)  # fmt: skip
    try:
        for index, image in zip((7, 3, 5), images):
            store.put(index, image.numpy())
        pool.use_store(store)
        got = pool.predict_samples(np.array([7, 3, 5]))
        assert pool.describe[0]["backend"] == "openvino"
    finally:
        pool.close()
        store.close()
    backend = make_backend("openvino", MODEL, BackendOptions(threads=1), model_file=mini_onnx)
    _assert_same_detections(got, backend.predict(normalise_uint8(images, "cpu")))
    _assert_same_detections(got, backend.predict(images))
