"""One SSD-Large test under MLPerf LoadGen (the library side of `ssdbench loadgen`).

Wires the parts: resolved settings (`settings`), the QSL over COCO val (`qsl`), the
dynamic-batching SUT (`sut`) around a backend (`ssdbench.infer.backends`), LoadGen itself, the
report (`report`) and, in accuracy mode, the score of ``mlperf_log_accuracy.json`` (`accuracy`).
Files appear in ``--out`` only for a trustworthy run (`staging`): one that completed, answered
every query exactly once and had no SUT or QSL error.

LoadGen gets its settings on ``TestSettings`` directly (`apply`) and an explicit audit.config
path: the test's own for a compliance run (`ssdbench.loadgen.compliance`), else a path that does
not exist, so an ``audit.config`` lying in the working directory is never read (it is reported
before the run). Afterwards the detail log must show the ``effective_*`` values that were set and
no error; otherwise the run is INVALID (report.md says why).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ssdbench.dist import pick_device
from ssdbench.errors import CliError
from ssdbench.infer.backends import BackendOptions, make_backend
from ssdbench.loadgen import apply
from ssdbench.loadgen import settings as S
from ssdbench.loadgen import staging as run_folder
from ssdbench.loadgen.accuracy import accuracy_text, open_val_dataset
from ssdbench.loadgen.detail_log import read_detail_log
from ssdbench.loadgen.device_report import write_device_report
from ssdbench.loadgen.devices import describe_devices, pool_devices
from ssdbench.loadgen.official import official_line
from ssdbench.loadgen.qsl import DEFAULT_PERFORMANCE_COUNT, SampleLibrary
from ssdbench.loadgen.report import Checks, Summary, short_text, write_report
from ssdbench.loadgen.rounds import get_round
from ssdbench.loadgen.rules import run_rule_violations
from ssdbench.loadgen.sut import BatchingSUT, HostToDevice, check_detections
from ssdbench.loadgen.timeline import trace_enabled
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


def backend_arguments(sut: S.SutSettings, weights, num_classes: int, device: torch.device, model_file=None,
                      allow_pickle: bool = False) -> dict:  # fmt: skip
    """`make_backend` keyword arguments of the SUT's backend (plain values: they also go to instances)."""
    options = BackendOptions(device=str(device), dtype=sut.dtype, channels_last=sut.channels_last,
                             space_to_depth=sut.space_to_depth)
    return {"name": sut.backend, "model_name": sut.model, "options": options,
            "weights": None if weights is None else str(weights),
            "num_classes": None if weights or model_file else num_classes,
            "model_file": None if model_file is None else str(model_file), "allow_pickle": allow_pickle}  # fmt: skip


def build_predict(sut: S.SutSettings, weights, num_classes: int, device: torch.device,
                  allow_pickle: bool = False, model_file=None, devices_source: str = "flags"):  # fmt: skip
    """The backend's ``predict`` for the SUT (`PaddedDetections`, benchmark.md §4 post-processing);
    with a device pool (``devices`` or ``instances > 1``) an `InstancePool` (``close`` it afterwards)."""
    kwargs = backend_arguments(sut, weights, num_classes, device, model_file, allow_pickle)
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
        from ssdbench.loadgen.instances import InstancePool

        warmup = [(n, sut.warmup) for n in warmup_sizes(sut)]
        return InstancePool(kwargs, devices=devices, warmup=warmup, buckets=sut.max_batch_size,
                            timeout_s=sut.predict_timeout_s)  # fmt: skip
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


def run_loadgen(run_settings: S.RunSettings, out: str | Path, data=None, weights=None, predict=None,
                cache: bool = True, progress: bool = True, verbose: bool = True,
                eval_backend: str = "faster", allow_pickle: bool = False, audit_test: str | None = None,
                command: str | None = None, model_file=None) -> LoadgenRun:  # fmt: skip
    """One LoadGen test; ``predict`` replaces the backend (same contract as `Backend.predict`).

    ``model_file`` (an .onnx, an OpenVINO IR or a ``ssdbench quantize`` folder) is run by the
    onnxruntime / openvino backends instead of exporting ``weights``.

    ``audit_test``: run as that compliance test of the round (TEST01, TEST04-A, TEST04-B, TEST05):
    its audit.config is written into the run folder and given to LoadGen. ``command``: the command
    line, recorded in settings.json. Everything that can fail on bad input (dataset, device,
    weights, a sample that does not decode) fails before LoadGen starts and before anything is
    written to ``out``.
    """
    sut_settings, out = run_settings.sut, Path(out)
    report_stray_audit_config()
    dataset = open_val_dataset(data)
    device = _device(run_settings)
    pool = None
    if predict is None:
        predict = build_predict(sut_settings, weights, dataset.num_classes, device, allow_pickle, model_file,
                                run_settings.sources.get("devices", "flags"))
        if hasattr(predict, "close"):
            pool, predict = predict, predict.predict
    try:
        return _prepare_and_test(run_settings, out, dataset, device, predict, pool, weights, cache, progress,
                                 verbose, eval_backend, audit_test, command, model_file)
    finally:
        if pool is not None:
            pool.close()


def _prepare_and_test(run_settings, out, dataset, device, predict, pool, weights, cache, progress, verbose,
                      eval_backend, audit_test, command, model_file) -> LoadgenRun:  # fmt: skip
    """The QSL, warm-up, test and publication of `run_loadgen` once the backend exists."""
    sut_settings = run_settings.sut
    qsl = SampleLibrary(dataset, get_spec(sut_settings.model).input_size, sut_settings.count,
                        run_settings.loadgen.get("performance_sample_count_override") or DEFAULT_PERFORMANCE_COUNT,
                        cache=cache, progress=progress)  # fmt: skip
    run_settings = _cap_count(run_settings, qsl.count)
    audit = apply.audit_values(get_round(run_settings.round), audit_test, run_settings.scenario)
    apply.check_settings(run_settings, qsl.performance_count, audit)
    qsl.prepare()
    store = _share_samples(qsl, pool)
    try:
        return _warm_and_test(run_settings, out, qsl, device, predict, pool, weights, progress, verbose,
                              eval_backend, audit, audit_test, command, model_file)
    finally:
        if store is not None:
            store.close()


def _share_samples(qsl: SampleLibrary, pool):
    """With a pool: the QSL's loaded set as uint8 in shared memory, read by the workers by index."""
    if pool is None:
        return None
    from ssdbench.loadgen.shared_samples import SharedSamples

    store = SharedSamples(qsl.performance_count, qsl.sample_shape)
    qsl.use_store(store)
    pool.use_store(store)
    return store


def _warm_and_test(run_settings, out, qsl, device, predict, pool, weights, progress, verbose, eval_backend,
                   audit, audit_test, command, model_file) -> LoadgenRun:  # fmt: skip
    """Warm-up, the test in a staging folder and its publication (or RUN_FAILED.txt)."""
    sut_settings = run_settings.sut
    if pool is None:  # instances warm themselves up
        warm_up(predict, qsl.sample_shape, sut_settings.max_batch_size, sut_settings.warmup, device,
                sut_settings.predict_timeout_s, warmup_sizes(sut_settings))
    backend = getattr(predict, "__self__", None)  # a Backend's bound predict: record what it resolved to
    staging = run_folder.make_staging(out)
    try:
        extra = {"weights": str(weights), "eval_backend": eval_backend, "audit_test": audit_test,
                 "audit": audit, "command": command,
                 "backend_info": {"model_file": None if model_file is None else str(model_file),
                                  "instances": pool.describe if pool is not None else None,
                                  "pool_devices": describe_devices(pool.devices if pool else None, str(device)),
                                  "backend_config": backend.describe() if pool is None and hasattr(backend, "describe")
                                  else None}}  # fmt: skip
        sut, summary, score, checks = _test(run_settings, predict, qsl, device, staging, extra, pool)
    except BaseException as exc:
        failed = run_folder.fail(staging, out, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, RunFailed):
            raise RunFailed(f"{exc} (logs moved to {failed}, not results)") from None
        raise
    run_folder.publish(staging, out)
    if verbose:
        print(short_text(summary))
        if line := official_line(out, run_settings.scenario, run_settings.round, run_settings.mode):
            print(line)
        if score is not None:
            print((out / "accuracy.txt").read_text(), end="")
        print(f"logs and report: {out}")
    if verbose and checks.peak_qps is not None:
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
    """The SUT's torch device (auto: the CPU for openvino); an error names ``--device`` or the file /
    preset that chose it."""
    source = run_settings.sources.get("device", "flags")
    flag = "--device" if source == "flags" else f"device (from {source})"
    if run_settings.sut.backend == "openvino" and run_settings.sut.device in (None, "auto"):
        return torch.device("cpu")  # OpenVINO runs on the CPU only
    return pick_device(run_settings.sut.device, flag=flag)


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


def _test(run_settings: S.RunSettings, predict, qsl: SampleLibrary, device: torch.device, staging: Path,
          extra: dict, pool=None) -> tuple[BatchingSUT, Summary, float | None, Checks]:  # fmt: skip
    """Settings files, the LoadGen test, its checks, the report and (accuracy mode) the score, all
    in ``staging``; raises RunFailed when the results cannot be trusted."""
    rnd, audit = get_round(run_settings.round), extra["audit"]
    ts = apply.make_test_settings(run_settings, qsl.performance_count, audit)
    apply.write_conf(run_settings, str(staging / "settings.conf"))
    audit_path = _write_audit(staging, audit, extra["audit_test"])
    info = {**run_settings.to_json(), "data": str(qsl.dataset.root), "weights": extra["weights"],
            "device": str(device), "qsl_count": qsl.count, "audit_test": extra["audit_test"],
            "command": extra["command"], **extra.get("backend_info", {})}  # fmt: skip
    (staging / "settings.json").write_text(json.dumps(info, indent=2) + "\n")
    sut_settings = run_settings.sut
    # Every instance gets a batch in flight: at least one worker thread per instance.
    workers = len(pool.devices) if pool is not None else 1
    per_device = pool is not None and run_settings.scenario == "Server"  # a batcher per device, least loaded
    if per_device:
        pool.dispatch_least_loaded()
    sut = BatchingSUT(predict, qsl, sut_settings.max_batch_size, sut_settings.batch_timeout_us,
                      max(sut_settings.threads, workers), device, sut_settings.predict_timeout_s,
                      max_queue_wait(run_settings), predict_samples=pool.predict_samples if pool is not None else None,
                      batchers=workers if per_device else 1)  # fmt: skip
    if pool is not None:
        pool.reset_stats()  # warm-up is not part of the devices' record
    _run_loadgen_test(sut, qsl, ts, staging, audit_path)
    _check_run(sut, qsl, staging)
    checks = _detail_checks(staging, apply.expected_effective(run_settings, qsl.performance_count, audit),
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
    score = _score_accuracy(staging, qsl.dataset, extra["eval_backend"]) if accuracy else None
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
    """latency_timeline.png, throughput_timeline.png and their report.md section (`loadgen.timeline_report`)."""
    from ssdbench.loadgen.timeline_report import write_timeline

    lines = write_timeline(staging, scenario, sut, title)
    if lines:
        with (staging / "report.md").open("a") as report:
            report.write("\n".join(lines) + "\n")


def _write_audit(staging: Path, audit: dict, test: str | None) -> Path:
    """The audit.config LoadGen is given: the test's keys, or a path that does not exist."""
    if not test:
        return staging / "no-audit.config"
    path = staging / "audit.config"
    lines = [f"# {test}: audit settings of the round for ssd-resnet34 (ssdbench/configs/rounds.json)"]
    lines += [f"*.*.{key} = {value}" for key, value in audit.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _detail_checks(staging: Path, expected: dict, rnd, run_settings: S.RunSettings) -> Checks:
    """What the detail log says: errors, warnings, settings that did not take effect, round rules."""
    detail = read_detail_log(staging / "mlperf_log_detail.txt")
    seeds = {key: expected[f"effective_{key}"] for key in rnd.seeds}  # the round's, or TEST05's
    rules = run_rule_violations(detail, rnd, run_settings.scenario, accuracy=run_settings.mode == "accuracy",
                                seeds=seeds)  # fmt: skip
    return Checks(errors=detail.errors, warnings=detail.warnings,
                  not_applied=apply.effective_mismatches(expected, detail), round=rnd.name,
                  round_violations=[str(v) for v in rules], peak_qps=detail.peak_qps)  # fmt: skip


def _run_loadgen_test(sut: BatchingSUT, qsl: SampleLibrary, test_settings, staging: Path,
                      audit_path: Path) -> None:  # fmt: skip
    """LoadGen's test with its logs in ``staging`` and ``audit_path`` as its audit.config; the
    SUT's workers are stopped afterwards."""
    import mlperf_loadgen as lg

    log = lg.LogSettings()
    log.log_output.outdir = str(staging)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = trace_enabled()  # SSDBENCH_LOADGEN_TRACE=1 (`loadgen.timeline`)
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
    (folder / "accuracy.txt").write_text(text)
    return value
