"""Careless and hostile use of the command line: options out of range, empty inputs, two processes
on one output folder, leftovers of a killed run, an image whose ARB call fails on the device.

Every refusal is one line ``arb …: error: …`` naming the option or the file, exit status 1.
The model is the offline demo ViT (a toy, not DINO) at small sizes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _subproc import ROOT, jax_env
from PIL import Image

from arb_jax import cli
from arb_jax.core import pipeline
from arb_jax.io import files
from arb_jax.io.images import sample_images


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = cli.main(list(argv))  # argparse refuses before anything runs
    return rc, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--n-boot", "1000000000"], "--n-boot"),
        (["--n-boot", "0"], "--n-boot"),
        (["--size", "0"], "--size"),
        (["--size", "100000"], "--size"),
        (["--inject-noise", "0"], "--inject-noise"),
        (["--inject-noise", "-5"], "--inject-noise"),
        (["--seed", "18446744073709551616"], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--width", "-1"], "--width"),
        (["--width", "nan"], "--width"),
        (["--p", "1.5"], "--p"),
        (["--lfdr", "x"], "--lfdr"),
        (["--batch", "0"], "--batch"),
        (["--boot-chunk", "0"], "--boot-chunk"),
    ],
)
def test_regularize_options_are_range_checked_in_one_line(capsys, argv, option):
    code, err = _run(capsys, "regularize", "skimage:astronaut", *argv)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("arb regularize: error: ") and f"argument {option}:" in err[0]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--n-boot", "1000000000"], "--n-boot"),
        (["--size", "0"], "--size"),
        (["--placements", "0"], "--placements"),
        (["--seed", "18446744073709551616"], "--seed"),
        (["--noise-size", "-3"], "--noise-size"),
        (["--width", "0"], "--width"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_sweep_options_are_range_checked_in_one_line(capsys, tmp_path, argv, option):
    code, err = _run(capsys, "sweep", str(tmp_path), "--out", str(tmp_path / "r"), *argv)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("arb sweep: error: ") and f"argument {option}:" in err[0]


def test_missing_file_and_empty_folder_are_one_line_each(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for target, says in ((tmp_path / "nope.png", "no such file"), (tmp_path / "empty", "no image files")):
        rc = cli.main(["regularize", str(target), "--model", "demo", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.splitlines()
        assert rc == 1 and len(err) == 1 and says in err[0], err


def _photo(path, name="coffee"):
    Image.fromarray(sample_images()[name]).save(path)
    return path


def _hold(folder, name=".arb.lock") -> subprocess.Popen:
    """A process holding ``folder``'s lock until it is killed."""
    code = (
        "import sys, time\n"
        "from arb_jax.io.files import folder_lock\n"
        f"with folder_lock({str(folder)!r}, name={name!r}, what='arb test holder'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=jax_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_same_output_folder_is_refused_until_the_first_dies(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    src = _photo(tmp_path / "c.png")
    argv = ["regularize", str(src), "--model", "demo", "--size", "64", "--out", str(out), "--quiet"]
    holder = _hold(out)
    try:
        rc = cli.main(argv)
        err = capsys.readouterr().err.splitlines()
        assert rc == 1 and len(err) == 1, err
        assert f"{out} is in use by arb test holder (pid {holder.pid}" in err[0]
        assert not (out / "c.npz").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert cli.main(argv) == 0 and (out / "c.npz").is_file()  # the killed holder blocks nothing


def test_a_second_sweep_on_the_same_folder_is_refused_at_once(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _photo(data / "c.png")
    out = tmp_path / "r"
    out.mkdir()
    holder = _hold(out, ".rows.csv.lock")
    try:
        t0 = time.monotonic()
        rc = cli.main(
            ["sweep", str(data), "--out", str(out), "--model", "random:test_tiny8", "--size", "32", "--quiet"]
        )
        err = capsys.readouterr().err.splitlines()
        assert rc == 1 and len(err) == 1 and "is in use by arb test holder" in err[0], err
        assert time.monotonic() - t0 < 60
        assert not (out / "rows.csv").exists() and not (out / "sweep.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_temporaries_of_a_killed_run_are_removed_on_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".c.999999.tmp.png", out / ".c.999999.tmp.npz"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = out / "notes.tmp.txt"
    keep.write_text("a user's file")
    src = _photo(tmp_path / "c.png")
    assert (
        cli.main(["regularize", str(src), "--model", "demo", "--size", "64", "--out", str(out), "--quiet"])
        == 0
    )
    assert not any(p.exists() for p in stale) and keep.exists()
    assert sorted(p.name for p in out.iterdir()) == [".arb.lock", "c.npz", "c.png", "notes.tmp.txt"]


def test_a_failing_device_call_stops_only_its_image(capsys, tmp_path, monkeypatch):
    srcs = [_photo(tmp_path / f"{n}.png", n) for n in ("coffee", "chelsea")]
    real, calls = pipeline.regularize_attention, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 5.2 GB")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "regularize_attention", flaky)
    rc = cli.main(
        [
            "regularize",
            *map(str, srcs),
            "--model",
            "demo",
            "--size",
            "64",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and len(err) == 1 and "RESOURCE_EXHAUSTED" in err[0], err
    assert err[0].startswith("arb: error: coffee: ")
    assert (tmp_path / "out" / "chelsea.npz").is_file() and not (tmp_path / "out" / "coffee.npz").exists()


def test_stale_temporary_pattern_spares_other_files_and_this_process(tmp_path):
    mine = tmp_path / f".x.{os.getpid()}.tmp.png"
    other = tmp_path / ".x.12345.tmp"
    plain = tmp_path / "x.12345.tmp.png"
    for p in (mine, other, plain):
        p.write_text("")
    assert files.remove_stale_temporaries(tmp_path) == [other]
    assert mine.exists() and plain.exists()


@pytest.mark.parametrize(
    "argv, option",
    [
        (["finetune", "d", "--model", "demo", "--out", "o", "--epochs", "0"], "--epochs"),
        (["finetune", "d", "--model", "demo", "--out", "o", "--lr", "-1"], "--lr"),
        (["finetune", "d", "--model", "demo", "--out", "o", "--val-fraction", "2"], "--val-fraction"),
        (["finetune", "d", "--model", "demo", "--out", "o", "--seed", "-4"], "--seed"),
        (["convert", "a", "b", "--heads", "0"], "--heads"),
        (["train-demo", "--steps", "0"], "--steps"),
        (["photo-study", "--out", "o", "--placements", "0"], "--placements"),
    ],
)
def test_the_other_commands_range_check_their_options_too(capsys, argv, option):
    code, err = _run(capsys, *argv)
    assert code == 1 and len(err) == 1, err
    assert f"argument {option}:" in err[0] and err[0].startswith(f"arb {argv[0]}: error: ")


def test_a_file_system_without_flock_is_used_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with files.folder_lock(tmp_path) as path:
        assert path == tmp_path / ".arb.lock"

    def other_error(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", other_error)
    with pytest.raises(OSError, match="Bad file descriptor"), files.folder_lock(tmp_path):
        pass
