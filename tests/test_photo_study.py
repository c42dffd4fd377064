"""The offline real-photo data set, K noise placements per image, and the whole study command.

The model here is ``random:test_tiny8`` (a RANDOM-INIT fixture, not a trained model) at 32 px:
these tests check the plumbing (data set, keys, rows, resume, reports, the summary), not ARB's
numbers, which the committed study on the real model reports.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from skimage import data

from arb_jax.study import photo_study, sweep
from arb_jax.study import photos as photo_data

MODEL = "random:test_tiny8"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos")
    counts = photo_data.write_photo_dataset(out)
    return out, counts


def test_photo_dataset_has_the_real_photos_in_three_classes(photos):
    out, counts = photos
    assert counts == {"skimage_colour": 9, "sklearn_colour": 2, "skimage_grey": 9}
    assert sorted(p.name for p in out.iterdir()) == sorted(photo_data.CLASSES)
    with Image.open(out / "skimage_colour" / "astronaut.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), data.astronaut())
    with Image.open(out / "skimage_grey" / "camera.png") as im:
        a = np.asarray(im)
    assert a.shape == (*data.camera().shape, 3) and (a == data.camera()[..., None]).all()
    with Image.open(out / "skimage_grey" / "horse.png") as im:
        assert set(np.unique(np.asarray(im))) <= {0, 255}
    with Image.open(out / "sklearn_colour" / "china.png") as im:
        assert im.size == (640, 427)
    items = sweep.folder_items(out)
    assert len(items) == 20 and {it.label for it in items} == set(photo_data.CLASSES)


def test_placements_are_items_of_their_own():
    base = [sweep.Item("a", "x", lambda: None), sweep.Item("b", "y", lambda: None)]
    got = list(sweep.placements_of(base, 3))
    assert [it.image_id for it in got] == ["a", "a@1", "a@2", "b", "b@1", "b@2"]
    assert [it.label for it in got] == ["x"] * 3 + ["y"] * 3
    keys = {str(sweep.image_key(0, it.image_id)) for it in got}
    assert len(keys) == 6


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_with_placements_and_its_resume(tmp_path):
    folder = tmp_path / "data" / "c"
    folder.mkdir(parents=True)
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    cfg = sweep.SweepConfig(
        data=str(tmp_path / "data"),
        model=MODEL,
        out=str(tmp_path / "r"),
        size=32,
        batch=2,
        placements=3,
        z_filter=None,
    )
    summary = sweep.run_sweep(cfg, log=lambda m: None)
    rows = _rows(summary.rows_path)
    assert summary.written == 6 and len(rows) == 6
    assert sorted(r["image_id"] for r in rows) == sorted(
        f"c/{n}.png{s}" for n in ("astronaut", "coffee") for s in ("", "@1", "@2")
    )
    corners = {(r["roi_row"], r["roi_col"]) for r in rows if r["image_id"].startswith("c/coffee.png")}
    assert len(corners) > 1  # each placement puts the square elsewhere
    before = {r["image_id"]: r for r in rows}
    more = sweep.run_sweep(sweep.SweepConfig(**{**cfg.__dict__, "placements": 4}), log=lambda m: None)
    rows = _rows(more.rows_path)
    assert more.written == 2 and len(rows) == 8
    assert {r["image_id"]: r for r in rows if r["image_id"] in before} == before
    with pytest.raises(ValueError, match="placements must be a positive integer"):
        sweep.SweepConfig(data="x", placements=0)


@pytest.mark.slow
def test_study_runs_end_to_end_and_resumes(tmp_path):
    runs = (
        photo_study.Run("tiny_grid", "square", 32, "n_boot=1,2 width=0.5,1"),
        photo_study.Run("tiny_diffuse", "diffuse", 32, "n_boot=1"),
    )
    path = photo_study.run_study(
        tmp_path / "study", model=MODEL, placements=2, batch=8, runs=runs, progress=False, log=lambda m: None
    )
    text = path.read_text()
    assert "20 real photos × 2 noise placements" in text
    for name, n_boot in (("tiny_grid", 1), ("tiny_grid", 2), ("tiny_diffuse", 1)):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} | {n_boot} |"))
        assert line.count("|") == 11 and "/ 40 |" in line
    assert "Fig. S11 grid (tiny_grid; filter)" in text and "| tiny_grid | 2 | 0.5 |" in text
    for name in ("tiny_grid", "tiny_diffuse"):
        assert (tmp_path / "study" / name / "report" / "fig4_suppression.png").is_file()
        assert (tmp_path / "study" / name / "report_all" / "summary.md").is_file()
    assert (tmp_path / "study" / "tiny_grid" / "report" / "figS11_grid.png").is_file()
    rows = len(_rows(tmp_path / "study" / "tiny_grid" / "rows.csv"))
    assert rows == 40 * 4
    again = photo_study.run_study(
        tmp_path / "study",
        model=MODEL,
        placements=2,
        batch=8,
        runs=runs,
        progress=False,
        log=lambda m: None,
        figures=tmp_path / "figs",
    )
    assert again.read_text() == text == (tmp_path / "figs" / "study.md").read_text()
    assert len(_rows(tmp_path / "study" / "tiny_grid" / "rows.csv")) == rows


def test_photo_commands_parse(tmp_path, capsys):
    from arb_jax.cli import main

    assert main(["photos", str(tmp_path / "p")]) == 0
    assert "wrote 20 photos" in capsys.readouterr().out
    assert main(["photo-study", "--out", str(tmp_path / "s"), "--runs", "nope"]) == 1
    assert "unknown study runs ['nope']" in capsys.readouterr().err


def test_sklearn_photos_are_load_sample_image_without_importing_sklearn():
    # In a fresh interpreter: the photos equal scikit-learn's own loader, and reading them
    # imports no sklearn module (whose vendored OpenMP runtime would sit beside torch's).
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from arb_jax.study.photos import photo_dataset\n"
        "got = {n: f() for n, f in photo_dataset()['sklearn_colour'].items()}\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'sklearn'], 'sklearn imported'\n"
        "from sklearn.datasets import load_sample_image\n"
        "for n, a in got.items():\n"
        "    assert np.array_equal(a, load_sample_image(n + '.jpg')), n\n"
        "print(sorted(got))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['china', 'flower']"
