"""Training config: presets, precedence, validation, resolution per device (the fast path on CUDA)."""

import json

import pytest

from ssdbench.train.config import PRESETS, SYSTEM_WORLD_SIZES, TrainConfig, resolve_config, resolve_for_device


def test_default_preset_depends_on_data():
    assert resolve_config().preset == "demo"
    assert resolve_config(overrides={"data": "/coco"}).preset == "mlperf"


def test_mlperf_recipe_values():
    cfg = resolve_config("mlperf")
    assert (cfg.model, cfg.momentum, cfg.weight_decay) == ("ssd300_r34", 0.9, 5e-4)
    assert cfg.decay_epochs == (40, 50) and cfg.target_map == 0.23
    # benchmark.md §6: lr = 2.5e-3 x global_batch / 32; by hand for 32x1 and 32x8.
    assert cfg.base_lr(1) == pytest.approx(2.5e-3)
    assert cfg.base_lr(8) == pytest.approx(0.02)
    # Eval every 5 epochs up to the reference's cap of 70 epochs (run_and_time.sh NUMEPOCHS).
    assert cfg.epochs == 70 and [e for e in range(1, 71) if cfg.is_eval_epoch(e)] == list(range(5, 71, 5))


def test_v07_eval_schedule_is_an_open_division_option():
    cfg = resolve_config("mlperf", overrides={"eval_epochs": (40, 50, 55), "eval_only_listed": True})
    assert [e for e in range(1, 71) if cfg.is_eval_epoch(e)] == [40, 50, 55, 60, 65, 70]
    assert cfg.own_rules() == ["eval_only_listed"] and cfg.division("coco2017") == "open"


def test_dgxa100_preset_is_the_published_config():
    cfg = resolve_config("dgxa100_x8")
    assert cfg.global_batch(SYSTEM_WORLD_SIZES["dgxa100_x8"]) == 912
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.decay_epochs) == (0.09, 1.3e-4, 650, (44, 55))
    assert cfg.warmup_iters(117266, 912) == 650  # explicit steps win over epochs


def test_system_presets_global_batches_and_allowed_decay():
    batches = {name: resolve_config(name).global_batch(w) for name, w in SYSTEM_WORLD_SIZES.items()}
    assert batches == {"dgxa100_x8": 912, "dgxa100_2x8": 896, "dgx1_x8": 1024, "modelzoo_8gpu": 192}
    assert resolve_config("modelzoo_8gpu").epochs == 65
    for name in set(PRESETS) - {"demo"}:  # closed_ssd.yaml: boundaries are [40, 50] x (1 + k/10)
        b0, b1 = resolve_config(name).decay_epochs
        k0, k1 = 10 * (b0 / 40 - 1), 10 * (b1 / 50 - 1)  # the checker's is_integer: within 1e-5
        assert abs(k0 - round(k0)) < 1e-5 and abs(k1 - round(k1)) < 1e-5


def test_precedence_preset_file_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 7, "weight_decay": 1e-3, "decay_epochs": [3, 4]}))
    cfg = resolve_config("dgxa100_x8", str(path), {"batch_size": 9, "lr": None})
    assert cfg.batch_size == 9  # flag beats file
    assert cfg.weight_decay == 1e-3  # file beats preset
    assert cfg.decay_epochs == (3, 4)  # JSON list -> tuple
    assert cfg.lr == 0.09  # a None flag means "not given"


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config("dgx1_x8", overrides={"seed": 5})
    cfg.save(tmp_path / "config.json")
    again = resolve_config(config_file=str(tmp_path / "config.json"))
    assert again == cfg


@pytest.mark.parametrize("overrides, culprit", [
    ({"precision": "fp8"}, "precision"), ({"batch_size": 0}, "batch_size"),
    ({"decay_epochs": (50, 40)}, "decay_epochs"), ({"model": "yolo"}, "model"),
    ({"bn_sapn": 2}, "bn_sapn"),
])
def test_bad_values_name_the_culprit(overrides, culprit):
    with pytest.raises(ValueError, match=culprit):
        resolve_config("mlperf", overrides=overrides)


def test_bad_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        resolve_config(config_file=str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json"):
        resolve_config(config_file=str(tmp_path / "bad.json"))


def test_division_auto():
    assert TrainConfig(model="ssd300_r34").division("coco2017") == "closed"
    assert TrainConfig(model="ssd300_r34").division("synthetic") == "open"
    assert TrainConfig(model="ssd128_mini").division("coco2017") == "open"


def test_warmup_from_epochs_matches_the_reference_formula():
    cfg = resolve_config("mlperf", overrides={"warmup_epochs": 5.0})
    assert cfg.warmup_steps is None
    assert cfg.warmup_iters(117266, 1024) == 572  # int(5 x 117266 / 1024) = int(572.59)
    assert cfg.warmup_iters(117266, 32) == 18322


def test_closed_division_rejects_zero_warmup():
    import pytest

    with pytest.raises(ValueError, match="closed division needs a warmup"):
        resolve_config("mlperf", overrides={"warmup_steps": 0, "submission_division": "closed"})
    resolve_config("mlperf", overrides={"warmup_steps": 0, "submission_division": "open"})


# ---------------------------------------------------------------- resolution per device
@pytest.mark.parametrize("native_bf16", [False, True])
def test_gpu_presets_resolve_per_device(native_bf16, monkeypatch):
    # precision "auto": bf16 on CPUs with native bf16, fp32 elsewhere; channels_last None: on
    monkeypatch.setenv("SSDBENCH_CPU_BF16", "1" if native_bf16 else "0")
    monkeypatch.setattr("ssdbench.train.config.usable_cores", lambda: 64)  # no workers cap note on a small host
    cpu_precision = ("bf16" if native_bf16 else "fp32", True)
    cfg = resolve_config("dgxa100_x8")
    cuda, note = resolve_for_device(cfg, "cuda")
    assert note is None
    assert (cuda.step, cuda.cuda_graph, cuda.input_pipeline, cuda.precision, cuda.channels_last) == (
        "fast", True, "device", "bf16", True)
    cpu, note = resolve_for_device(cfg, "cpu")
    assert (cpu.step, cpu.cuda_graph, cpu.input_pipeline, cpu.precision, cpu.channels_last) == (
        "plain", False, "cpu", *cpu_precision)
    assert note.count("\n") == 0 and "step=plain" in note
    # the host-dependent choices are visible: the precision the CPU resolved and channels_last
    why = "this CPU computes bf16 natively" if native_bf16 else "no native bf16 here"
    assert note.endswith(f"cuda_graph=False, precision={cpu_precision[0]} (auto: {why}; --precision fp32 "
                         "pins it), channels_last=True")
    pinned, note = resolve_for_device(resolve_config("dgxa100_x8", overrides={"precision": "fp32"}), "cpu")
    assert pinned.precision == "fp32" and "precision" not in note  # given, not chosen: not listed
    assert resolve_for_device(cpu, "cpu") == (cpu, None)  # idempotent, no second note
    demo, note = resolve_for_device(resolve_config("demo"), "cpu")
    assert note is None and (demo.step, demo.input_pipeline) == ("plain", "cpu")
    assert (demo.precision, demo.channels_last) == cpu_precision


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


def test_unknown_device_is_a_one_line_error_naming_the_flag(capsys, monkeypatch):
    from ssdbench.cli import main

    monkeypatch.delenv("SSDBENCH_DEBUG", raising=False)
    assert main(["train", "--device", "tpu0", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--device 'tpu0' is not a device" in err
