"""`ssdbench loadgen --scenario S --mode performance|accuracy`: SSD-Large under MLPerf LoadGen.

Flags become setting keys (`ssdbench.loadgen.settings`), resolved once by
`ssdbench.loadgen.run.resolve_run`; the run itself is `ssdbench.loadgen.run.run_loadgen`.
"""

from __future__ import annotations

import shlex

from ssdbench.checks import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Range,
    output_folder,
    usable_cores,
)
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.run import RunInputs, resolve_run, run_loadgen
from ssdbench.loadgen.settings import DEFAULT_ROUND, ROUNDS

EPILOG = """examples:
  ssdbench loadgen --scenario Offline --mode performance --preset cpu --out runs/lg_offline
  ssdbench loadgen --scenario Server --preset gpu_h100 --weights resnet34-ssd1200.pt --data /coco
  ssdbench loadgen --scenario SingleStream --mode accuracy --preset cpu --weights demo.pt
  ssdbench loadgen --preset tpu_v3_1x_server --device cuda --min-duration 60    # seed settings
  ssdbench loadgen --scenario Server --user-conf user.conf --qps 250 --latency 100
  ssdbench loadgen --scenario Offline --round v1.1 --preset cpu      # v1.1's seeds and rules
  ssdbench loadgen --scenario Server --preset cpu --latency 100 --qps 10 --find-peak   # highest VALID qps
  ssdbench loadgen --scenario Offline --preset cpu --model ssd1200_r34 --backend openvino --model-file q_ov
  ssdbench loadgen --scenario Offline --preset cpu --model ssd1200_r34 --backend compile --instances 2
  ssdbench loadgen --scenario Offline --preset gpu_h100_8x --devices cuda:all --weights resnet34-ssd1200.pt
  ssdbench loadgen --scenario Offline --backend onnxruntime --model-file resnet34-ssd1200.onnx --data /coco
precedence: --round (its mlperf.conf values) < built-in ssd-resnet34.conf < --preset < --user-conf < flags;
the seeds are always the round's (LoadGen 6.x ignores seed keys in a user conf, so they are refused)
exit status: 0 VALID (accuracy run: scored), 1 INVALID, 2 error
"""


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--scenario", default=None, help=f"one of {', '.join(S.SCENARIOS)} (default: the preset's)")
    a("--mode", default="performance", help=f"one of {', '.join(S.MODES)}")
    a("--find-peak", action="store_true", help="Server: LoadGen's FindPeakPerformance mode, the highest VALID "
      "target_qps from --qps up (same as --mode find-peak)")  # fmt: skip
    a("--round", default=DEFAULT_ROUND, choices=ROUNDS,
      help=f"MLPerf Inference round whose ssd-resnet34 seeds and rules apply (default {DEFAULT_ROUND})")
    a("--preset", default=None, help="system preset: " + ", ".join(S.load_presets()))
    a("--user-conf", default=None, help="LoadGen-syntax file: ssd-resnet34.<Scenario>.<key> = value")
    a("--data", default=None, help="COCO-format dataset root with val2017 (default: the embedded one)")
    a("--weights", default=None, help="model weights (default: random init, for timing only)")
    a("--model-file", default=None, help="an .onnx, an OpenVINO .xml, a TensorFlow .pb or a `ssdbench quantize` folder "
      "(backend onnxruntime or openvino, from a flag, preset or user conf; not with --weights or "
      "--space-to-depth), e.g. the official resnet34-ssd1200.onnx")
    a("--allow-pickle", action="store_true",
      help="allow pickled whole-model weight files (resnet34-ssd1200.pytorch); trusted files only")
    a("--out", default="runs/loadgen", help="output folder (default runs/loadgen)")
    a("--no-cache", action="store_true", help="do not cache resized samples on disk")
    a("--eval-backend", default="faster", choices=("faster", "pycocotools"), help="COCO eval (accuracy mode)")
    g = parser.add_argument_group("LoadGen settings (override config and preset)")
    g.add_argument("--qps", type=POSITIVE, help="target_qps: Server arrival rate / Offline expected rate")
    g.add_argument("--latency", type=POSITIVE, help="target_latency in ms (Server bound; expected latency "
                   "for SingleStream/MultiStream)")  # fmt: skip
    g.add_argument("--samples-per-query", type=S.LOADGEN_RANGES["samples_per_query"],
                   help=f"MultiStream samples per query (at most {S.MAX_SAMPLES_PER_QUERY})")
    g.add_argument("--min-duration", type=NON_NEGATIVE, help="min_duration in seconds")
    g.add_argument("--min-query-count", type=NON_NEGATIVE_INT, help="min_query_count (Offline: samples)")
    g.add_argument("--performance-sample-count", type=POSITIVE_INT, help="samples resident in performance mode")
    s = parser.add_argument_group("system under test")
    s.add_argument("--count", type=NON_NEGATIVE_INT, help="samples in the QSL (0 = the whole val split)")
    s.add_argument("--max-batch-size", type=S.SUT_RANGES["max_batch_size"], help="dynamic batcher: largest batch "
                   f"(at most {S.MAX_BATCH})")
    s.add_argument("--batch-timeout-us", type=NON_NEGATIVE_INT, help="dynamic batcher: wait for a fuller batch (µs)")
    s.add_argument("--threads", type=S.SUT_RANGES["threads"],
                   help=f"worker threads (batches in flight, at most {S.MAX_THREADS})")
    s.add_argument("--instances", type=Range(int, ge=1, le=usable_cores()),
                   help="model instances, each a process pinned to its own cores (CPU; = --devices cpu:N)")
    s.add_argument("--devices", help="one worker process per device behind one SUT: cuda:0,cuda:1 | "
                   "cuda:all | cpu:N (N CPU workers on their own cores); samples go by index")
    s.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision (auto: bf16 on CPUs with AMX/AVX512-BF16 and on CUDA, else fp32)")
    s.add_argument("--backend", choices=("eager", "compile", "onnxruntime", "openvino"), help="inference backend")
    s.add_argument("--model", help="ssd1200_r34 (SSD-Large), ssd300_r34 or ssd128_mini")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    s.add_argument("--space-to-depth", action="store_true", default=None, help="space-to-depth first conv")
    s.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    s.add_argument("--warmup", type=NON_NEGATIVE_INT, help="untimed warm-up batches")
    s.add_argument("--predict-timeout", type=POSITIVE, metavar="SECONDS",
                   help="end the run with an error when a batch takes longer (default 600)")


def flags_from_args(args) -> dict:
    """Command-line flags -> setting keys (None = not given)."""
    ms = None if args.min_duration is None else round(args.min_duration * 1000)
    return {
        "target_qps": args.qps, "target_latency": args.latency, "samples_per_query": args.samples_per_query,
        "min_duration": ms, "min_query_count": args.min_query_count,
        "performance_sample_count_override": args.performance_sample_count, "count": args.count,
        "max_batch_size": args.max_batch_size, "batch_timeout_us": args.batch_timeout_us,
        "threads": args.threads, "instances": args.instances, "devices": args.devices, "dtype": args.dtype, "backend": args.backend, "model": args.model,
        "device": args.device, "space_to_depth": args.space_to_depth,
        "channels_last": args.channels_last, "warmup": args.warmup,
        "predict_timeout_s": args.predict_timeout,
    }  # fmt: skip


def run(args) -> int:
    output_folder(args.out, "--out")
    inputs = RunInputs(data=args.data, weights=args.weights, model_file=args.model_file,
                       allow_pickle=args.allow_pickle, cache=not args.no_cache, eval_backend=args.eval_backend)
    run_settings = resolve_run(inputs, args.scenario, "find-peak" if args.find_peak else args.mode, args.preset,
                               args.user_conf, flags_from_args(args), args.round)  # fmt: skip
    print("resolved settings (value, source):")
    print("  " + S.format_settings(run_settings).replace("\n", "\n  "))
    command = shlex.join(args.command_line) if hasattr(args, "command_line") else None
    result = run_loadgen(run_settings, args.out, inputs, command=command)
    return 0 if result.result in ("VALID", "ACCURACY-ONLY") else 1
