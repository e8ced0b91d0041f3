"""Synthesize, check and download COCO-format datasets.

Sub-commands:
  synth     write the deterministic synthetic dataset (the embedded default) in COCO layout
  check     validate a COCO-format dataset; exit status 1 when errors are found
  download  fetch COCO 2017 and the ResNet34 backbone (resumable, verified, extracted)
"""

from __future__ import annotations

import argparse

from ssdbench.checks import NON_NEGATIVE_INT, POSITIVE_INT, SEED, output_folder
from ssdbench.errors import CliError

EPILOG = """examples:
  ssdbench data synth --out data/synth --train 2000 --val 250
  ssdbench data check data/synth
  ssdbench data check /coco --split val
  ssdbench data download --dest /coco
  ssdbench data download --dest /coco --only annotations,val --base-url http://mirror.example
  ssdbench data download --dest models --only ssd1200     # official resnet34-ssd1200.pytorch / .onnx
  ssdbench data download --dest models --only ssd1200-tf  # resnet34_tf.22.1.pb + its tf2onnx .onnx
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    synth = sub.add_parser("synth", help="write the synthetic COCO-format dataset")
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--train", type=NON_NEGATIVE_INT, default=2000, help="train images (default 2000)")
    synth.add_argument("--val", type=NON_NEGATIVE_INT, default=250, help="val images (default 250)")
    synth.add_argument("--seed", type=SEED, default=0, help="generator seed (default 0)")
    synth.add_argument("--workers", type=POSITIVE_INT, default=None, help="processes (default: all cores)")
    check = sub.add_parser("check", help="validate a COCO-format dataset")
    check.add_argument("root", help="dataset root (annotations/, train2017/, val2017/)")
    check.add_argument("--split", action="append",
                       help="split to check (repeatable; default: train and val)")
    check.add_argument("--workers", type=POSITIVE_INT, default=None, help="processes (default: all cores)")
    check.add_argument("--no-decode", action="store_true",
                       help="only check that image files exist (fast), do not decode them")
    down = sub.add_parser("download", help="download COCO 2017 and the ResNet34 backbone")
    down.add_argument("--dest", required=True, help="destination folder (the dataset root)")
    down.add_argument("--base-url", default=None,
                      help="replace the official hosts (mirror); paths stay the same")
    down.add_argument("--only", default="annotations,val,train,backbone",
                      help="comma-separated subset of annotations,val,train,backbone,ssd1200,ssd1200-tf (ssd1200: the "
                           "official resnet34-ssd1200.pytorch and .onnx of the MLPerf inference reference; "
                           "ssd1200-tf: its TensorFlow resnet34_tf.22.1.pb and ssd_resnet34_mAP_20.2.onnx)")
    down.add_argument("--sha256", action="append", default=[], metavar="FILE=HEX",
                      help="expected sha256 of a downloaded file by name (repeatable), e.g. for "
                           "resnet34-ssd1200.pytorch, which has no published checksum")
    down.add_argument("--delete-archives", action="store_true", help="delete zips once extracted")


def run(args: argparse.Namespace) -> int:
    return {"synth": run_synth, "check": run_check, "download": run_download}[args.action](args)


def run_synth(args) -> int:
    from ssdbench.data.synth import make_synthetic_coco

    output_folder(args.out, "--out")
    try:
        out = make_synthetic_coco(args.out, args.train, args.val, seed=args.seed, workers=args.workers)
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {args.train} train + {args.val} val images to {out}")
    return 0


def run_check(args) -> int:
    import os

    from ssdbench.data.validate import check_dataset

    if not os.path.isdir(args.root):
        raise FileNotFoundError(f"dataset folder {args.root} not found")
    report = check_dataset(args.root, tuple(args.split or ("train", "val")),
                           workers=args.workers or os.cpu_count() or 1, decode=not args.no_decode)
    print(report.summary())
    return 0 if report.ok else 1


def _with_checksums(pairs: list[str]):
    """The download items with the sha256 values of ``--sha256 FILE=HEX`` set (None when none given)."""
    import dataclasses
    import re

    from ssdbench.data.download import ARTIFACTS

    if not pairs:
        return None
    by_name = {a.name: key for key, a in ARTIFACTS.items()}
    items = dict(ARTIFACTS)
    for pair in pairs:
        name, _, digest = pair.partition("=")
        if name not in by_name or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise CliError(f"--sha256 {pair!r}: expected FILE=HEX with one of {', '.join(by_name)} and 64 hex digits")
        items[by_name[name]] = dataclasses.replace(items[by_name[name]], sha256=digest.lower())
    return items


def run_download(args) -> int:
    from ssdbench.data.download import DownloadError, download_coco

    output_folder(args.dest, "--dest")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    try:
        done = download_coco(args.dest, only, base_url=args.base_url,
                             keep_archives=not args.delete_archives, artifacts=_with_checksums(args.sha256))
    except DownloadError as exc:
        raise CliError(str(exc)) from None
    for key, what in done.items():
        print(f"{key}: {what}")
    return 0
