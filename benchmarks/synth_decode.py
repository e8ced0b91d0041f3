"""Synthetic-dataset generation speed and JPEG decode speed per decoder.

    python benchmarks/synth_decode.py [--images 120] [--repeats 3] [--out benchmarks/out/]

Generation: images/s of ``make_synthetic_coco`` (draw + JPEG encode + JSON) with 1 and 2 worker
processes. Decode: images/s of ``decode_image`` on one core for each available decoder, on the
COCO-size JPEGs just generated. Warm-up first, then the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ssdbench.data.decode import available_decoders, decode_image
from ssdbench.data.synth import make_synthetic_coco


def measure(fn, count: int, repeats: int) -> tuple[float, float]:
    """Median (images/s wall, CPU ms per image in this process) of ``fn()`` over ``count`` images.

    CPU time is meaningful for in-process work (1 process) and robust to a busy machine.
    """
    rates, cpu = [], []
    for r in range(repeats + 1):  # run 0 is the warm-up
        start, cpu0 = time.perf_counter(), time.process_time()
        fn(r)
        if r:
            rates.append(count / (time.perf_counter() - start))
            cpu.append((time.process_time() - cpu0) / count * 1e3)
    return statistics.median(rates), statistics.median(cpu)


def time_synth(images: int, workers: int, repeats: int, tmp: Path) -> tuple[float, float]:
    def run(r):
        out = make_synthetic_coco(tmp / f"synth-{workers}-{r}", images, 0, workers=workers, progress=False)
        shutil.rmtree(out)
    return measure(run, images, repeats)


def time_decode(blobs: list[bytes], decoder: str, repeats: int) -> tuple[float, float]:
    def run(_):
        for blob in blobs:
            decode_image(blob, decoder)
    return measure(run, len(blobs), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/out/")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            rows.append(("synth (draw+encode)", f"{workers} proc",
                         *time_synth(args.images, workers, args.repeats, Path(tmp))))
        data = make_synthetic_coco(Path(tmp) / "jpegs", args.images, 0, workers=2, progress=False)
        blobs = [p.read_bytes() for p in sorted((data / "train2017").iterdir())]
        for decoder in available_decoders():
            rows.append(("decode COCO-size JPEG", decoder, *time_decode(blobs, decoder, args.repeats)))
    print(f"{'what':24s} {'variant':12s} {'images/s':>10s} {'CPU ms/img':>11s}")
    for what, variant, rate, cpu in rows:
        cpu_text = f"{cpu:11.2f}" if variant != "2 proc" else f"{'(workers)':>11s}"
        print(f"{what:24s} {variant:12s} {rate:10.1f} {cpu_text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/synth_decode.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items()), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "results": [{"what": w, "variant": v, "images_per_s": r, "cpu_ms_per_image": c}
                    for w, v, r, c in rows]}
    (out / "synth_decode.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
