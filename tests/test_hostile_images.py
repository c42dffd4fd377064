"""Hostile and careless images (issue 17): dimensions checked before decoding, a stated pixel
budget, extreme aspect ratios refused before the device, file names escaped.

The big images are written here as PNGs by hand (IHDR + a streamed zlib IDAT of zero rows), so a
12000 x 12000 16-bit image costs 300 KB on disk and no memory in the test; reading them runs in a
subprocess under ``RLIMIT_AS`` (3 GiB, JAX not imported) that reports its peak RSS.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arb_jax import cli
from arb_jax.io import images
from arb_jax.io.images import MAX_ASPECT, MAX_PIXELS, ImageError, ImageLimitError
from arb_jax.io.text import brief, escape

ROOT = Path(__file__).resolve().parents[1]
CAP = 3 << 30
RSS_MAX = 2 * 10**9
HOSTILE = "evil\x1b]0;pwned\x07\x1b[31m\nforged line\u202e"
ESCAPED = "evil\\x1b]0;pwned\\x07\\x1b[31m\\nforged line\\u202e"


def png_of_zeros(path: Path, width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> Path:
    """A valid all-black PNG written row by row (never held in memory)."""
    channels = {0: 1, 2: 3}[color_type]
    row = b"\x00" + bytes(width * channels * bit_depth // 8)  # filter type 0, then the pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    packer = zlib.compressobj(9)
    idat = bytearray()
    for _ in range(height):
        idat += packer.compress(row)
    idat += packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")
    )
    return path


_CAPPED_READ = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from arb_jax import images
out = {}
try:
    img, note = images.read_image(sys.argv[2])
    out["shape"] = list(img.shape)
    out["value"] = int(img.max())
except images.ImageError as e:
    out.update(error=type(e).__name__, message=str(e))
out["jax"] = "jax" in sys.modules
with open("/proc/self/status") as f:  # VmHWM: this process image's peak RSS
    out["maxrss"] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps(out))
"""


def read_capped(path: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CAPPED_READ, str(CAP), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("bit_depth", [16, 8])
def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path, bit_depth):
    path = png_of_zeros(tmp_path / f"huge{bit_depth}.png", 12000, 12000, bit_depth)
    assert path.stat().st_size < 1_000_000  # 296 KB for 16 bits
    out = read_capped(path)
    assert not out["jax"]
    assert out.get("error") == "ImageLimitError", out
    message = out["message"]
    assert "\n" not in message and message.endswith(str(path)), message
    assert f"12000x12000 px (W x H, mode {'I;16' if bit_depth == 16 else 'L'})" in message
    assert f"144000000 pixels, more than the {MAX_PIXELS} (MAX_PIXELS)" in message
    assert out["maxrss"] < 200 * 10**6, out["maxrss"]  # nothing was decoded


def test_16_bit_image_within_the_budget_is_read_in_bounded_memory(tmp_path):
    # 8000 x 8000 x 16 bits (64 Mpx, just under MAX_PIXELS): converted to 8-bit RGB without the
    # float64 copies of the whole image (they took 4 GB for 12000 x 12000).
    path = png_of_zeros(tmp_path / "big16.png", 8000, 8000, 16)
    assert MAX_PIXELS >= 8000 * 8000
    out = read_capped(path)
    assert out.get("shape") == [8000, 8000, 3] and out["value"] == 0, out
    assert out["maxrss"] < RSS_MAX, f"peak RSS {out['maxrss'] / 1e9:.2f} GB"


def test_16_bit_values_round_as_before():
    a = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    want = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    got = images.gray16_to_rgb8(a, rows=7)  # blocks that do not divide the height
    assert got.shape == (256, 256, 3)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=-1))


@pytest.mark.parametrize("h, w", [(1, 2000), (2000, 1), (5, 51)])
def test_extreme_aspect_ratio_is_refused_before_resizing(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    with pytest.raises(ImageLimitError) as info:
        images.prepare(img, 224, 8)
    text = str(info.value)
    ratio = max(h, w) / min(h, w)
    assert f"image of {h}x{w} px (H x W) has an aspect ratio of {ratio:.0f}:1" in text
    assert f"beyond the {MAX_ASPECT}:1 (MAX_ASPECT)" in text and "\n" not in text
    with pytest.raises(ImageLimitError):
        images.prepare(img, None, 1)
    # resized to a fixed (H, W), the aspect is not kept: no huge side, nothing refused
    assert images.prepare(img, (16, 16), 8).shape == (16, 16, 3)


def test_aspect_ratio_at_the_limit_is_prepared():
    img = np.zeros((10, 10 * MAX_ASPECT, 3), np.uint8)
    assert images.prepare(img, 16, 8).shape == (16, 160, 3)


def test_resize_beyond_the_pixel_budget_is_refused():
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(
        ImageLimitError,
        match=r"resized to 100000x100000 would have 10000000000 "
        r"pixels, more than the 67108864",
    ):
        images.prepare(img, 100_000, 8)


def test_a_2000_by_1_image_is_one_line_and_the_next_image_still_runs(capsys, tmp_path):
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(tmp_path / "strip.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    rc = cli.main(
        [
            "regularize",
            str(tmp_path / "strip.png"),
            str(tmp_path / "ok.png"),
            "--size",
            "48",
            "--n-boot",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--no-figures",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("arb: error:")]
    assert len(lines) == 1 and "strip" in lines[0] and "aspect ratio of 2000:1" in lines[0], err
    assert "Traceback" not in err
    assert (tmp_path / "out" / "ok.npz").exists() and not (tmp_path / "out" / "strip.npz").exists()


def test_image_file_names_are_escaped(tmp_path):
    bad = tmp_path / f"{HOSTILE}.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageError) as info:
        images.read_image(bad)
    text = str(info.value)
    assert ESCAPED in text and "\x1b" not in text and "\n" not in text
    for missing in (tmp_path / f"{HOSTILE}.jpg", f"{tmp_path}/{HOSTILE}*.jpg"):
        with pytest.raises(ImageError) as info:
            images.expand_paths([missing])
        assert "evil\\x1b" in str(info.value) and "\n" not in str(info.value)


def test_cli_error_printer_escapes_names_and_messages(capsys, tmp_path):
    bad = tmp_path / f"{HOSTILE}.png"
    bad.write_bytes(b"not a png at all")
    rc = cli.main(["regularize", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("arb: error: ") for line in lines), err
    assert any(ESCAPED in line for line in lines), err


def test_cli_error_printer_names_an_exception_without_a_message(capsys, monkeypatch):
    def boom(args):
        raise MemoryError()

    from arb_jax.cli import models

    monkeypatch.setattr(models, "run", boom)
    assert cli.main(["models"]) == 1
    assert capsys.readouterr().err == "arb: error: MemoryError\n"


def test_escape_is_idempotent_and_keeps_printable_text():
    assert escape("blocks.0.norm1.weight") == "blocks.0.norm1.weight"
    assert escape("naïve – ü") == "naïve – ü"
    assert escape(HOSTILE) == ESCAPED
    assert escape(escape(HOSTILE)) == ESCAPED
    assert escape("a\tb\rc\x00d\x7f\U000e0001") == "a\\tb\\rc\\x00d\\x7f\\U000e0001"
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    shown = brief(deep)
    assert len(shown) <= 120 and shown.startswith("[[[")
    me: list = []
    me.append(me)
    assert brief(me).startswith("[[") and "..." in brief(me) and len(brief(me)) < 20
