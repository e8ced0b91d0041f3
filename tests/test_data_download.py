"""`data download` against a local HTTP server (127.0.0.1) serving small generated archives."""

import hashlib
import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from data_fixtures import tiny_coco

from ssdbench.cli import main
from ssdbench.data.coco import CocoDetection
from ssdbench.data.download import Artifact, download_coco, download_file, sha256_prefix_of_name

QUIET = {"progress": False, "retry_wait": 0.0}


class FileServer:
    """Serves ``files`` {url path: bytes}; supports ``Range: bytes=N-`` unless ``ignore_range``.

    Paths in ``drop_once`` send half of their body and close the connection on the first GET.
    ``log`` records (path, Range header) of every GET.
    """

    def __init__(self, files):
        self.files, self.drop_once, self.ignore_range, self.log = files, set(), False, []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server calls do_<METHOD>
                path, rng = self.path.lstrip("/"), self.headers.get("Range")
                server.log.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    return self.send_error(404)
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and not server.ignore_range else 0
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.drop_once:
                    server.drop_once.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip(folder, arcnames) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in arcnames:
            zf.write(folder / name, name)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    src = tiny_coco(tmp_path / "src", "val")
    images = sorted(p.relative_to(src).as_posix() for p in (src / "val2017").iterdir())
    srv = FileServer({
        "annotations/annotations_trainval2017.zip": _zip(src, ["annotations/instances_val2017.json"]),
        "zips/val2017.zip": _zip(src, images),
        "models/resnet34-333f7ec4.pth": b"not the real weights" * 100,
    })
    yield srv
    srv.close()


@pytest.mark.filterwarnings("ignore:.*non-positive")
def test_full_download_extracts_standard_layout_and_is_idempotent(server, tmp_path):
    dest = tmp_path / "coco"
    done = download_coco(dest, ["annotations", "val"], base_url=server.url, **QUIET)
    assert done == {"annotations": "downloaded, extracted", "val": "downloaded, extracted"}
    assert len(CocoDetection(dest, "val")) == 4  # the reader works on the result
    assert (dest / "val2017.zip").read_bytes() == server.files["zips/val2017.zip"]
    requests = len(server.log)
    again = download_coco(dest, ["annotations", "val"], base_url=server.url, **QUIET)
    assert set(again.values()) == {"already complete"} and len(server.log) == requests


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.drop_once.add("zips/val2017.zip")
    size = len(server.files["zips/val2017.zip"])
    download_coco(tmp_path, ["val"], base_url=server.url, **QUIET)
    assert server.log == [("zips/val2017.zip", None), ("zips/val2017.zip", f"bytes={size // 2}-")]
    assert (tmp_path / "val2017.zip").read_bytes() == server.files["zips/val2017.zip"]
    assert len(list((tmp_path / "val2017").iterdir())) == 5


def test_partial_file_from_an_earlier_run_resumes_or_restarts(server, tmp_path):
    data = server.files["zips/val2017.zip"]
    url, dest = f"{server.url}/zips/val2017.zip", tmp_path / "val2017.zip"
    (tmp_path / "val2017.zip.part").write_bytes(data[:1000])
    download_file(url, dest, **QUIET)
    assert server.log[-1][1] == "bytes=1000-" and dest.read_bytes() == data
    dest.unlink()
    (tmp_path / "val2017.zip.part").write_bytes(b"x" * 1000)  # server ignores Range: restart
    server.ignore_range = True
    download_file(url, dest, **QUIET)
    assert dest.read_bytes() == data and not (tmp_path / "val2017.zip.part").exists()


def test_corrupt_archive_is_detected_and_deleted(server, tmp_path):
    data = bytearray(server.files["zips/val2017.zip"])
    first = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    data[first.header_offset + 30 + len(first.filename) + 5] ^= 0xFF  # a byte of member data
    server.files["zips/val2017.zip"] = bytes(data)
    with pytest.raises(ValueError, match=r"val2017\.zip is corrupt .*CRC.*deleted it"):
        download_coco(tmp_path, ["val"], base_url=server.url, **QUIET)
    assert not (tmp_path / "val2017.zip").exists() and not (tmp_path / "val2017").exists()


def test_backbone_hash_prefix(server, tmp_path):
    with pytest.raises(ValueError, match=r"resnet34-333f7ec4\.pth is corrupt: sha256 .* 333f7ec4"):
        download_coco(tmp_path, ["backbone"], base_url=server.url, **QUIET)
    assert not (tmp_path / "resnet34-333f7ec4.pth").exists()
    weights = b"tiny weights"
    name = f"tiny-{hashlib.sha256(weights).hexdigest()[:8]}.pth"
    server.files[f"models/{name}"] = weights
    artifacts = {"backbone": Artifact("http://unused", f"models/{name}", False)}
    done = download_coco(tmp_path, ["backbone"], base_url=server.url, artifacts=artifacts, **QUIET)
    assert done == {"backbone": "downloaded"} and (tmp_path / name).read_bytes() == weights
    assert sha256_prefix_of_name("resnet34-333f7ec4.pth") == "333f7ec4"


def test_progress_lines_count_bytes_and_files(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSDBENCH_PROGRESS", "lines")  # as in a log
    download_coco(tmp_path, ["val"], base_url=server.url, retry_wait=0.0)
    size = len(server.files["zips/val2017.zip"])
    out, err = capsys.readouterr()
    assert out == "" and f"val2017.zip | {size / 1024:.1f} KiB/{size / 1024:.1f} KiB (100%)" in err
    assert re.search(r" [KMG]iB/s \| ETA", err) and "extract val2017.zip | file 5/5 (100%)" in err


def test_cli(server, tmp_path, capsys):
    dest = str(tmp_path / "coco")
    assert main(["data", "download", "--dest", dest, "--base-url", server.url, "--only", "annotations"]) == 0
    assert "annotations: downloaded, extracted" in capsys.readouterr().out
    assert main(["data", "download", "--dest", dest, "--base-url", server.url, "--only", "backbone"]) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert main(["data", "download", "--dest", dest, "--only", "weights"]) == 2
    assert main(["data", "download", "--dest", dest, "--base-url", server.url + "/missing",
                 "--only", "val"]) == 2
    assert "HTTP 404" in capsys.readouterr().err


# ---------------------------------------------------------------- the official SSD-Large files
OFFICIAL_PYTORCH, OFFICIAL_ONNX = "record/3236545/files/resnet34-ssd1200.pytorch", "record/3228411/files/resnet34-ssd1200.onnx"


def _official_server(onnx_bytes: bytes, pytorch_bytes: bytes) -> FileServer:
    return FileServer({OFFICIAL_PYTORCH: pytorch_bytes, OFFICIAL_ONNX: onnx_bytes})


def _official_items(onnx_bytes: bytes, sha256: str | None = None) -> dict:
    """The real entries with the checksum and size of the stand-in ONNX bytes the server holds."""
    from dataclasses import replace

    from ssdbench.data.download import ARTIFACTS

    onnx = replace(ARTIFACTS["ssd1200_onnx"], sha256=sha256 or hashlib.sha256(onnx_bytes).hexdigest(),
                   size=len(onnx_bytes))
    return {**ARTIFACTS, "ssd1200_onnx": onnx}


def test_official_files_are_the_references_and_carry_the_published_checksum():
    from ssdbench.data.download import ARTIFACTS, GROUPS, url_for

    assert GROUPS["ssd1200"] == ("ssd1200_pytorch", "ssd1200_onnx")
    assert url_for(ARTIFACTS["ssd1200_pytorch"]) == f"https://zenodo.org/{OFFICIAL_PYTORCH}"
    assert url_for(ARTIFACTS["ssd1200_onnx"]) == f"https://zenodo.org/{OFFICIAL_ONNX}"
    onnx = ARTIFACTS["ssd1200_onnx"]
    assert onnx.size == 80363696 and onnx.sha256.startswith("b417a818") and len(onnx.sha256) == 64


def test_official_download_checks_checksums_and_resumes(tmp_path):
    onnx_bytes, pytorch_bytes = b"onnx graph stand-in " * 5000, b"pickled module stand-in " * 3000
    srv = _official_server(onnx_bytes, pytorch_bytes)
    try:
        srv.drop_once.add(OFFICIAL_ONNX)  # first GET breaks off half-way: the second resumes with Range
        done = download_coco(tmp_path, ["ssd1200"], base_url=srv.url, artifacts=_official_items(onnx_bytes), **QUIET)
        assert done == {"ssd1200_pytorch": "downloaded", "ssd1200_onnx": "downloaded"}
        assert (tmp_path / "resnet34-ssd1200.onnx").read_bytes() == onnx_bytes
        assert (tmp_path / "resnet34-ssd1200.pytorch").read_bytes() == pytorch_bytes
        onnx_gets = [rng for path, rng in srv.log if path == OFFICIAL_ONNX]
        assert onnx_gets == [None, f"bytes={len(onnx_bytes) // 2}-"]
        again = download_coco(tmp_path, ["ssd1200"], base_url=srv.url, artifacts=_official_items(onnx_bytes), **QUIET)
        assert again == {"ssd1200_pytorch": "already complete", "ssd1200_onnx": "already complete, sha256 verified"}
    finally:
        srv.close()


def test_official_download_with_a_wrong_checksum_is_deleted(tmp_path):
    onnx_bytes = b"a different file " * 1000
    srv = _official_server(onnx_bytes, b"x")
    try:
        wrong = hashlib.sha256(b"the published file").hexdigest()
        with pytest.raises(ValueError, match=r"resnet34-ssd1200\.onnx is corrupt: sha256 .* expected"):
            download_coco(tmp_path, ["ssd1200_onnx"], base_url=srv.url,
                          artifacts=_official_items(onnx_bytes, wrong), **QUIET)
        assert not (tmp_path / "resnet34-ssd1200.onnx").exists()
        # the real entry: the stand-in has the wrong size, caught before hashing
        with pytest.raises(ValueError, match=r"\d+ bytes, expected 80363696"):
            download_coco(tmp_path, ["ssd1200_onnx"], base_url=srv.url, **QUIET)
        assert not (tmp_path / "resnet34-ssd1200.onnx").exists()
    finally:
        srv.close()


def test_cli_official_files_and_sha256_flag(tmp_path, capsys):
    pytorch_bytes = b"pickled module stand-in " * 100
    srv = _official_server(b"unused", pytorch_bytes)
    try:
        dest = str(tmp_path / "models")
        bad = "resnet34-ssd1200.pytorch=" + "0" * 64
        assert main(["data", "download", "--dest", dest, "--base-url", srv.url, "--only", "ssd1200_pytorch",
                     "--sha256", bad]) == 2
        assert "resnet34-ssd1200.pytorch is corrupt" in capsys.readouterr().err
        good = "resnet34-ssd1200.pytorch=" + hashlib.sha256(pytorch_bytes).hexdigest()
        assert main(["data", "download", "--dest", dest, "--base-url", srv.url, "--only", "ssd1200_pytorch",
                     "--sha256", good]) == 0
        assert "ssd1200_pytorch: downloaded" in capsys.readouterr().out
        # done, then a different --sha256: one line naming the file and both digests
        assert main(["data", "download", "--dest", dest, "--base-url", srv.url, "--only", "ssd1200_pytorch",
                     "--sha256", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "resnet34-ssd1200.pytorch is corrupt: sha256 " \
            f"{hashlib.sha256(pytorch_bytes).hexdigest()} is not the expected {'0' * 64}" in err
        assert main(["data", "download", "--dest", dest, "--only", "ssd1200", "--sha256", "nope=1"]) == 2
        assert "--sha256 'nope=1'" in capsys.readouterr().err
    finally:
        srv.close()


# ------------------------------------------------------------------ sha256 of finished steps
def _with_sha256(key: str, digest: str) -> dict:
    from dataclasses import replace

    from ssdbench.data.download import ARTIFACTS

    return {**ARTIFACTS, key: replace(ARTIFACTS[key], sha256=digest)}


def test_a_finished_file_is_rehashed_when_a_sha256_is_known(tmp_path):
    pytorch_bytes = b"pickled module stand-in " * 100
    good, wrong = hashlib.sha256(pytorch_bytes).hexdigest(), "0" * 64
    srv = _official_server(b"unused", pytorch_bytes)
    try:
        done = download_coco(tmp_path, ["ssd1200_pytorch"], base_url=srv.url, **QUIET)  # no checksum known
        assert done == {"ssd1200_pytorch": "downloaded"}
        target = tmp_path / "resnet34-ssd1200.pytorch"
        requests = len(srv.log)
        # marked done, then a sha256 is given: checked, not skipped
        with pytest.raises(ValueError, match=rf"^{re.escape(str(target))} is corrupt: sha256 {good} is not the "
                                             rf"expected {wrong}; deleted it"):
            download_coco(tmp_path, ["ssd1200_pytorch"], base_url=srv.url,
                          artifacts=_with_sha256("ssd1200_pytorch", wrong), **QUIET)
        assert not target.exists() and len(srv.log) == requests  # the bad file is not used
        ok = download_coco(tmp_path, ["ssd1200_pytorch"], base_url=srv.url,
                           artifacts=_with_sha256("ssd1200_pytorch", good), **QUIET)
        assert ok == {"ssd1200_pytorch": "downloaded"} and target.read_bytes() == pytorch_bytes
        marker = tmp_path / ".ssdbench-download" / "ssd1200_pytorch.done"
        assert f"sha256 {good}" in marker.read_text()
        target.write_bytes(b"changed on disk " * 10)  # a finished file altered afterwards
        with pytest.raises(ValueError, match=rf"sha256 {hashlib.sha256(b'changed on disk ' * 10).hexdigest()} "
                                             rf"is not the expected {good}"):
            download_coco(tmp_path, ["ssd1200_pytorch"], base_url=srv.url,
                          artifacts=_with_sha256("ssd1200_pytorch", good), **QUIET)
        assert not target.exists() and not marker.exists()
    finally:
        srv.close()


def test_an_archive_is_checked_before_it_is_extracted(server, tmp_path):
    archive = server.files["zips/val2017.zip"]
    wrong = "ab" * 32
    with pytest.raises(ValueError, match=rf"val2017\.zip is corrupt: sha256 {hashlib.sha256(archive).hexdigest()} "
                                         rf"is not the expected {wrong}"):
        download_coco(tmp_path, ["val"], base_url=server.url, artifacts=_with_sha256("val", wrong), **QUIET)
    assert not (tmp_path / "val2017").exists() and not (tmp_path / "val2017.zip").exists()
    assert not list(tmp_path.glob(".extract-*"))


def test_a_deleted_archive_is_checked_by_its_recorded_digest(server, tmp_path):
    good = hashlib.sha256(server.files["zips/val2017.zip"]).hexdigest()
    done = download_coco(tmp_path, ["val"], base_url=server.url, keep_archives=False,
                         artifacts=_with_sha256("val", good), **QUIET)
    assert done == {"val": "downloaded, extracted"} and not (tmp_path / "val2017.zip").exists()
    again = download_coco(tmp_path, ["val"], base_url=server.url, artifacts=_with_sha256("val", good), **QUIET)
    assert again == {"val": "already complete, sha256 verified"}
    wrong = "cd" * 32
    marker = tmp_path / ".ssdbench-download" / "val.done"
    with pytest.raises(ValueError, match=rf"val2017\.zip is corrupt: sha256 \(recorded in {re.escape(str(marker))}\) "
                                         rf"{good} is not the expected {wrong}"):
        download_coco(tmp_path, ["val"], base_url=server.url, artifacts=_with_sha256("val", wrong), **QUIET)
    assert not marker.exists()  # the next run downloads and extracts it anew


def test_a_finished_archive_without_recorded_digest_is_rehashed_or_refused(server, tmp_path):
    good = hashlib.sha256(server.files["zips/val2017.zip"]).hexdigest()
    download_coco(tmp_path, ["val"], base_url=server.url, **QUIET)  # no sha256: the marker records none
    again = download_coco(tmp_path, ["val"], base_url=server.url, artifacts=_with_sha256("val", good), **QUIET)
    assert again == {"val": "already complete, sha256 verified"}  # the archive, still here, re-hashed
    (tmp_path / "val2017.zip").unlink()
    with pytest.raises(ValueError, match=r"val2017\.zip was extracted and deleted before its sha256 was recorded"):
        download_coco(tmp_path, ["val"], base_url=server.url, artifacts=_with_sha256("val", good), **QUIET)
