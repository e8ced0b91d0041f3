"""`ssdbench demo` end to end: the demo trains to a non-trivial mAP with a compliant MLPerf log and
prints plain progress lines when its output is not a terminal; the pictures it draws."""

import json
import os
import re
import subprocess
import sys

import numpy as np

from ssdbench.train.mlperf_checks import compliance

# An untrained detector scores ~1e-5 mAP on this val set (random boxes rarely overlap an object
# at IoU >= 0.5). The demo preset cut to 5 epochs (lr decay at 4) measured 0.034 mAP (AP50 0.11)
# on 2 cores; 6 epochs 0.055, the full 20-epoch demo ~0.2. 0.015 is >1000x chance with a 2x
# margin for platform variation: it fails when training, targets, loss or eval are broken.
DEMO_EPOCHS = 5
DEMO_MIN_MAP = 0.015
ENV = {**os.environ, "SSDBENCH_DEBUG": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("SSDBENCH_PROGRESS", None)  # the default: one plain line per epoch / eval, since stdout is a pipe
# A training progress line where the output is not a terminal (`ssdbench.progress.Progress`).
PROGRESS_LINE = re.compile(r"epoch (\d+)/(\d+) \| step (\d+)/(\d+) \(\d+%\) \| [\d.]+ img/s \| loss [\d.]+ "
                           r"\| lr [\d.]+e[+-]\d+ \| ETA \d+:\d\d:\d\d \| mem [\d.]+ GiB.*")
EVAL_LINE = re.compile(r"eval \| batch (\d+)/\1 \(100%\) \| [\d.]+ img/s \| ETA \d+:\d\d:\d\d \| mem [\d.]+ GiB.*")


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "ssdbench", "demo", "--out", str(out), "--epochs", str(DEMO_EPOCHS),
           "--threads", "1", "--images", "2"]
    proc = subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == DEMO_EPOCHS and summary["status"] == "finished"
    assert summary["final_map"] > DEMO_MIN_MAP, summary["eval_history"]
    assert len(summary["eval_history"][-1]["stats"]) == 12
    for name in ("config.json", "metrics.jsonl", "plots/loss.png", "plots/lr.png", "plots/map.png",
                 "checkpoints/last.pt"):
        assert (out / name).exists(), name
    assert len(list((out / "predictions").glob("*.png"))) == 2
    assert "AP50" in proc.stdout and "time to train" in proc.stdout
    lines = proc.stdout.splitlines()
    progress = [PROGRESS_LINE.fullmatch(line) for line in lines if line.startswith("epoch ") and " | " in line]
    assert progress and all(progress), proc.stdout[-3000:]
    assert any(EVAL_LINE.fullmatch(line) for line in lines), proc.stdout[-3000:]  # evaluation shows progress too
    assert {m.group(1) for m in progress} == {str(e) for e in range(1, DEMO_EPOCHS + 1)}  # every epoch
    assert len(progress) == DEMO_EPOCHS  # one line per epoch in a log, not one per metrics window
    assert "per-class AP (epoch" in proc.stdout and len(summary["per_class"]) == 9
    for name in ("per_class_ap.png", "pr_curves.png", "pr_curves_per_class.png", "confusion_matrix.png"):
        assert (out / "plots" / name).exists(), name
    assert "\r" not in proc.stdout  # no bar redraws in a log
    failed = compliance(out / "mlperf_log.txt")
    assert failed == [], failed


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
