"""Our SSD300 training step side by side with the MLPerf training reference's, same batch, CPU.

    git -C MIRROR show HEAD:retired_benchmarks/ssd-v1/ssd/{ssd300,base_model,utils}.py > DIR/...
    python benchmarks/train_reference.py --reference DIR [--batch-size 8 --threads 2]

``--reference`` is a folder holding the reference's ``ssd300.py``, ``base_model.py`` and
``utils.py`` (mlcommons/training ``retired_benchmarks/ssd-v1/ssd/``), outside this repository: its
code is imported from there, never copied here. Where torchvision is not installed, a stand-in
``torchvision.models.resnet`` with torchvision's ResNet-34 layout (children order, attribute
names) is generated in a temporary folder, as are the two modules the reference imports only for
logging and data (``mlperf_logger``, ``torchvision.transforms``). Random weights, random images,
8 random boxes per image
the reference's targets are encoded once with its ``Encoder`` (it
encodes in its data loader), ours inside the step. Rounds interleave the reference, ours in NCHW,
ours in channels_last and ours in bf16 + channels_last
each prints img/s (median of 3 steps),
then the ratios per round and our step's parts in ms.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESNET_STANDIN = '''"""A torchvision-layout ResNet-34 (children order and attribute names as torchvision's), for timing only."""
import torch.nn as nn

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + idt)

def _layer(cin, cout, n, stride):
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout, 1) for _ in range(n - 1)])

class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False); self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True); self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 3, 1); self.layer2 = _layer(64, 128, 4, 2)
        self.layer3 = _layer(128, 256, 6, 2); self.layer4 = _layer(256, 512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1); self.fc = nn.Linear(512, 1000)

def resnet34(pretrained=False): return ResNet()
def resnet18(pretrained=False): return ResNet()
def resnet50(pretrained=False): return ResNet()
'''


def _stand_ins(folder: Path) -> None:
    """torchvision (when absent) and the reference's logging module, as importable stand-ins."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        (folder / "torchvision" / "models").mkdir(parents=True)
        (folder / "torchvision" / "__init__.py").write_text("")
        (folder / "torchvision" / "transforms.py").write_text("")
        (folder / "torchvision" / "models" / "__init__.py").write_text("")
        (folder / "torchvision" / "models" / "resnet.py").write_text(RESNET_STANDIN)
    (folder / "mlperf_logger.py").write_text("def ssd_print(*args, **kwargs):\n    pass\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="folder with the reference's ssd300.py, base_model.py, utils.py")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    _stand_ins(tmp)
    sys.path[:0] = [str(tmp), str(Path(args.reference).resolve())]
    run(args.batch_size)
    return 0


def run(N: int) -> None:
    import utils as U
    from base_model import Loss
    from ssd300 import SSD300

    from ssdbench.model.boxes import default_boxes
    from ssdbench.model.encoder import encode_targets
    from ssdbench.model.loss import ssd_loss
    from ssdbench.model.ssd import build_model

    def dboxes300():
        return U.DefaultBoxes(300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300],
                              [21, 45, 99, 153, 207, 261, 315], [[2], [2, 3], [2, 3], [2, 3], [2], [2]])

    torch.manual_seed(0)
    images = torch.randn(N, 3, 300, 300)
    M = 8
    boxes = torch.zeros(N, M, 4)
    labels = torch.zeros(N, M, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for i in range(N):
        xy = torch.rand(M, 2, generator=g) * 0.6
        wh = 0.1 + torch.rand(M, 2, generator=g) * 0.3
        boxes[i] = torch.cat([xy, (xy + wh).clamp(max=1)], 1)
        labels[i] = torch.randint(1, 81, (M,), generator=g)
    db = dboxes300()
    enc = U.Encoder(db)
    gl, gc = zip(*[enc.encode(boxes[i], labels[i]) for i in range(N)])  # the reference encodes in its loader
    gloc = torch.stack(gl).transpose(1, 2).contiguous()
    glabel = torch.stack(gc)

    ref = SSD300(81)
    ref.train()
    ref_loss = Loss(db)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ours = build_model("ssd300_r34"); ours.train()
    our_opt = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    dxy = default_boxes("ssd300_r34", "xywh")

    def ref_step():
        ploc, plabel = ref(images)
        loss = ref_loss(ploc, plabel, gloc, glabel)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()

    parts = {}
    def our_step(cl=False, detail=False, bf16=False):
        t = [time.perf_counter()]
        x = images.contiguous(memory_format=torch.channels_last) if cl else images
        lt, bl = encode_targets(boxes, labels, dxy)
        t.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            locs, scores = ours(x)
        t.append(time.perf_counter())
        loss = ssd_loss(locs, scores, lt, bl)
        t.append(time.perf_counter())
        our_opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        our_opt.step()
        t.append(time.perf_counter())
        if detail:
            for k, a, b in zip(("encode", "forward", "loss", "backward", "sgd"), t, t[1:]):
                parts.setdefault(k, []).append(b - a)

    def timeit(fn, reps=3):
        fn()
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    res = {"ref": [], "ours": [], "ours_cl": [], "ours_bf16_cl": []}
    for rnd in range(3):  # interleaved
        res["ref"].append(N / timeit(ref_step))
        res["ours"].append(N / timeit(lambda: our_step(False, True)))
        ours.to(memory_format=torch.channels_last)
        res["ours_cl"].append(N / timeit(lambda: our_step(True)))
        res["ours_bf16_cl"].append(N / timeit(lambda: our_step(True, bf16=True)))
        ours.to(memory_format=torch.contiguous_format)
        print(rnd, {k: round(v[-1], 3) for k, v in res.items()}, flush=True)
    print("img/s medians:", {k: round(statistics.median(v), 3) for k, v in res.items()})
    print("ratio ours/ref per round:", [round(o / r, 3) for o, r in zip(res["ours"], res["ref"])],
          "channels_last:", [round(o / r, 3) for o, r in zip(res["ours_cl"], res["ref"])],
          "bf16 channels_last:", [round(o / r, 3) for o, r in zip(res["ours_bf16_cl"], res["ref"])])
    print("our step parts (ms, median):", {k: round(1e3 * statistics.median(v), 1) for k, v in parts.items()})
    t = time.perf_counter()
    [enc.encode(boxes[i], labels[i]) for i in range(N)]
    print("reference encode (loader side) ms:", round(1e3 * (time.perf_counter() - t), 1))


if __name__ == "__main__":
    sys.exit(main())
