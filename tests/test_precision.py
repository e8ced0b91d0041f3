"""ssdbench.precision: native bf16 detection from CPU flags, the auto precision per device."""

import pytest
import torch

from ssdbench import precision as P

FLAGS = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f {extra}\nbugs\t\t: none\n"


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("SSDBENCH_CPU_BF16", raising=False)


@pytest.mark.parametrize("extra, native", [("amx_bf16 amx_tile", True), ("avx512_bf16", True),
                                           ("avx512_vnni", False), ("", False)])
def test_native_bf16_from_cpuinfo_flags(tmp_path, extra, native):
    """AMX-BF16 or AVX512-BF16 in the flags -> native; without them not."""
    info = tmp_path / "cpuinfo"
    info.write_text(FLAGS.format(extra=extra))
    assert P.cpu_flags(str(info)) >= {"fpu", "avx512f", *extra.split()}
    assert P.native_cpu_bf16(str(info)) is native


def test_only_the_flags_decide(tmp_path, monkeypatch):
    """torch's CPU capability names the vector ISA only ("AVX512", "AVX2", "DEFAULT"): whatever it
    says, a machine without the flags (here: without /proc/cpuinfo) is not native bf16."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AMX_BF16")
    assert P.native_cpu_bf16(str(tmp_path / "missing-cpuinfo")) is False
    assert P.cpu_flags(str(tmp_path / "missing-cpuinfo")) == set()


def test_auto_precision_per_device(monkeypatch):
    monkeypatch.setenv("SSDBENCH_CPU_BF16", "1")
    assert P.default_precision("cpu") == "bf16" and P.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv("SSDBENCH_CPU_BF16", "0")
    assert P.default_precision("cpu") == "fp32" and P.resolve_precision(None, "cpu") == "fp32"
    assert P.default_precision("cuda") == "bf16"  # every GPU the presets target has bf16
    assert P.resolve_precision("fp16", "cpu") == "fp16"  # explicit choices pass through
    with pytest.raises(ValueError, match="unknown dtype .*'int4'"):
        P.resolve_precision("int4", "cpu")


def test_this_machine_agrees_with_its_flags():
    flags = P.cpu_flags()
    if flags & {"amx_bf16", "avx512_bf16"}:
        assert P.native_cpu_bf16()
