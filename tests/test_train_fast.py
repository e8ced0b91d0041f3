"""The fast training path inside `run_training`: FastStep equals the plain step, the device input
pipeline trains, a fast run resumes bit-identically, --cuda-graph on CPU is a one-line error;
dataset-name detection and the demo's ground-truth drawing.

All runs are in-process on CPU in deterministic mode (ssd128_mini, 24 synthetic images, batch 4).
"""

import json
import re
import signal

import numpy as np
import pytest
import torch

from ssdbench.train.checkpoint import last_checkpoint, load_checkpoint
from ssdbench.train.config import resolve_config, resolve_for_device
from ssdbench.train.trainer import Trainer, run_training

BATCH = 4
# Fused SGD (step=fast) and the plain for-loop SGD do the same fp32 maths; after ~10 steps the
# weights were bit-identical here (x86, torch 2.13). 2e-5 absolute leaves room for kernels that
# round differently elsewhere, and is far below what training moves a weight (asserted below).
FAST_VS_PLAIN_ATOL = 2e-5
DEVICE_EPOCHS = 6  # ~30 steps: the loss falls from ~30 to ~12 (measured), see the test below
# A training progress line where the output is not a terminal (`ssdbench.progress.Progress`).
PROGRESS_LINE = re.compile(r"epoch (\d+)/(\d+) \| step (\d+)/(\d+) \(\d+%\) \| [\d.]+ img/s \| loss [\d.]+ "
                           r"\| lr [\d.]+e[+-]\d+ \| ETA \d+:\d\d:\d\d \| mem [\d.]+ GiB.*")


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Runs set deterministic algorithms and SIGTERM/SIGINT handlers process-wide; undo both."""
    det = torch.are_deterministic_algorithms_enabled()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    torch.use_deterministic_algorithms(det)
    for s, h in handlers.items():
        signal.signal(s, h)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ssdbench.data.synth import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("data") / "coco", train_images=24, val_images=2,
                               workers=1, progress=False)


def _cfg(data, out, **overrides):
    values = {"data": str(data), "model": "ssd128_mini", "batch_size": BATCH, "epochs": 2, "lr": 0.015,
              "warmup_steps": 3, "decay_epochs": (2,), "eval_every": 0, "workers": 0, "log_every": 2,
              "deterministic": True, "max_samples": 1, "out": str(out), "dataset_name": "synthetic",
              **overrides}
    return resolve_config("demo", overrides=values)


def _final(out) -> dict:
    return load_checkpoint(last_checkpoint(out / "checkpoints"))


def _train_losses(out) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def plain_and_fast(data, tmp_path_factory):
    runs = {}
    for step in ("plain", "fast"):
        out = tmp_path_factory.mktemp(step)
        summary = run_training(_cfg(data, out, step=step), progress=False)
        assert summary["status"] == "finished" and summary["steps"] >= 6, summary
        runs[step] = _final(out)
    return runs


def test_fast_step_reaches_the_plain_weights(plain_and_fast):
    plain, fast = plain_and_fast["plain"], plain_and_fast["fast"]
    assert isinstance(fast["optimizer"]["param_groups"][0]["lr"], torch.Tensor)  # make_sgd's tensor lr
    assert float(fast["optimizer"]["param_groups"][0]["lr"]) == pytest.approx(
        plain["optimizer"]["param_groups"][0]["lr"], rel=1e-6)
    moved = 0.0
    for key, value in plain["model"].items():
        if value.is_floating_point():
            diff = (value - fast["model"][key]).abs().max().item()
            assert diff < FAST_VS_PLAIN_ATOL, f"{key}: fast and plain differ by {diff}"
    for pid, s in plain["optimizer"]["state"].items():
        buf = fast["optimizer"]["state"][pid]["momentum_buffer"]
        assert torch.allclose(s["momentum_buffer"], buf, atol=FAST_VS_PLAIN_ATOL)
        moved = max(moved, s["momentum_buffer"].abs().max().item())
    assert moved > 100 * FAST_VS_PLAIN_ATOL  # the runs really updated the weights


@pytest.fixture(scope="module")
def device_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("device")
    cfg = _cfg(data, out, step="fast", input_pipeline="device", epochs=DEVICE_EPOCHS, log_every=3,
               decay_epochs=(DEVICE_EPOCHS,))
    summary = run_training(cfg, progress=False)
    return out, summary


def test_device_input_pipeline_trains(device_run):
    out, summary = device_run
    assert summary["status"] == "finished" and summary["steps"] >= 5 * DEVICE_EPOCHS, summary
    losses = _train_losses(out)
    assert len(losses) >= 10 and all(np.isfinite(losses))
    # Windows of 3 steps: ~30 at init (measured 28, 33), ~12 after 30 steps; an untrained or
    # wrongly fed network (boxes not matching pixels) stays near the start.
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2]), losses


def test_fast_device_run_stopped_mid_epoch_resumes_identically(device_run, data, tmp_path, capsys, monkeypatch):
    """Stop 2 steps into epoch 2 (as SIGTERM does), resume: the same state as the whole run. The
    resumed run shows its progress: captured output is no terminal, so as plain lines."""
    reference = _final(device_run[0])
    total = reference["state"]["step"]
    stop_at = total // DEVICE_EPOCHS + 2
    cfg, _ = resolve_for_device(_cfg(data, tmp_path, step="fast", input_pipeline="device",
                                     epochs=DEVICE_EPOCHS, log_every=3, decay_epochs=(DEVICE_EPOCHS,)), "cpu")
    from ssdbench.dist import init_distributed

    trainer = Trainer(cfg, init_distributed("cpu"), progress=False)

    def beat():  # called after every step (and around checkpoints)
        trainer.stop_requested = trainer.state.step >= stop_at

    trainer.watchdog.beat = beat
    assert trainer.run()["status"] == "interrupted"
    ckpt = load_checkpoint(last_checkpoint(tmp_path / "checkpoints"))
    assert ckpt["state"]["step"] == stop_at and ckpt["sampler"]["position"] == 2 * BATCH  # mid epoch 2
    monkeypatch.delenv("SSDBENCH_PROGRESS", raising=False)
    capsys.readouterr()
    summary = run_training(cfg, progress=True)  # the same config continues the run
    assert summary["resumed"] and summary["steps"] == total
    lines = [line for line in capsys.readouterr().out.splitlines() if " | " in line]
    assert lines and all(PROGRESS_LINE.fullmatch(line) for line in lines), lines
    shown = [tuple(int(g) for g in PROGRESS_LINE.fullmatch(line).groups()) for line in lines]
    per_epoch = total // DEVICE_EPOCHS
    # One line per 3-step window (log_every=3), from 2 steps into epoch 2 to the end of the run.
    expected = [(e, DEVICE_EPOCHS, s, per_epoch) for e in range(2, DEVICE_EPOCHS + 1)
                for s in _window_ends(2 if e == 2 else 0, per_epoch, 3)]
    assert shown == expected, lines
    resumed = _final(tmp_path)
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), f"model tensor {key} differs"
    for pid, s in reference["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], resumed["optimizer"]["state"][pid]["momentum_buffer"])
    lrs = [run["optimizer"]["param_groups"][0]["lr"] for run in (reference, resumed)]
    assert torch.equal(*lrs)
    assert reference["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"] == total
    assert reference["state"]["eval_history"] == resumed["state"]["eval_history"]


def _window_ends(start: int, end: int, every: int) -> list[int]:
    """Epoch steps at which `train_one_epoch` ends a window: every `every` steps, and at the end."""
    ends = list(range(start + every, end + 1, every))
    return ends if ends and ends[-1] == end else [*ends, end]


# ---------------------------------------------------------------- config resolution per device
def test_gpu_presets_resolve_per_device():
    cfg = resolve_config("dgxa100_x8")
    cuda, note = resolve_for_device(cfg, "cuda")
    assert note is None
    assert (cuda.step, cuda.cuda_graph, cuda.input_pipeline, cuda.precision, cuda.channels_last) == (
        "fast", True, "device", "bf16", True)
    cpu, note = resolve_for_device(cfg, "cpu")
    assert (cpu.step, cpu.cuda_graph, cpu.input_pipeline, cpu.precision, cpu.channels_last) == (
        "plain", False, "cpu", "fp32", False)
    assert note.count("\n") == 0 and "step=plain" in note
    assert resolve_for_device(cpu, "cpu") == (cpu, None)  # idempotent, no second note
    demo, note = resolve_for_device(resolve_config("demo"), "cpu")
    assert note is None and (demo.step, demo.input_pipeline) == ("plain", "cpu")


def test_cuda_graph_on_cpu_is_a_one_line_error(capsys, monkeypatch):
    from ssdbench.cli import main

    monkeypatch.delenv("SSDBENCH_DEBUG", raising=False)
    assert main(["train", "--cuda-graph", "--device", "cpu", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--cuda-graph needs a CUDA device" in err and "cpu" in err
    with pytest.raises(ValueError, match="fp16"):
        resolve_config("mlperf", overrides={"step": "fast", "precision": "fp16"})
    with pytest.raises(ValueError, match="input_pipeline"):
        resolve_config("mlperf", overrides={"input_pipeline": "gpu"})


# ---------------------------------------------------------------- dataset name for the MLPerf log
def _coco(root, categories: int, split: str = "train"):
    from data_fixtures import write_coco

    cats = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(categories)]
    image = {"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    write_coco(root, split, [image], [ann], cats, write_images=False)
    return root


@pytest.mark.parametrize("categories, split, given, expected", [
    (80, "train", None, "coco2017"),  # COCO's 80 categories in instances_train2017.json
    (79, "train", None, "mycoco"),  # another category set: the folder name (open division)
    (80, "minitrain", None, "mycoco"),  # instances_minitrain2017.json is not COCO's train file
    (3, "train", "coco2017", "coco2017"),  # --dataset-name overrides
])
def test_dataset_name_detection(tmp_path, categories, split, given, expected):
    from ssdbench.data.coco import CocoDetection
    from ssdbench.train.build import dataset_name

    root = _coco(tmp_path / "mycoco", categories, split)
    cfg = resolve_config("mlperf", overrides={"dataset_name": given, "train_split": split})
    assert dataset_name(cfg, root, CocoDetection(root, split)) == expected
    (root / "ssdbench_synth.json").write_text("{}")  # the embedded dataset's marker
    assert dataset_name(cfg, root, CocoDetection(root, split)) == (given or "synthetic")


# ---------------------------------------------------------------- demo pictures
def test_demo_draws_ground_truth_boxes():
    from PIL import Image

    from ssdbench.infer.draw import GT_COLOUR, draw_ground_truth

    img = Image.new("RGB", (200, 160), (40, 90, 160))
    draw_ground_truth(img, np.array([[0.1, 0.25, 0.6, 0.75], [0, 0, 0, 0]]), np.array([2, 0]),
                      {2: "two"}, 0.3)
    px = np.asarray(img)
    # Box pixels: l = 20, t = 40, r = 120, b = 120. A thin white line on the box's left edge.
    assert tuple(px[80, 20]) == GT_COLOUR and tuple(px[80, 23]) == (40, 90, 160)
    assert tuple(px[40, 70]) == GT_COLOUR  # top edge
    assert (px[155, :100] != (40, 90, 160)).any(axis=-1).all()  # the legend band along the bottom
    assert tuple(px[10, 10]) == (40, 90, 160)  # the padding slot (label 0) is not drawn


def test_contact_sheet_tiles_landscape_and_portrait(tmp_path):
    from PIL import Image

    from ssdbench.infer.draw import contact_sheet

    paths = []
    for k, size in enumerate([(640, 480), (480, 640), (500, 375), (100, 100)]):
        p = tmp_path / f"{k}.png"
        Image.new("RGB", size, (255, 0, 0)).save(p)
        paths.append(p)
    sheet = contact_sheet(paths, tmp_path / "sheet.png", columns=3, width=200)
    with Image.open(sheet) as im:
        assert im.size == (600, 400)  # 3 columns x 2 rows of 200 px square cells
        assert im.getpixel((100, 100)) == (255, 0, 0)  # first tile centred in its cell
        assert im.getpixel((300, 5)) == (255, 0, 0)  # portrait tile fills the cell's height
        assert im.getpixel((500, 300)) == (255, 255, 255)  # empty sixth cell
    assert contact_sheet([], tmp_path / "none.png") is None
