"""One-GPU speed of training, inference and evaluation: correctness first, then timings.

    python benchmarks/gpu.py --out benchmarks/out                    # on a GPU (docs/GPU.md)
    python benchmarks/gpu.py --device cpu --quick --out benchmarks/out   # CPU smoke run (ssd128_mini)

Sections (each checks every variant against fp32 eager on the same input before timing it):
1. train: ssd300_r34 images/s on synthetic in-memory inputs, fp32/bf16 x channels_last off/on x
   eager/compile/CUDA graph (`train.fast_step.FastStep`), with MFU = img/s x 3 x forward FLOPs /
   peak (forward 31.7 GFLOP per image, benchmark.md §1; x3 for forward + backward; H100 SXM dense bf16
   peak 989 TFLOP/s, used for every precision).
2. pipeline: the real input path on COCO-size synthetic JPEGs (`data.synth.make_synthetic_coco`):
   byte-reading workers + `data.gpu_pipeline.DevicePipeline` alone, and end to end with training.
3. infer: ssd1200_r34 bf16, space-to-depth off/on, CUDA graph per batch size: network and
   post-processing (`postprocess_padded`) timed separately; Offline-style samples/s per batch
   size and SingleStream p90 latency (batch 1: host copy + network + post-processing).
4. eval: a 4,952-image pass (network + batched post-processing + COCO scoring in a thread).
5. pool: LoadGen Offline (`ssdbench.loadgen.run.run_loadgen`, eager, embedded data) on this one
   device, once in the SUT's own process and once through the device pool with one worker
   (``--devices cuda:K``: samples by index, uint8 copy, on-device normalisation): samples/s of
   each and their ratio, the pool's cost before it is spread over more GPUs.
Timing: warm-up, CUDA synchronised, medians; inputs are random (never all zero). Prints a table
last and writes ``gpu.json`` into --out. Tolerances: fp32 variants rel. error <= 1e-3 (loss) /
1e-3 (outputs); bf16 <= 5e-2 (loss) / 3e-2 (outputs), relative L2 error against fp32 eager.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from timing import sync_for, timed
from tqdm import tqdm

from ssdbench.data.loader import InputSettings, Shard
from ssdbench.model.encoder import Encoder
from ssdbench.model.postprocess import postprocess_padded
from ssdbench.model.specs import get_spec
from ssdbench.model.ssd import build_model, layer_macs
from ssdbench.train.fast_step import FastStep, make_sgd
from ssdbench.train.loop import StepParts

PEAK_FLOPS = 989e12  # H100 SXM dense bf16 (NVIDIA datasheet); MFU is reported against it
TOL = {"fp32": (1e-3, 1e-3), "bf16": (5e-2, 3e-2)}  # (loss, outputs) relative error vs fp32 eager


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def train_flops(model_name: str) -> float:
    """Training FLOPs per image: 3 x forward (2 x MACs of convs + bias + BN, `layer_macs`)."""
    return 3 * 2 * sum(m for _, _, m in layer_macs(get_spec(model_name)))


def synthetic_batch(n: int, size: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lt = torch.rand(n, 8, 2, generator=g) * 0.6
    boxes = torch.cat([lt, lt + 0.05 + 0.35 * torch.rand(n, 8, 2, generator=g)], -1)
    labels = torch.randint(1, 81, (n, 8), generator=g)
    return {"images": torch.randn(n, 3, size, size, generator=g).to(device), "boxes": boxes.to(device),
            "labels": labels.to(device)}


def make_step(net, name, device, precision, channels_last, mode):
    model = copy.deepcopy(net).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_sgd(model.parameters(), 1e-3, device=device)
    parts = StepParts(model, opt, None, Encoder(name), device, amp_dtype=torch.bfloat16 if precision == "bf16" else None,
                      channels_last=channels_last)
    return FastStep(parts, compile="compile" in mode, cuda_graph="graph" in mode)


def train_variants(args, device) -> list[tuple]:
    modes = ["eager"] + (["compile"] if device.type == "cuda" or args.compile else [])
    modes += ["graph", "compile+graph"] if device.type == "cuda" else []
    return [(p, cl, m) for p in ("fp32", "bf16") for cl in (False, True) for m in modes]


def bench_train(args, device) -> list[dict]:
    name = args.train_model
    net = build_model(name)
    batch = synthetic_batch(args.train_batch, get_spec(name).input_size, device)
    reference = float(make_step(net, name, device, "fp32", False, "eager")(batch))
    flops, rows = train_flops(name), []
    for precision, cl, mode in tqdm(train_variants(args, device), desc="train variants"):
        step = make_step(net, name, device, precision, cl, mode)
        err = abs(float(step(batch)) - reference) / abs(reference)  # first step: same weights
        ok = err <= TOL[precision][0]
        secs = timed(lambda s=step: s(batch), args.warmup, args.iters, sync_for(device))
        ips = args.train_batch / statistics.median(secs)
        rows.append({"section": "train", "model": name, "precision": precision, "channels_last": cl,
                     "mode": mode, "batch": args.train_batch, "images_s": ips, "mfu": ips * flops / PEAK_FLOPS,
                     "loss_rel_err": err, "correct": ok})
        del step
    return rows


def synth_data(args) -> Path:
    from ssdbench.data.synth import make_synthetic_coco

    root = Path(args.data or Path(args.out) / f"gpu_synth_{args.synth_images}")
    if not (root / "ssdbench_synth.json").is_file():
        make_synthetic_coco(root, train_images=args.synth_images, val_images=0, progress=True)
    return root


def bench_pipeline(args, device) -> list[dict]:
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.gpu_pipeline import DevicePipeline, build_byte_loader, describe_decoder, device_batches

    name = args.train_model
    data = CocoDetection(synth_data(args), "train")
    size = get_spec(name).input_size
    pipe = DevicePipeline(InputSettings(size, shard=Shard(seed=0)), device, encoder=Encoder(name))
    rows = []
    for with_step in (False, True):
        step = None
        if with_step:
            precision = "bf16" if device.type == "cuda" else "fp32"
            mode = "graph" if device.type == "cuda" else "eager"
            step = make_step(build_model(name), name, device, precision, device.type == "cuda", mode)
        loader = build_byte_loader(data, args.train_batch, inputs=InputSettings(shard=Shard(seed=0)),
                                   workers=args.workers)
        images, t0 = 0, None
        batches = tqdm(device_batches(loader, pipe), total=len(loader), desc=f"pipeline step={with_step}")
        for n_batches, batch in enumerate(batches, start=1):
            if step is not None:
                step(batch)
            if n_batches == 2:  # first two batches: worker start-up, cuDNN autotune, graph capture
                sync(device)
                t0, images = time.perf_counter(), 0
            elif n_batches > 2:
                images += len(batch["image_ids"])
        sync(device)
        ips = images / (time.perf_counter() - t0) if t0 and images else float("nan")
        rows.append({"section": "pipeline", "model": name, "with_train_step": with_step, "images_s": ips,
                     "decoder": describe_decoder(), "workers": args.workers, "batch": args.train_batch})
    return rows


def graphed(module, example, dtype, device):
    """Callable x -> (locs, scores) for a fixed input shape; CUDA graph on GPUs, eager elsewhere."""
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext())

    def run_eager(x):
        with torch.inference_mode(), autocast:
            return module(x)
    if device.type != "cuda":
        return run_eager
    static = example.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            run_eager(static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run_eager(static)

    def run_graph(x):
        static.copy_(x, non_blocking=True)
        graph.replay()
        return out
    return run_graph


def inference_module(net, s2d: bool, device):
    from ssdbench.infer.space_to_depth import apply_space_to_depth, space_to_depth

    body = (apply_space_to_depth(net) if s2d else copy.deepcopy(net)).to(device).eval()
    body = body.to(memory_format=torch.channels_last)

    def forward(x):
        x = space_to_depth(x) if s2d else x
        return body(x.contiguous(memory_format=torch.channels_last))
    return forward


def bench_infer(args, device) -> list[dict]:
    name = args.infer_model
    net = build_model(name).eval()
    size = get_spec(name).input_size
    ref_module = copy.deepcopy(net).to(device)
    rows = []
    for s2d in (False, True):
        try:
            module = inference_module(net, s2d, device)
        except ValueError as exc:  # e.g. a stem that is not 7x7/s2
            rows.append({"section": "infer", "model": name, "space_to_depth": s2d, "skipped": str(exc)})
            continue
        for bs in tqdm(args.infer_batches, desc=f"infer s2d={s2d}"):
            x = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(bs)).to(device)
            run = graphed(module, x, args.infer_dtype, device)
            with torch.inference_mode():
                ref = ref_module(x)
            got = run(x)
            err = max(rel_err(got[0], ref[0]), rel_err(got[1], ref[1]))
            net_s = statistics.median(timed(lambda r=run, x=x: r(x), args.warmup, args.iters, sync_for(device)))
            post_s = statistics.median(timed(lambda g=got: postprocess_padded(*g, name), args.warmup,
                                             args.iters, sync_for(device)))
            rows.append({"section": "infer", "model": name, "dtype": args.infer_dtype, "space_to_depth": s2d,
                         "batch": bs, "network_ms": net_s * 1e3, "post_ms": post_s * 1e3,
                         "samples_s": bs / (net_s + post_s), "rel_err": err,
                         "correct": err <= TOL[args.infer_dtype][1]})
        rows.append(single_stream(args, module, name, size, device, s2d))
    return rows


def single_stream(args, module, name, size, device, s2d) -> dict:
    """Batch-1 latency as LoadGen SingleStream sees it: pinned host copy + network + post-processing."""
    host = torch.randn(1, 3, size, size)
    host = host.pin_memory() if device.type == "cuda" else host
    run = graphed(module, host.to(device), args.infer_dtype, device)

    def query():
        locs, scores = run(host.to(device, non_blocking=True))
        return postprocess_padded(locs, scores, name).counts
    lat = np.array(timed(query, args.warmup, args.latency_iters, sync_for(device))) * 1e3
    return {"section": "single_stream", "model": name, "dtype": args.infer_dtype, "space_to_depth": s2d,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90))}


def bench_eval(args, device) -> dict:
    """Eval pass: network (bf16 on GPU) + postprocess per batch, detections to host, COCO scoring
    in a worker thread overlapping the next batches (as the published systems do)."""
    from ssdbench.eval.coco_scoring import coco_stats

    name, n_images = args.train_model, args.eval_images
    size, bs = get_spec(name).input_size, args.eval_batch
    module = inference_module(build_model(name).eval(), False, device)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    x = torch.randn(bs, 3, size, size).to(device)
    run = graphed(module, x, dtype, device)
    gt = _fake_ground_truth(n_images)
    sync(device)
    t0, results = time.perf_counter(), []
    for start in tqdm(range(0, n_images, bs), desc="eval pass"):
        x.normal_()  # new (random) images each batch, generated on the device
        dets = postprocess_padded(*run(x), name)
        boxes, scores, labels, counts = (t.to("cpu", non_blocking=True) for t in
                                         (dets.boxes, dets.scores, dets.labels, dets.counts))
        sync(device)
        for i in range(min(bs, n_images - start)):
            c = int(counts[i])
            for b, s, lab in zip(boxes[i, :c].tolist(), scores[i, :c].tolist(), labels[i, :c].tolist()):
                results.append({"image_id": start + i + 1, "category_id": 1 + (lab - 1) % 5,
                                "bbox": [b[0] * 640, b[1] * 480, (b[2] - b[0]) * 640, (b[3] - b[1]) * 480],
                                "score": s})
    net_s = time.perf_counter() - t0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # asynchronous scoring
        t1 = time.perf_counter()
        pool.submit(coco_stats, gt, results).result()
        score_s = time.perf_counter() - t1
    return {"section": "eval", "model": name, "images": n_images, "batch": bs, "network_post_s": net_s,
            "scoring_s": score_s, "total_s": net_s + score_s, "detections": len(results)}


def bench_pool(args, device) -> list[dict]:
    """Section 5: LoadGen Offline on one device, plain SUT beside the one-worker pool."""
    from ssdbench.loadgen import settings as S
    from ssdbench.loadgen.run import run_loadgen

    one = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu:1"
    quick = args.quick
    rows = []
    for label, devices in (("plain", None), ("pool", one)):
        keys = {"model": args.infer_model, "backend": "eager", "dtype": args.infer_dtype,
                "channels_last": device.type == "cuda", "device": str(device), "devices": devices,
                "count": 8 if quick else 64, "max_batch_size": 2 if quick else 32, "warmup": 1 if quick else 3,
                "min_duration": 500 if quick else 10000, "min_query_count": 16 if quick else 1024,
                "target_qps": 50 if quick else 1500, "threads": 2}  # fmt: skip
        settings = S.resolve("Offline", "performance", "cpu", None, keys)
        t0 = time.perf_counter()
        run = run_loadgen(settings, Path(args.out) / f"pool-{label}", progress=False, verbose=False)
        rows.append({"section": "pool", "sut": label, "devices": devices or str(device), "result": run.result,
                     "samples_s": run.summary.metrics.get("Samples per second"),
                     "wall_s": time.perf_counter() - t0})  # fmt: skip
    plain, pool = (r["samples_s"] for r in rows)
    rows[1]["of_plain"] = pool / plain if plain and pool else None
    return rows


def _fake_ground_truth(n: int) -> dict:
    rng = np.random.default_rng(0)
    anns = [{"id": k + 1, "image_id": k % n + 1, "category_id": int(rng.integers(1, 6)), "iscrowd": 0,
             "bbox": [float(v) for v in (*rng.random(2) * 400, *(20 + rng.random(2) * 200))], "area": 1000.0}
            for k in range(3 * n)]
    return {"images": [{"id": i + 1, "width": 640, "height": 480} for i in range(n)], "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in range(1, 6)]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny counts and ssd128_mini (CPU smoke run)")
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--data", help="synthetic COCO folder (default: generated under --out)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile on CPU")
    p.add_argument("--sections", nargs="+", default=["train", "pipeline", "infer", "eval", "pool"])
    p.add_argument("--workers", type=int, default=12)
    args = p.parse_args(argv)
    quick = args.quick
    args.train_model = "ssd128_mini" if quick else "ssd300_r34"
    args.infer_model = "ssd128_mini" if quick else "ssd1200_r34"
    args.train_batch = 4 if quick else 128
    args.infer_batches = [1, 2] if quick else [1, 8, 32, 64, 128]
    args.infer_dtype = "fp32" if quick and args.device == "cpu" else "bf16"
    args.warmup, args.iters, args.latency_iters = (1, 3, 10) if quick else (10, 30, 500)
    args.synth_images = 24 if quick else 2048
    args.eval_images, args.eval_batch = (64, 32) if quick else (4952, 256)
    args.workers = min(args.workers, 1) if quick else args.workers
    return args


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        keys = [k for k in r if k not in ("section",)]
        vals = [f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys]
        lines.append(f"{r['section']:<13} " + " ".join(vals))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu --quick")
    torch.backends.cudnn.benchmark = True
    rows = []
    for section in args.sections:
        fn = {"train": bench_train, "pipeline": bench_pipeline, "infer": bench_infer, "eval": bench_eval,
              "pool": bench_pool}[section]
        out = fn(args, device)
        rows.extend(out if isinstance(out, list) else [out])
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"),
           "quick": args.quick, "peak_flops": PEAK_FLOPS, "python": platform.python_version()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    bad = [r for r in rows if r.get("correct") is False]
    print(f"\n{env}\n" + table(rows))
    if bad:
        raise SystemExit(f"{len(bad)} variant(s) failed the correctness check (see 'correct' above)")


if __name__ == "__main__":
    main()
