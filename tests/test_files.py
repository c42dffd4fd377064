"""arb_jax.io.files: outputs are written all or nothing; a folder's lock fails at once or waits."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from arb_jax.io.files import FolderLockedError, folder_lock, write_atomic, write_text_atomic


def test_interrupted_write_leaves_no_output(tmp_path):
    target = tmp_path / "img.npz"

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half an archive")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, write)
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, lambda t: np.savez_compressed(t, a=np.arange(3)))
    np.testing.assert_array_equal(np.load(target)["a"], np.arange(3))
    assert [f.name for f in tmp_path.iterdir()] == ["img.npz"]


def test_write_text_atomic_replaces_the_old_file(tmp_path):
    target = tmp_path / "sweep.json"
    target.write_text("old")
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and [f.name for f in tmp_path.iterdir()] == ["sweep.json"]


def test_folder_lock_fails_at_once_or_waits_for_the_holder(tmp_path, capfd):
    held, release, order = threading.Event(), threading.Event(), []

    def holder() -> None:
        with folder_lock(tmp_path, ".x.lock", what="the holder"):
            held.set()
            release.wait(10)
            order.append("holder done")

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    with pytest.raises(FolderLockedError, match="in use by the holder"), folder_lock(tmp_path, ".x.lock"):
        pass
    threading.Timer(0.3, release.set).start()
    with folder_lock(tmp_path, ".x.lock", what="the waiter", wait=True):
        order.append("waiter in")
    t.join(10)
    assert order == ["holder done", "waiter in"]
    assert "held by the holder" in capfd.readouterr().err
