"""Names that become paths (docs/robustness.md, "Names and paths"): --org and --system of
`submission` and `package` are refused up front unless they are safe folder names, and nothing is
written outside --out (the test lists the parent folder before and after)."""

from __future__ import annotations

import json

import pytest
from fault_helpers import cli, error_line, listing

from ssdbench.checks import inside, safe_name
from ssdbench.loadgen.submission import classify

SUBMISSION = ["--division", "closed", "--category", "edge"]


@pytest.fixture
def sandbox(tmp_path):
    """tmp/a/b/c as the working area (escapes of ../../.. land in tmp) and a fake run folder."""
    work = tmp_path / "a" / "b" / "c"
    run = work / "run"
    run.mkdir(parents=True)
    (run / "settings.json").write_text(json.dumps({"scenario": "Offline", "mode": "performance"}))
    return tmp_path, work, run


BAD_NAMES = ["../../escaped_org", "/abs/path", "../../../../../x", "My Org/x", "..", ".", "a\\b"]


@pytest.mark.parametrize("flag", ["--org", "--system"])
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_submission_refuses_unsafe_names_before_writing(capsys, sandbox, flag, bad):
    root, work, run = sandbox
    before = listing(root)
    names = {"--org": "MyOrg", "--system": "cpu1", flag: bad}
    rc, _out, err = cli(capsys, "submission", "--org", names["--org"], "--system", names["--system"], *SUBMISSION,
                        str(run), "--out", str(work / "sub" / "out"), seconds=60)  # fmt: skip
    assert rc == 2
    assert f"{flag} {bad!r}: use 1-100 letters" in error_line(err, "submission")
    assert listing(root) == before  # nothing created anywhere, outside --out or in it


@pytest.mark.parametrize("flag", ["--org", "--system"])
@pytest.mark.parametrize("bad", ["../..", "/abs/path", "My Org/x"])
def test_package_refuses_unsafe_names_before_writing(capsys, sandbox, flag, bad):
    root, work, run = sandbox
    before = listing(root)
    names = {"--org": "MyOrg", "--system": "cpu1", flag: bad}
    rc, _out, err = cli(capsys, "package", "--org", names["--org"], "--system", names["--system"], str(run),
                        "--out", str(work / "sub"), seconds=60)  # fmt: skip
    assert rc == 2 and f"{flag} {bad!r}" in error_line(err, "package")
    assert listing(root) == before


def test_safe_names_are_mlperfs():
    for good in ("NVIDIA", "cTuning", "Dell_EMC", "cpu1", "R750xa_A100-PCIe-80GB_TRT", "a.b+c"):
        assert safe_name(good, "--system") == good
    for bad in BAD_NAMES + ["", "-x", None, 3, "x" * 101]:
        with pytest.raises(ValueError, match="--system"):
            safe_name(bad, "--system")


def test_writes_are_checked_to_stay_inside(tmp_path):
    assert inside(tmp_path / "x" / "y", tmp_path, "--org") == tmp_path / "x" / "y"
    (tmp_path / "link").symlink_to(tmp_path.parent)
    for outside in (tmp_path / ".." / "z", tmp_path / "link" / "z", "/etc/x"):
        with pytest.raises(ValueError, match=r"--org: .* would be written outside"):
            inside(outside, tmp_path, "--org")


@pytest.mark.parametrize("scenario", ["../../Offline", "Offline/x", None])
def test_a_scenario_read_from_a_file_must_be_a_scenario(tmp_path, scenario):
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps({"scenario": scenario, "mode": "performance"}))
    with pytest.raises(Exception, match=r"scenario .* is not one of SingleStream"):
        classify([run])
    (run / "settings.json").write_text(json.dumps({"scenario": "Offline", "mode": "performance"}))
    assert classify([run]) == {"Offline": {"performance": run}}
