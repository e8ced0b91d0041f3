"""Weight files that do not fit (docs/robustness.md, "Weights"): a checkpoint of another model is
refused naming both models even where the shapes fit; random bytes, an empty file, a truncated zip
archive and a plain pickle get one line naming the file and what it is not, in every command that
reads weights; `--allow-pickle` exists wherever a message suggests it."""

from __future__ import annotations

import importlib
import pickle

import pytest
import torch
from data_fixtures import synthetic_coco

from ssdbench import cli
from ssdbench.model.specs import get_spec
from ssdbench.model.ssd import SSD, build_model
from ssdbench.model.weights import PICKLE_HINT, WeightsError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weight files: a mini checkpoint, its truncation, random bytes, an empty file, a plain pickle."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    mini = SSD(get_spec("ssd128_mini", num_classes=10))
    torch.save({"model": mini.state_dict(), "config": {"model": "ssd128_mini"}}, root / "mini.pt")
    data = (root / "mini.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                                   dtype=torch.uint8).numpy().tobytes())
    (root / "empty.pt").write_bytes(b"")
    (root / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    synthetic_coco(root / "coco", train=0, val=2)  # for the commands that open a dataset first
    return root


UNREADABLE = {
    "random.pt": "not a PyTorch weight file: neither a zip archive nor a pickle",
    "empty.pt": "empty file, not a PyTorch weight file",
    "truncated.pt": "damaged PyTorch zip archive, truncated or corrupted (PytorchStreamReader failed reading zip "
                    "archive: failed finding central directory)",
    "plain.pkl": "not a PyTorch weight file: a pickle torch cannot read",
}


def test_checkpoint_of_another_model_is_refused_where_shapes_fit(tmp_path):
    """SSD300 and SSD1200 share every parameter shape: only the recorded name tells them apart."""
    ssd300 = SSD(get_spec("ssd300_r34"))
    path = tmp_path / "ssd300.pt"
    torch.save({"model": ssd300.state_dict(), "config": {"model": "ssd300_r34"}}, path)
    with pytest.raises(WeightsError, match=rf"^{path} is a checkpoint of model ssd300_r34, not ssd1200_r34 "
                                           r"\(leave --model out, or pass --model ssd300_r34\)$"):
        build_model("ssd1200_r34", weights=path)
    torch.save(ssd300.state_dict(), tmp_path / "bare.pt")  # records no model: the shapes decide
    build_model("ssd1200_r34", weights=tmp_path / "bare.pt")


def test_eval_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    root = synthetic_coco(tmp_path / "coco", train=0, val=2)
    path = tmp_path / "ssd300.pt"
    torch.save({"model": SSD(get_spec("ssd300_r34", num_classes=10)).state_dict(), "config": {"model": "ssd300_r34"}},
               path)
    assert cli.main(["eval", "--model", "ssd1200_r34", "--weights", str(path), "--data", str(root),
                     "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ssdbench eval: error: {path} is a checkpoint of model ssd300_r34, not ssd1200_r34 "
                   "(leave --model out, or pass --model ssd300_r34)")
    assert not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("name", sorted(UNREADABLE))
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_unreadable_files_name_the_file_and_what_it_is_not(files, name, allow_pickle):
    with pytest.raises(WeightsError) as err:
        build_model("ssd128_mini", weights=files / name, allow_pickle=allow_pickle)
    message = str(err.value)
    assert message.startswith(f"{files / name}: {UNREADABLE[name]}") and "\n" not in message, message


COMMANDS = {
    "eval": ["eval", "--weights", "{w}", "--data", "{data}", "--device", "cpu", "--workers", "0",
             "--out", "{tmp}/d.json"],
    "predict": ["predict", "{img}", "--weights", "{w}", "--out", "{tmp}/p"],
    "export": ["export", "onnx", "--weights", "{w}", "--out", "{tmp}/m.onnx"],
    "loadgen": ["loadgen", "--scenario", "Offline", "--weights", "{w}", "--data", "{data}", "--out", "{tmp}/lg",
                "--device", "cpu"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", ["random.pt", "truncated.pt"])
def test_every_command_gives_one_line(files, tmp_path, command, name, capsys):
    from data_fixtures import write_image

    img = write_image(tmp_path / "x.jpg", 40, 30)
    argv = [a.format(w=files / name, tmp=tmp_path, img=img, data=files / "coco") for a in COMMANDS[command]]
    assert cli.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith(f"ssdbench {argv[0]}: error: {files / name}: {UNREADABLE[name][:30]}"), err
    assert not any("Traceback" in ln for ln in err)


@pytest.mark.parametrize("command", ["eval", "predict", "export", "loadgen", "train"])
def test_allow_pickle_exists_where_the_message_suggests_it(command):
    """Every command that reads weight files accepts the flag PICKLE_HINT names."""
    assert "--allow-pickle" in PICKLE_HINT
    module = importlib.import_module(cli.COMMANDS[command][0])
    parser = cli.Parser(prog=command)
    module.add_arguments(parser)
    assert any("--allow-pickle" in a.option_strings for a in parser._actions)


def test_train_backbone_pickle_needs_the_flag(tmp_path, capsys):
    """A backbone file holding pickled objects is refused with the hint, and the hinted flag is
    accepted by train (the run is stopped at --print-config: parsing and config only)."""
    import argparse

    from ssdbench.model.weights import load_backbone

    path = tmp_path / "backbone.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match=r"argparse.Namespace.*--allow-pickle"):
        load_backbone(build_model("ssd128_mini"), path)
    assert cli.main(["train", "--allow-pickle", "--backbone-weights", str(path), "--print-config"]) == 0
    assert "allow_pickle           = True" in capsys.readouterr().out
