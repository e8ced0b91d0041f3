"""One SSD-Large test under MLPerf LoadGen (the library side of `ssdbench loadgen`), and the run
folder it is published in only on success.

Wires the parts: resolved settings (`settings`), the QSL over COCO val (`samples`), the
dynamic-batching SUT (`sut`) around a backend (`ssdbench.infer.backends`) or a device pool
(`device_pool`), LoadGen itself, the report (`report`) and, in accuracy mode, the score of
``mlperf_log_accuracy.json`` (`accuracy`).

LoadGen gets its settings on ``TestSettings`` directly and an explicit audit.config path: the
test's own for a compliance run (`ssdbench.loadgen.compliance`), else a path that does not exist,
so an ``audit.config`` lying in the working directory is never read (it is reported before the
run). Afterwards the detail log must show the ``effective_*`` values that were set and no error;
otherwise the run is INVALID (report.md says why).

The run folder: LoadGen writes into a hidden staging folder ``--out/.incomplete-<pid>-<time>/``
(`make_staging`). A run that completed, answered every query exactly once and had no SUT or QSL
error is published (`publish`): its files move into ``--out`` (result files of an older run there
are removed first, so old and new never mix). A failed run's staging folder is renamed
``failed-<time>/`` with a ``RUN_FAILED.txt`` saying why (`fail`), so its logs can never be taken
for results.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ssdbench.errors import CliError
from ssdbench.infer.backends import BackendOptions, backend_device, make_backend
from ssdbench.io import atomic_write_json, atomic_write_text
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.accuracy import accuracy_text, open_val_dataset
from ssdbench.loadgen.device_pool import describe_devices, pool_devices
from ssdbench.loadgen.report import (
    Checks,
    Summary,
    append_to_report,
    short_text,
    trace_enabled,
    write_device_report,
    write_report,
)
from ssdbench.loadgen.rules import official_line, read_detail_log, run_rule_violations
from ssdbench.loadgen.samples import DEFAULT_PERFORMANCE_COUNT, SampleLibrary
from ssdbench.loadgen.settings import get_round
from ssdbench.loadgen.sut import Batching, BatchingSUT, HostToDevice, check_detections
from ssdbench.model.specs import get_spec

_REPORTED: set[Path] = set()  # stray audit.config files already reported


class RunFailed(CliError):
    """The LoadGen run finished but its results cannot be trusted."""


@dataclass
class LoadgenRun:
    """What a finished run produced."""

    out: Path
    result: str  # VALID / INVALID (LoadGen's verdict)
    summary: Summary
    sut: BatchingSUT
    settings: S.RunSettings
    map: float | None = None  # accuracy mode
    peak_qps: float | None = None  # find-peak mode: the highest VALID Server target_qps


@dataclass(frozen=True)
class RunInputs:
    """What a run reads besides its settings: the dataset, the model and how to prepare and score."""

    data: str | Path | None = None  # COCO-format root with val2017 (None: the embedded dataset)
    weights: str | Path | None = None  # model weights (None: random init, for timing only)
    # An .onnx, an OpenVINO IR or a `ssdbench quantize` folder, run by the onnxruntime / openvino
    # backends instead of exporting ``weights``.
    model_file: str | Path | None = None
    allow_pickle: bool = False  # pickled whole-model weight files (trusted files only)
    predict: Callable | None = None  # replaces the backend (same contract as `Backend.predict`; tests)
    cache: bool = True  # resized samples cached on disk (`samples.SampleLibrary`)
    eval_backend: str = "faster"  # COCO evaluation of an accuracy run


@dataclass(frozen=True)
class _Job:
    """One `run_loadgen` call as its steps pass it on."""

    settings: S.RunSettings
    out: Path
    inputs: RunInputs
    progress: bool
    verbose: bool
    audit_test: str | None
    command: str | None


def resolve_run(inputs: RunInputs, scenario: str | None, mode: str = "performance", preset: str | None = None,
                user_conf: str | None = None, flags: dict | None = None, round: str | None = None) -> S.RunSettings:
    """The settings of one `ssdbench loadgen` run, resolved once (`settings.resolve`).

    Our checkpoints and model files name their network: it decides the model unless ``flags``
    does. With a model file the RESOLVED backend (flag, preset or user conf) must be a file
    runtime, and ``--weights`` and ``--space-to-depth``, which the file would ignore, are refused.
    """
    from ssdbench.model.weights import checkpoint_model_name

    flags = dict(flags or {})
    if inputs.model_file is None:
        flags["model"] = flags.get("model") or checkpoint_model_name(inputs.weights)
    run_settings = S.resolve(scenario, mode, preset, user_conf, flags, round=round)
    if inputs.model_file is None:
        return run_settings
    from ssdbench.infer.backends import model_file_network

    check_model_file(run_settings, inputs, bool(flags.get("space_to_depth")))
    if flags.get("model") is not None:
        return run_settings
    network = model_file_network(inputs.model_file)  # what a `model` flag of that name would resolve to
    return replace(run_settings, sut=replace(run_settings.sut, model=network),
                   sources={**run_settings.sources, "model": "flags"})


def check_model_file(run_settings: S.RunSettings, inputs: RunInputs, space_to_depth_flag: bool) -> None:
    """CliError unless the resolved backend runs model files and no flag the file would ignore is given."""
    backend = run_settings.sut.backend
    if backend not in ("onnxruntime", "openvino"):
        source = run_settings.sources.get("backend", "flags")
        origin = "--backend" if source == "flags" else f"backend from {source}"
        raise CliError(f"--model-file needs --backend onnxruntime or openvino (got {backend}, {origin})")
    ignored = [flag for flag, given in (("--weights", inputs.weights is not None),
                                        ("--space-to-depth", space_to_depth_flag)) if given]  # fmt: skip
    if ignored:
        raise CliError(f"{' and '.join(ignored)} cannot go with --model-file (the file holds the weights "
                       "and decides space-to-depth)")  # fmt: skip


def backend_arguments(sut: S.SutSettings, inputs: RunInputs, num_classes: int, device: torch.device) -> dict:
    """`make_backend` keyword arguments of the SUT's backend (plain values: they also go to instances)."""
    weights, model_file = inputs.weights, inputs.model_file
    options = BackendOptions(device=str(device), dtype=sut.dtype, channels_last=sut.channels_last,
                             space_to_depth=sut.space_to_depth)
    return {"name": sut.backend, "model_name": sut.model, "options": options,
            "weights": None if weights is None else str(weights),
            "num_classes": None if weights or model_file else num_classes,
            "model_file": None if model_file is None else str(model_file), "allow_pickle": inputs.allow_pickle}  # fmt: skip


def build_predict(sut: S.SutSettings, inputs: RunInputs, num_classes: int, device: torch.device,
                  devices_source: str = "flags"):  # fmt: skip
    """The backend's ``predict`` for the SUT (`PaddedDetections`, benchmark.md §4 post-processing);
    with a device pool (``devices`` or ``instances > 1``) an `InstancePool` (``close`` it afterwards)."""
    kwargs = backend_arguments(sut, inputs, num_classes, device)
    try:
        devices = pool_devices(sut.devices, sut.instances)
    except ValueError as exc:
        asked = len(sut.devices.split(","))
        origin = "" if devices_source == "flags" else (f" ({devices_source} is a {asked}-device system: "
                                                       f"devices = {sut.devices}; --devices overrides)")  # fmt: skip
        raise CliError(f"{exc}{origin}") from None
    if devices:
        if sut.instances > 1 and device.type != "cpu":
            raise CliError(f"instances = {sut.instances} is for CPU serving; the device is {device} "
                           "(several GPUs: --devices cuda:0,cuda:1 or cuda:all)")  # fmt: skip
        from ssdbench.loadgen.device_pool import InstancePool, WorkerRecipe

        warmup = tuple((n, sut.warmup) for n in warmup_sizes(sut))
        recipe = WorkerRecipe(kwargs, warmup=warmup, buckets=sut.max_batch_size)
        return InstancePool(recipe, devices=devices, timeout_s=sut.predict_timeout_s)
    backend = make_backend(**kwargs)
    if hasattr(backend, "use_batch_buckets"):  # compile: one graph per bucket, all warmed up
        backend.use_batch_buckets(sut.max_batch_size)
    return backend.predict


def warmup_sizes(sut: S.SutSettings) -> list[int]:
    """Batch sizes to warm up: 1 and the largest; for compile every padding bucket (1, 2, 4, ...)."""
    if sut.backend == "compile":
        return sorted({1, sut.max_batch_size} | {1 << k for k in range(sut.max_batch_size.bit_length())
                                                 if 1 << k < sut.max_batch_size})  # fmt: skip
    return sorted({sut.max_batch_size, 1})


def warm_up(predict, sample_shape, max_batch: int, iterations: int, device: torch.device,
            timeout_s: float | None = None, sizes: list[int] | None = None) -> None:  # fmt: skip
    """Untimed batches of zeros at each of ``sizes`` (default: the largest and the smallest batch
    size) before the test: compile, autotune.

    Each batch runs on a daemon thread; one that takes over ``timeout_s`` raises RunFailed
    (a model that never answers must not hang the command before LoadGen starts).
    """
    feeder = HostToDevice(device, max_batch, sample_shape)
    for n in sizes or sorted({max_batch, 1}):
        for _ in range(iterations):
            _bounded(lambda n=n: _warm_batch(predict, feeder, sample_shape, n), timeout_s,
                     f"warm-up batch of {n}")


def _warm_batch(predict, feeder, sample_shape, n: int) -> None:
    with torch.inference_mode():
        dets = check_detections(predict(feeder([np.zeros(sample_shape, np.float32)] * n)))
    dets.counts.cpu()  # wait for the device


def _bounded(call, timeout_s: float | None, what: str) -> None:
    """``call()`` on a daemon thread; its exception re-raised; RunFailed after ``timeout_s``."""
    if timeout_s is None:
        call()
        return
    failure: list[BaseException] = []

    def target():
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="warm-up", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RunFailed(f"the model gave no answer to a {what} within {timeout_s:g} s "
                        "(predict_timeout_s / --predict-timeout)")
    if failure:
        raise failure[0]


def run_loadgen(run_settings: S.RunSettings, out: str | Path, inputs: RunInputs = RunInputs(),
                progress: bool = True, verbose: bool = True, audit_test: str | None = None,
                command: str | None = None) -> LoadgenRun:  # fmt: skip
    """One LoadGen test of ``inputs`` (`RunInputs`: dataset, model, cache, COCO evaluation).

    ``audit_test``: run as that compliance test of the round (TEST01, TEST04-A, TEST04-B, TEST05):
    its audit.config is written into the run folder and given to LoadGen. ``command``: the command
    line, recorded in settings.json. Everything that can fail on bad input (dataset, device,
    weights, a sample that does not decode) fails before LoadGen starts and before anything is
    written to ``out``.
    """
    job = _Job(run_settings, Path(out), inputs, progress, verbose, audit_test, command)
    report_stray_audit_config()
    dataset = open_val_dataset(inputs.data)
    device = _device(run_settings)
    pool, predict = None, inputs.predict
    if predict is None:
        predict = build_predict(run_settings.sut, inputs, dataset.num_classes, device,
                                run_settings.sources.get("devices", "flags"))
        if hasattr(predict, "close"):
            pool, predict = predict, predict.predict
    try:
        return _prepare_and_test(job, dataset, device, predict, pool)
    finally:
        if pool is not None:
            pool.close()


def _prepare_and_test(job: _Job, dataset, device, predict, pool) -> LoadgenRun:
    """The QSL, warm-up, test and publication of `run_loadgen` once the backend exists."""
    sut_settings = job.settings.sut
    qsl = SampleLibrary(dataset, get_spec(sut_settings.model).input_size, sut_settings.count,
                        job.settings.loadgen.get("performance_sample_count_override") or DEFAULT_PERFORMANCE_COUNT,
                        cache=job.inputs.cache, progress=job.progress)  # fmt: skip
    job = replace(job, settings=_cap_count(job.settings, qsl.count))
    audit = S.audit_values(get_round(job.settings.round), job.audit_test, job.settings.scenario)
    S.check_settings(job.settings, qsl.performance_count, audit)
    qsl.prepare()
    store = _share_samples(qsl, pool)
    try:
        return _warm_and_test(job, qsl, device, predict, pool, audit)
    finally:
        if store is not None:
            store.close()


def _share_samples(qsl: SampleLibrary, pool):
    """With a pool: the QSL's loaded set as uint8 in shared memory, read by the workers by index."""
    if pool is None:
        return None
    from ssdbench.loadgen.samples import SharedSamples

    store = SharedSamples(qsl.performance_count, qsl.sample_shape)
    qsl.use_store(store)
    pool.use_store(store)
    return store


def _warm_and_test(job: _Job, qsl, device, predict, pool, audit: dict) -> LoadgenRun:
    """Warm-up, the test in a staging folder and its publication (or RUN_FAILED.txt)."""
    run_settings, out, inputs = job.settings, job.out, job.inputs
    sut_settings = run_settings.sut
    if pool is None:  # instances warm themselves up
        warm_up(predict, qsl.sample_shape, sut_settings.max_batch_size, sut_settings.warmup, device,
                sut_settings.predict_timeout_s, warmup_sizes(sut_settings))
    backend = getattr(predict, "__self__", None)  # a Backend's bound predict: record what it resolved to
    staging = make_staging(out)
    try:
        backend_info = {"model_file": None if inputs.model_file is None else str(inputs.model_file),
                        "instances": pool.describe if pool is not None else None,
                        "pool_devices": describe_devices(pool.devices if pool else None, str(device)),
                        "backend_config": backend.describe() if pool is None and hasattr(backend, "describe")
                        else None}  # fmt: skip
        sut, summary, score, checks = _test(job, predict, qsl, device, staging, audit, backend_info, pool)
    except BaseException as exc:
        failed = fail(staging, out, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, RunFailed):
            raise RunFailed(f"{exc} (logs moved to {failed}, not results)") from None
        raise
    publish(staging, out)
    if job.verbose:
        print(short_text(summary))
        if line := official_line(out, run_settings.scenario, run_settings.round, run_settings.mode):
            print(line)
        if score is not None:
            print((out / "accuracy.txt").read_text(), end="")
        print(f"logs and report: {out}")
    if job.verbose and checks.peak_qps is not None:
        print(f"FindPeakPerformance: peak target_qps = {checks.peak_qps:g}")
    return LoadgenRun(out, summary.result, summary, sut, run_settings, score, checks.peak_qps)


def _cap_count(run_settings: S.RunSettings, available: int) -> S.RunSettings:
    """The settings with ``count`` capped at the samples the QSL holds (a warning says so), so that
    settings.json records the count that ran, not the one asked for."""
    asked = run_settings.sut.count
    if not asked or asked <= available:
        return run_settings
    source = run_settings.sources.get("count", "flags")
    print(f"warning: count {asked} ({'--count' if source == 'flags' else source}) is more than the dataset's "
          f"{available} images; the QSL holds {available}", file=sys.stderr)  # fmt: skip
    return replace(run_settings, sut=replace(run_settings.sut, count=available))


def _device(run_settings: S.RunSettings) -> torch.device:
    """The SUT's torch device as `backend_device` picks it for the backend (auto: the CPU for
    openvino); an error names ``--device`` or the file / preset that chose it."""
    source = run_settings.sources.get("device", "flags")
    flag = "--device" if source == "flags" else f"device (from {source})"
    return backend_device(run_settings.sut.backend, run_settings.sut.device, flag)


def report_stray_audit_config(cwd: str | Path | None = None) -> Path | None:
    """Warn (stderr) about an ``audit.config`` in the working directory; return its path.

    LoadGen's default is to read ``./audit.config`` silently and let it override the test; ssdbench
    always names the audit file itself, so a stray one has no effect, but it usually means a
    compliance run was set up by hand.
    """
    stray = (Path(cwd or Path.cwd()) / "audit.config").resolve()
    if not stray.is_file():
        return None
    if stray not in _REPORTED:  # once per file and process (a compliance command runs five tests)
        _REPORTED.add(stray)
        print(f"warning: {stray} exists; ssdbench does not let LoadGen read it (compliance tests write "
              "their own: `ssdbench compliance`)", file=sys.stderr)  # fmt: skip
    return stray


def _test(job: _Job, predict, qsl: SampleLibrary, device: torch.device, staging: Path, audit: dict,
          backend_info: dict, pool=None) -> tuple[BatchingSUT, Summary, float | None, Checks]:  # fmt: skip
    """Settings files, the LoadGen test, its checks, the report and (accuracy mode) the score, all
    in ``staging``; raises RunFailed when the results cannot be trusted."""
    run_settings = job.settings
    rnd = get_round(run_settings.round)
    ts = S.make_test_settings(run_settings, qsl.performance_count, audit)
    S.write_conf(run_settings, str(staging / "settings.conf"))
    audit_path = _write_audit(staging, audit, job.audit_test)
    info = {**run_settings.to_json(), "data": str(qsl.dataset.root), "weights": str(job.inputs.weights),
            "device": str(device), "qsl_count": qsl.count, "audit_test": job.audit_test,
            "command": job.command, **backend_info}  # fmt: skip
    atomic_write_json(staging / "settings.json", info)
    sut_settings = run_settings.sut
    # Every instance gets a batch in flight: at least one worker thread per instance.
    workers = len(pool.devices) if pool is not None else 1
    per_device = pool is not None and run_settings.scenario == "Server"  # a batcher per device, least loaded
    if per_device:
        pool.dispatch_least_loaded()
    batching = Batching(sut_settings.max_batch_size, sut_settings.batch_timeout_us, max(sut_settings.threads, workers),
                        sut_settings.predict_timeout_s, max_queue_wait(run_settings),
                        batchers=workers if per_device else 1)  # fmt: skip
    sut = BatchingSUT(predict, qsl, batching, device,
                      predict_samples=pool.predict_samples if pool is not None else None)  # fmt: skip
    if pool is not None:
        pool.reset_stats()  # warm-up is not part of the devices' record
    _run_loadgen_test(sut, qsl, ts, staging, audit_path)
    _check_run(sut, qsl, staging)
    checks = _detail_checks(staging, S.expected_effective(run_settings, qsl.performance_count, audit),
                            rnd, run_settings)  # fmt: skip
    # Offline is one query: its samples' latencies make the histogram; else per query.
    offline = run_settings.scenario == "Offline"
    summary = write_report(staging, info, sut.sample_latencies_ns if offline else sut.query_latencies_ns,
                           sut.batch_sizes, checks)  # fmt: skip
    if run_settings.mode != "accuracy":
        _append_timeline(staging, run_settings.scenario, sut, f"{summary.scenario} {summary.mode}: {summary.result}")
    if pool is not None:
        write_device_report(staging, pool.device_stats(), pool.bytes_per_sample(), run_settings.scenario)
    # Scored before publishing: an accuracy run whose log cannot be scored is no result.
    accuracy = run_settings.mode == "accuracy"
    score = _score_accuracy(staging, qsl.dataset, job.inputs.eval_backend) if accuracy else None
    return sut, summary, score, checks


QUEUE_WAIT_LATENCIES, MIN_QUEUE_WAIT_S = 20, 10.0


def max_queue_wait(run_settings: S.RunSettings) -> float | None:
    """Server: the longest a sample may wait queued before the run fails as overloaded, 20 times
    the latency bound and at least 10 s (such a run is INVALID anyway); None for other scenarios,
    whose queries wait for each other (Offline queues every sample at once by design), and for
    find-peak, whose search needs the overloaded rates' INVALID verdicts."""
    if run_settings.scenario != "Server" or run_settings.mode == "find-peak":
        return None
    latency_ms = run_settings.loadgen.get("target_latency") or 0
    return max(MIN_QUEUE_WAIT_S, QUEUE_WAIT_LATENCIES * latency_ms / 1000)


def _append_timeline(staging: Path, scenario: str, sut, title: str) -> None:
    """latency_timeline.png, throughput_timeline.png and their report.md section (`loadgen.report`)."""
    from ssdbench.loadgen.report import write_timeline

    lines = write_timeline(staging, scenario, sut, title)
    if lines:
        append_to_report(staging, lines)


def _write_audit(staging: Path, audit: dict, test: str | None) -> Path:
    """The audit.config LoadGen is given: the test's keys, or a path that does not exist."""
    if not test:
        return staging / "no-audit.config"
    path = staging / "audit.config"
    lines = [f"# {test}: audit settings of the round for ssd-resnet34 (ssdbench/configs/rounds.json)"]
    lines += [f"*.*.{key} = {value}" for key, value in audit.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _detail_checks(staging: Path, expected: dict, rnd, run_settings: S.RunSettings) -> Checks:
    """What the detail log says: errors, warnings, settings that did not take effect, round rules."""
    detail = read_detail_log(staging / "mlperf_log_detail.txt")
    seeds = {key: expected[f"effective_{key}"] for key in rnd.seeds}  # the round's, or TEST05's
    rules = run_rule_violations(detail, rnd, run_settings.scenario, accuracy=run_settings.mode == "accuracy",
                                seeds=seeds)  # fmt: skip
    return Checks(errors=detail.errors, warnings=detail.warnings,
                  not_applied=S.effective_mismatches(expected, detail), round=rnd.name,
                  round_violations=[str(v) for v in rules], peak_qps=detail.peak_qps)  # fmt: skip


def _run_loadgen_test(sut: BatchingSUT, qsl: SampleLibrary, test_settings, staging: Path,
                      audit_path: Path) -> None:  # fmt: skip
    """LoadGen's test with its logs in ``staging`` and ``audit_path`` as its audit.config; the
    SUT's workers are stopped afterwards."""
    import mlperf_loadgen as lg

    log = lg.LogSettings()
    log.log_output.outdir = str(staging)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = trace_enabled()  # SSDBENCH_LOADGEN_TRACE=1 (`loadgen.report`)
    sut_handle, qsl_handle = sut.construct(), qsl.construct()
    try:
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, test_settings, log, str(audit_path))
    finally:
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)
        sut.stop()


def _check_run(sut: BatchingSUT, qsl: SampleLibrary, staging: Path) -> None:
    if qsl.error is not None:
        raise RunFailed(f"loading a QSL sample failed: {qsl.error}")
    if sut.error is not None:
        raise RunFailed(f"the SUT failed: {type(sut.error).__name__}: {sut.error}")
    if problem := sut.response_problems():
        raise RunFailed(f"response bookkeeping: {problem}")
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        if not (staging / name).is_file():
            raise RunFailed(f"LoadGen wrote no {name}")


def _score_accuracy(folder: Path, dataset, backend: str) -> float:
    """Score the fresh accuracy log; the lines `ssdbench accuracy` prints go to accuracy.txt."""
    value, text = accuracy_text(folder / "mlperf_log_accuracy.json", dataset, backend)
    atomic_write_text(folder / "accuracy.txt", text)
    return value


# Every file a published run may leave in --out (LoadGen's logs, our settings, report and score).
RESULT_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                "mlperf_log_trace.json", "settings.conf", "settings.json", "report.md",
                "latency_histogram.png", "accuracy.txt", "audit.config",
                "latency_timeline.png", "throughput_timeline.png", "device_throughput.png")  # fmt: skip


def make_staging(out: Path) -> Path:
    """A fresh hidden staging folder inside ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".incomplete-{os.getpid()}-{int(time.time())}"
    staging.mkdir()
    return staging


def fail(staging: Path, out: Path, reason: str) -> Path:
    """Rename the staging folder to ``out/failed-<time>/`` with the reason; return its path."""
    atomic_write_text(staging / "RUN_FAILED.txt", f"This run FAILED; its logs are not results.\nreason: {reason}\n")
    failed = out / time.strftime("failed-%Y%m%d-%H%M%S")
    n = 1
    while failed.exists():
        failed, n = out / f"{failed.name.split('.')[0]}.{n}", n + 1
    staging.rename(failed)
    return failed


def publish(staging: Path, out: Path) -> None:
    """Move a successful run's files into ``out``; stale result files of older runs go first."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    trace = staging / "mlperf_log_trace.json"
    if trace.is_file() and trace.stat().st_size == 0:
        trace.unlink()  # tracing is off; LoadGen still creates the empty file
    for path in staging.iterdir():
        shutil.move(str(path), out / path.name)
    staging.rmdir()
