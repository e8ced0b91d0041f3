"""Launch recipes: shell syntax, the srun command the batch script builds, the container recipe."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SBATCH = RECIPES / "train.sbatch"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")


@needs_bash
def test_batch_script_syntax():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def _dry_run(env: dict, *args: str) -> tuple[str, list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    proc = subprocess.run(["bash", str(SBATCH), *args], env={**clean, "DRY_RUN": "1", **env},
                          capture_output=True, text=True, check=True)
    rendezvous, command = proc.stdout.strip().splitlines()
    return rendezvous, shlex.split(command)


@needs_bash
def test_single_node_command():
    rendezvous, cmd = _dry_run({"SLURM_JOB_ID": "77", "DATA": "/d/coco", "BACKBONE": "/w/r34.pth"}, "--seed", "3")
    assert rendezvous == "MASTER_ADDR=127.0.0.1 MASTER_PORT=29500"
    assert cmd[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=8", "--cpu-bind=none"]
    train = cmd[cmd.index("python"):]
    assert train == ["python", "-m", "ssdbench", "train", "--preset", "dgxa100_x8", "--data", "/d/coco",
                     "--out", "runs/dgxa100_x8-77", "--backbone-weights", "/w/r34.pth", "--seed", "3"]


@needs_bash
def test_multi_node_command_with_container():
    env = {"PRESET": "dgxa100_2x8", "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "node07,node08",
           "CONTAINER": "ssdbench.sqsh", "OUT": "/runs/x y"}
    rendezvous, cmd = _dry_run(env)
    # Without scontrol the first node of a plain list is the rendezvous host.
    if shutil.which("scontrol") is None:
        assert rendezvous.startswith("MASTER_ADDR=node07 ")
    assert "--container-image=ssdbench.sqsh" in cmd
    assert cmd[cmd.index("--preset") + 1] == "dgxa100_2x8"
    assert cmd[cmd.index("--out") + 1] == "/runs/x y"  # quoting survives


def test_batch_script_presets_exist():
    from ssdbench.train.config import PRESETS

    text = SBATCH.read_text()
    assert "PRESET:-dgxa100_x8" in text and "dgxa100_x8" in PRESETS and "dgxa100_2x8" in PRESETS
    assert "#SBATCH --signal=TERM@" in text and "#SBATCH --requeue" in text


def test_dockerfile_builds_on_cuda_pytorch():
    lines = [line.strip() for line in (RECIPES / "Dockerfile").read_text().splitlines()]
    base = [line for line in lines if line.startswith("FROM ")]
    assert len(base) == 1 and "pytorch" in base[0] and "cuda" in base[0]
    installs = [line for line in lines if line.startswith("RUN pip install")]
    assert len(installs) == 1
    extras = re.findall(r'"\.\[([\w,-]+)\]"', installs[0])
    assert extras, installs[0]  # the image installs the package with an extra ...
    with open(ROOT / "pyproject.toml", "rb") as f:
        defined = tomllib.load(f)["project"]["optional-dependencies"]
    for extra in extras[0].split(","):
        assert extra in defined, f"Dockerfile installs .[{extra}], which pyproject.toml does not define"
    assert "onnxruntime" in installs[0]  # ... that brings ONNX Runtime (checked at build time)
    for copied in ("pyproject.toml", "ssdbench", "recipes", "benchmarks"):
        assert any(line.startswith("COPY") and copied in line for line in lines), copied
