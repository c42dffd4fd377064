"""arb_jax.io.files: outputs are written all or nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arb_jax.io.files import write_atomic, write_text_atomic


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
