"""Value checks (`ssdbench.checks`): every numeric flag of every command, every numeric training
config key and every LoadGen setting refuses NaN, infinity and out-of-range values, naming the
flag or key (docs/robustness.md, "Values")."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import resource
import subprocess
import sys

import pytest

from ssdbench import cli
from ssdbench.checks import FRACTION, POSITIVE, POSITIVE_INT, Range, check_all
from ssdbench.loadgen import settings as S
from ssdbench.train.config import RANGES, TrainConfig, resolve_config


# ---------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, -1.0, True, "1", None])
def test_positive_refuses(value):
    with pytest.raises(ValueError, match=r"^--qps must be a finite number > 0, got "):
        POSITIVE.check(value, "--qps")


def test_ranges_accept_and_describe():
    assert POSITIVE.check(2, "x") == 2.0 and POSITIVE_INT.check(3.0, "x") == 3
    assert FRACTION.check(1, "x") == 1.0 and Range(float, optional=True).check(None, "x") is None
    assert FRACTION.describe() == "a finite number in [0, 1]"
    assert Range(float, gt=0, le=1e5).describe() == "a finite number in (0, 100000]"
    assert POSITIVE_INT.describe() == "an integer >= 1"
    with pytest.raises(ValueError, match="an integer >= 1, got 2.5"):
        POSITIVE_INT.check(2.5, "n")
    with pytest.raises(ValueError, match="config decay_epochs must be an integer >= 1, got nan"):
        check_all({"decay_epochs": (40, math.nan)}, {"decay_epochs": POSITIVE_INT}, prefix="config ")


# ---------------------------------------------------------------- every flag of every command
def _parser(name: str) -> cli.Parser:
    module = importlib.import_module(cli.COMMANDS[name][0])
    parser = cli.Parser(prog=f"ssdbench {name}")
    module.add_arguments(parser)
    return parser


def _numeric_flags():
    """(command argv prefix, flag, its Range) for every option of every command that takes a number."""
    found = []
    for name in cli.COMMANDS:
        stack = [((name,), _parser(name))]
        while stack:
            prefix, parser = stack.pop()
            for action in parser._actions:
                if action.choices and isinstance(action.choices, dict):  # sub-commands
                    stack += [((*prefix, sub), p) for sub, p in action.choices.items()]
                elif action.option_strings and action.type in (int, float):
                    found.append((prefix, action.option_strings[0], action.type))
                elif action.option_strings and isinstance(action.type, Range):
                    found.append((prefix, action.option_strings[-1], action.type))
    return found


NUMERIC_FLAGS = _numeric_flags()


def test_no_numeric_flag_is_unchecked():
    bare = [f"{' '.join(p)} {flag}" for p, flag, kind in NUMERIC_FLAGS if kind in (int, float)]
    assert not bare, f"flags parsed with bare int/float (NaN and out-of-range pass): {bare}"
    assert len(NUMERIC_FLAGS) >= 45  # train alone has 20; a refactor that loses them shows here


@pytest.mark.parametrize("prefix, flag, rule", NUMERIC_FLAGS, ids=[f"{' '.join(p)} {f}" for p, f, _ in NUMERIC_FLAGS])
@pytest.mark.parametrize("text", ["nan", "inf"])
def test_every_numeric_flag_refuses_nan_and_inf(prefix, flag, rule, text, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*prefix, flag, text])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"ssdbench {' '.join(prefix)}: error: {flag} must be {rule.describe()}, got {text}"


@pytest.mark.parametrize("argv, message", [
    (["loadgen", "--qps", "0"], "--qps must be a finite number > 0, got 0"),
    (["loadgen", "--min-duration", "-1"], "--min-duration must be a finite number >= 0, got -1"),
    (["train", "--batch-size", "0"], "--batch-size must be an integer in [1, 4096], got 0"),
    (["train", "--momentum", "1"], "--momentum must be a finite number in [0, 1), got 1"),
    (["train", "--decay-epochs", "40", "-5"], "--decay-epochs must be an integer >= 1, got -5"),
    (["predict", "x.jpg", "--weights", "w", "--score-threshold", "1.5"],
     "--score-threshold must be a finite number in [0, 1], got 1.5"),
    (["eval", "--weights", "w", "--batch-size", "two"], "--batch-size must be an integer >= 1, got two"),
    (["export", "onnx", "--out", "m.onnx", "--opset", "99"], "--opset must be an integer in [11, 20], got 99"),
])  # fmt: skip
def test_out_of_range_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("qps", ["0", "inf", "nan"])
def test_loadgen_server_qps_fails_at_once_under_a_memory_limit(qps):
    """The issue's case: qps 0 or inf made LoadGen allocate 24 GB, nan hung. Under a 3 GiB
    address-space limit the command must exit 2 naming --qps, within seconds."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run([sys.executable, "-m", "ssdbench", "loadgen", "--scenario", "Server", "--qps", qps,
                           "--preset", "cpu"], check=False, capture_output=True, text=True, timeout=60,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"ssdbench loadgen: error: --qps must be a finite number > 0, got {qps}"


# ---------------------------------------------------------------- output paths
@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["demo", "--out", "{file}/run"], "--out {file}/run: {file} is a file, not a folder"),
    (["predict", "x.jpg", "--weights", "w", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["loadgen", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["data", "synth", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["data", "download", "--dest", "{file}"], "--dest {file} is a file, not a folder"),
    (["eval", "--weights", "w", "--out", "{dir}"], "--out {dir} is a folder, not a file"),
    (["export", "onnx", "--out", "{dir}"], "--out {dir} is a folder, not a file"),
    (["score", "r", "--json", "{dir}"], "--json {dir} is a folder, not a file"),
])  # fmt: skip
def test_output_paths_of_the_wrong_kind(tmp_path, argv, message, capsys):
    file = tmp_path / "afile"
    file.write_text("x")
    names = {"file": file, "dir": tmp_path}
    assert cli.main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: " + message.format(**names)), err


# ---------------------------------------------------------------- config keys
def _numeric_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)
            if any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)]


def test_every_numeric_config_key_has_a_range():
    assert set(_numeric_fields()) == set(RANGES)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_numeric_config_key_refuses_nan(key):
    value = (math.nan,) if isinstance(getattr(TrainConfig(), key), tuple) else math.nan
    with pytest.raises(ValueError, match=rf"^config {key} must be (a finite number|an integer).*, got nan$"):
        resolve_config("demo", overrides={key: value})


def test_config_file_nan_names_the_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"lr": NaN, "epochs": 3}')  # Python's json reads NaN and Infinity
    with pytest.raises(ValueError, match=r"^config lr must be a finite number > 0, got nan$"):
        resolve_config(config_file=str(path))
    path.write_text(json.dumps({"batch_size": True}))
    with pytest.raises(ValueError, match=r"config batch_size must be an integer in \[1, 4096\], got True"):
        resolve_config(config_file=str(path))


# ---------------------------------------------------------------- LoadGen settings keys
@pytest.mark.parametrize("line, message", [
    ("ssd-resnet34.Server.target_qps = nan", "target_qps must be a finite number in (0, 100000], got 'nan'"),
    ("ssd-resnet34.Server.target_qps = inf", "target_qps must be a finite number in (0, 100000], got 'inf'"),
    ("ssd-resnet34.Server.target_qps = 0", "target_qps must be a finite number in (0, 100000], got '0'"),
    ("ssd-resnet34.*.min_duration = nan", "min_duration must be a finite number >= 0, got 'nan'"),
    ("ssd-resnet34.*.min_query_count = 2.5", "min_query_count must be an integer >= 0, got '2.5'"),
    ("ssd-resnet34.*.target_latency_percentile = 100", "target_latency_percentile must be a finite number in (0, 100)"),
    ("ssd-resnet34.*.predict_timeout_s = nan", "predict_timeout_s must be a finite number > 0, got nan"),
])  # fmt: skip
def test_loadgen_conf_values_name_key_and_file(tmp_path, line, message):
    path = tmp_path / "user.conf"
    path.write_text(line + "\n")
    with pytest.raises(ValueError) as err:
        S.resolve("Server", user_conf=str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_binary_user_conf_names_the_file(tmp_path):
    path = tmp_path / "user.conf"
    path.write_bytes(b"\xed\xa0\x80 not text")
    with pytest.raises(ValueError, match=f"^{path}: not a LoadGen config file"):
        S.resolve("Server", user_conf=str(path))


def test_loadgen_flag_values_reach_the_settings():
    run = S.resolve("Server", flags={"target_qps": 25.5, "predict_timeout_s": 30.0})
    assert run.loadgen["target_qps"] == 25.5 and run.sut.predict_timeout_s == 30.0
    assert S.resolve("Offline").sut.predict_timeout_s == 600  # the built-in default: generous
    with pytest.raises(ValueError, match=r"flags: target_qps must be a finite number in \(0, 100000\], got nan"):
        S.resolve("Server", flags={"target_qps": math.nan})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [["eval", "--weights", "w.pt"], ["predict", "x.jpg", "--weights", "w.pt"],
                                  ["train", "--data", "d"]])
def test_cuda_on_a_cpu_machine_names_the_flag(argv, tmp_path, capsys):
    from data_fixtures import write_image

    write_image(tmp_path / "x.jpg", 40, 30)
    argv = [str(tmp_path / a) if a in ("w.pt", "x.jpg", "d") else a for a in argv]
    if argv[0] != "predict":
        (tmp_path / "d").mkdir()
    assert cli.main([*argv, "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("error: --device cuda: CUDA is not available on this machine (use --device cpu)"), err
