"""Inference backends: each variant against plain fp32 eager PyTorch on the same inputs."""

import pytest
import torch

from ssdbench.infer.backends import BackendOptions, cached_onnx, make_backend
from ssdbench.model.postprocess import PaddedDetections, postprocess_padded
from ssdbench.model.ssd import build_model

MODEL = "ssd128_mini"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(MODEL).eval()


def _images(n, seed=0):
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def _reference(model, x):
    with torch.no_grad():
        return model(x)


def _max_diff(a, b):
    return max((a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item())


def test_eager_fp32_is_the_network_and_predict_is_postprocess(model):
    backend = make_backend("eager", MODEL, model=model)
    x = _images(2)
    ref = _reference(model, x)
    raw = backend.forward_raw(x)
    assert _max_diff(raw, ref) == 0.0 and raw[0].dtype == torch.float32
    pred = backend.predict(x)
    expected = postprocess_padded(*ref, MODEL)
    assert isinstance(pred, PaddedDetections)
    for name in ("boxes", "scores", "labels", "counts"):
        assert torch.equal(getattr(pred, name), getattr(expected, name)), name
    assert backend.input_size == 128


@pytest.mark.parametrize("options", [{"channels_last": True}, {"space_to_depth": True},
                                     {"channels_last": True, "space_to_depth": True}])
def test_eager_layout_variants_match_fp32(model, options):
    backend = make_backend("eager", MODEL, BackendOptions(**options), model=model)
    x = _images(2, 1)
    assert _max_diff(backend.forward_raw(x), _reference(model, x)) < 1e-4
    # The caller's model is not modified (no first-conv swap, no in-place memory-format change).
    assert isinstance(model.backbone.conv1, torch.nn.Conv2d)
    assert model.backbone.conv1.weight.is_contiguous()


def test_eager_bf16_autocast_on_cpu(model):
    backend = make_backend("eager", MODEL, BackendOptions(dtype="bf16"), model=model)
    x = _images(2, 2)
    got, ref = backend.forward_raw(x), _reference(model, x)
    assert got[0].dtype == torch.float32  # raw maps come back in fp32 for post-processing
    diff = _max_diff(got, ref)
    scale = max(ref[0].abs().max().item(), ref[1].abs().max().item())
    assert 0 < diff < 0.05 * scale  # really ran in bf16 (not bit-equal), yet close (8-bit mantissa)


def test_compile_matches_eager_per_batch_size(model):
    # aot_eager checks graph capture, static shapes and autocast without inductor's C++ build.
    backend = make_backend("compile", MODEL, BackendOptions(compile_backend="aot_eager"), model=model)
    for n in (1, 3):
        x = _images(n, n)
        assert _max_diff(backend.forward_raw(x), _reference(model, x)) < 1e-5


@pytest.mark.slow  # inductor generates and builds C++ kernels: ~25 s on two idle cores
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own torch.jit use inside inductor
def test_compile_inductor_matches_eager(model):
    backend = make_backend("compile", MODEL, BackendOptions(channels_last=True), model=model)
    x = _images(2, 5)
    assert _max_diff(backend.forward_raw(x), _reference(model, x)) < 1e-4


def test_onnxruntime_exports_into_cache_once(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SSDBENCH_CACHE", str(tmp_path))
    backend = make_backend("onnxruntime", MODEL, model=model)
    files = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1 and backend.onnx_path == files[0]
    stamp = files[0].stat().st_mtime_ns
    again = make_backend("onnxruntime", MODEL, model=model)
    assert again.onnx_path == files[0] and files[0].stat().st_mtime_ns == stamp
    x = _images(2, 4)
    assert _max_diff(backend.forward_raw(x), _reference(model, x)) < 1e-4
    other = build_model(MODEL)  # different weights -> a different cache entry
    assert make_backend("onnxruntime", MODEL, model=other).onnx_path != files[0]


def test_onnx_cache_empty_variable_means_default(model, tmp_path, monkeypatch):
    """SSDBENCH_CACHE="" is the default ~/.cache/ssdbench (as everywhere), not the working folder."""
    monkeypatch.setenv("SSDBENCH_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = cached_onnx(model, MODEL)
    assert path.parent == tmp_path / "home" / ".cache" / "ssdbench" / "onnx" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert not (tmp_path / "onnx").exists()


def test_bad_requests(model):
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("tensorflow", MODEL, model=model)
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        make_backend("eager", MODEL, BackendOptions(dtype="fp16"), model=model)
    with pytest.raises(ValueError, match="unknown dtype"):
        make_backend("eager", MODEL, BackendOptions(dtype="int8"), model=model)
    with pytest.raises(ValueError, match="CUDA graphs"):
        make_backend("compile", MODEL, BackendOptions(compile_mode="reduce-overhead"), model=model)
    with pytest.raises(ValueError, match=r"expects images \(N, 3, 128, 128\)"):
        make_backend("eager", MODEL, model=model).forward_raw(torch.zeros(1, 3, 300, 300))
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        make_backend("onnxruntime", MODEL, model_file="nope.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_backend("eager", MODEL, BackendOptions(device="cuda"), model=model)


def test_compile_pads_batches_to_buckets(model):
    """Batches pad up to 1, 2, 4, ..., max (one graph each, all warmed up before a timed run);
    the padded rows never reach the caller."""
    backend = make_backend("compile", MODEL, BackendOptions(compile_backend="aot_eager"), model=model)
    assert backend.use_batch_buckets(6) == (1, 2, 4, 6)
    eager = make_backend("eager", MODEL, model=model)
    x = torch.randn(3, 3, model.spec.input_size, model.spec.input_size, generator=torch.Generator().manual_seed(2))
    got, ref = backend.forward_raw(x), eager.forward_raw(x)
    assert got[0].shape == ref[0].shape and (got[0] - ref[0]).abs().max() < 1e-4
    from ssdbench.loadgen.run import warmup_sizes
    from ssdbench.loadgen.settings import resolve

    sut = resolve("Offline", preset="cpu", flags={"backend": "compile", "max_batch_size": 6}).sut
    assert warmup_sizes(sut) == [1, 2, 4, 6]
    assert warmup_sizes(resolve("Offline", preset="cpu", flags={"max_batch_size": 6}).sut) == [1, 6]


def test_device_and_dtype_per_backend(model, monkeypatch):
    """auto dtype: fp32 for onnxruntime on every device; openvino: the CPU for --device auto even
    where a GPU is there, one line naming --device for any other device."""
    import ssdbench.infer.backends as B

    monkeypatch.setenv("SSDBENCH_CPU_BF16", "0")
    monkeypatch.setattr(B, "pick_device", lambda name, **_: torch.device("cuda", 0) if name in ("auto", "cuda")
                        else torch.device(name))  # a machine with a GPU
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert B.backend_target("onnxruntime", "cuda", "auto") == (gpu, "fp32")
    assert B.backend_target("onnxruntime", None, None) == (gpu, "fp32")
    assert B.backend_target("eager", "auto", "auto") == (gpu, "bf16")  # default_precision of the GPU
    assert B.backend_target("openvino", "auto", "auto") == (cpu, "fp32")
    assert B.backend_target("openvino", None, "bf16") == (cpu, "bf16")
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with pytest.raises(ValueError, match=f"^--device {device}: the openvino backend runs on the CPU; pass "
                                             "--device cpu$"):
            make_backend("openvino", MODEL, BackendOptions(device=device), model=model)
    with pytest.raises(ValueError, match="--device 'tpu0' is not a device"):
        B.backend_target("openvino", "tpu0")
    assert make_backend("openvino", MODEL, BackendOptions(device="auto"), model=model).device == cpu
