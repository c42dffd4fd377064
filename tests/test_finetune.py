"""``arb finetune`` (arb_jax.study.finetune): a linear head on a frozen ViT, checkpoints, resume, loading.

Backbone: ``random:test_tiny8`` at 32 x 32 px — a RANDOM-INIT fixture, not a trained model. Its
CLS features of different photos still differ, so a linear head separates a few classes. Data:
a generated folder of 3 classes x 8 small crops / flips of one scikit-image photo per class.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arb_jax import cli
from arb_jax.checkpoints import loading
from arb_jax.io import images
from arb_jax.models import build_vit, get_config, random_params
from arb_jax.study import finetune as ft
from arb_jax.study.sources import SourceError

MODEL = "random:test_tiny8"  # random-init fixture: patch 8, native 32 x 32
CLASSES = {"astro": "astronaut", "cat": "chelsea", "cup": "coffee"}
KW = {"batch": 8, "lr": 3e-2, "seed": 0, "val_fraction": 0.25}


def _write_class(folder: Path, photo: np.ndarray, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    side = int(0.7 * min(h, w))
    for i in range(n):
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[top : top + side, left : left + side]
        if i % 2:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).resize((40, 40)).save(folder / f"img{i}.png")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return images.sample_images()


@pytest.fixture(scope="module")
def data(tmp_path_factory, photos) -> Path:
    root = tmp_path_factory.mktemp("ft_data")
    for k, (cls, name) in enumerate(CLASSES.items()):
        _write_class(root / cls, photos[name], 8, k)
    return root


@pytest.fixture(scope="module")
def vit():
    return loading.load_vit(MODEL, image_size=32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, vit) -> dict:
    """Run A: 2 epochs, then resumed to 4; run B: 4 epochs straight."""
    out = tmp_path_factory.mktemp("ft_runs")
    lines: list[str] = []
    a2 = ft.finetune(vit, data, out / "a", epochs=2, model=MODEL, log=lines.append, **KW)
    steps_a2 = sorted(int(p.name) for p in (out / "a" / ft.CHECKPOINT_DIR).iterdir() if p.name.isdigit())
    rows_a2 = _metrics(out / "a")
    a4 = ft.finetune(vit, data, out / "a", epochs=4, resume=True, model=MODEL, log=lines.append, **KW)
    b4 = ft.finetune(vit, data, out / "b", epochs=4, model=MODEL, log=None, **KW)
    return {
        "out": out,
        "a2": a2,
        "a4": a4,
        "b4": b4,
        "lines": lines,
        "steps_a2": steps_a2,
        "rows_a2": rows_a2,
    }


def _metrics(out: Path) -> list[dict[str, str]]:
    with (out / ft.METRICS_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / ft.CHECKPOINT_DIR).iterdir() if p.name.isdigit())


# ------------------------------------------------------------------------------ the smoke run


@pytest.mark.slow
def test_metrics_and_checkpoints_per_epoch(runs):
    assert runs["steps_a2"] == [1, 2]
    assert [r["epoch"] for r in runs["rows_a2"]] == ["1", "2"]
    assert _steps(runs["out"] / "b") == [2, 3, 4]  # one per epoch, the last KEEP_CHECKPOINTS kept
    assert ft.KEEP_CHECKPOINTS == 3
    rows = _metrics(runs["out"] / "a")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert tuple(rows[0]) == ft.METRIC_COLUMNS
    for r in rows:
        assert 0.0 <= float(r["train_acc"]) <= 1.0 and 0.0 <= float(r["val_acc"]) <= 1.0
        assert np.isfinite(float(r["train_loss"])) and np.isfinite(float(r["val_loss"]))
    epoch_lines = [ln for ln in runs["lines"] if ln.startswith("epoch ")]
    assert epoch_lines[0].startswith("epoch 1/2: train loss") and "val acc" in epoch_lines[0]
    assert [ln.split(":")[0] for ln in epoch_lines] == ["epoch 1/2", "epoch 2/2", "epoch 3/4", "epoch 4/4"]
    assert any("cached features" in ln for ln in runs["lines"])  # the resume did not recompute
    assert any("resuming from epoch 2" in ln for ln in runs["lines"])


@pytest.mark.slow
def test_training_learns(runs):
    hist = runs["b4"].history
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert hist[-1]["train_acc"] > 1 / len(CLASSES) + 0.2  # well above chance (1/3)
    assert runs["b4"].classes == tuple(sorted(CLASSES))
    assert len(runs["b4"].train_ids) == 18 and len(runs["b4"].val_ids) == 6  # 2 of 8 per class


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(runs, data):
    a4, b4 = runs["a4"], runs["b4"]
    assert runs["a2"].resumed_from == 0 and a4.resumed_from == 2 and b4.resumed_from == 0
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(a4.vit.head[name]), np.asarray(b4.vit.head[name]))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a4.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b4.history]
    # run again at the same epochs: trains nothing, gives the same head (the tuned ViT's own head
    # does not count as part of the backbone)
    lines: list[str] = []
    again = ft.finetune(a4.vit, data, runs["out"] / "a", epochs=4, model=MODEL, log=lines.append, **KW)
    assert again.resumed_from == 4 and len(again.history) == 4
    assert not any(ln.startswith("epoch ") for ln in lines)
    np.testing.assert_array_equal(np.asarray(again.vit.head["kernel"]), np.asarray(a4.vit.head["kernel"]))


@pytest.mark.slow
def test_load_vit_gives_backbone_and_head(runs, data, vit):
    out = runs["out"] / "a"
    loaded = loading.load_vit(out)
    assert loaded.config.n_classes == 3 and loaded.image_size == (32, 32)
    assert loaded.meta["classes"] == sorted(CLASSES)
    assert loaded.meta["random_init"] is True  # the backbone is a fixture, and says so
    assert loaded.meta["backbone"]["model"] == MODEL
    np.testing.assert_array_equal(loaded.head["kernel"], runs["a4"].vit.head["kernel"])
    rows = {
        r["image_id"]: (r["class"], r["split"])
        for r in csv.DictReader((out / ft.SPLIT_FILE).open(newline=""))
    }
    val_ids = runs["a4"].val_ids
    assert sorted(i for i, (_, s) in rows.items() if s == "val") == sorted(val_ids)
    x = np.stack([images.prepare(images.read_image(data / i)[0], (32, 32), 8) for i in val_ids])
    logits = np.asarray(loaded.logits(x))
    feats = np.asarray(vit.features(x))  # the original backbone: the loaded one must agree
    ref = feats @ np.asarray(loaded.head["kernel"]) + np.asarray(loaded.head["bias"])
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    labels = np.array([sorted(CLASSES).index(rows[i][0]) for i in val_ids])
    acc = float(np.mean(logits.argmax(-1) == labels))
    assert acc == pytest.approx(runs["a4"].history[-1]["val_acc"], abs=1e-6)
    assert loaded.meta["finetune"]["val_acc"] == pytest.approx(acc, abs=1e-6)


# ------------------------------------------------------------------------------ refusals


@pytest.mark.slow
def test_mismatched_settings_are_refused(runs, data, vit):
    with pytest.raises(ft.FinetuneError, match=r"different fine-tuning run.*lr 0\.03 there"):
        ft.finetune(vit, data, runs["out"] / "a", epochs=5, log=None, **{**KW, "lr": 1e-3})
    other = build_vit("test_tiny8", None, image_size=32, seed=1)  # another random backbone
    with pytest.raises(ft.FinetuneError, match="another backbone"):
        ft.finetune(other, data, runs["out"] / "a", epochs=5, log=None, **KW)
    assert _steps(runs["out"] / "a") == [2, 3, 4]  # nothing was trained or deleted
    with pytest.raises(ft.FinetuneError, match="nothing to resume"):
        ft.finetune(vit, data, runs["out"] / "fresh", epochs=1, resume=True, log=None, **KW)


def test_bad_data_is_named(tmp_path, photos, vit):
    with pytest.raises(ft.FinetuneError, match="data folder not found"):
        ft.finetune(vit, tmp_path / "missing", tmp_path / "o1", epochs=1, log=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        ft.finetune(vit, tmp_path / "empty", tmp_path / "o2", epochs=1, log=None)
    _write_class(tmp_path / "one" / "cat", photos["chelsea"], 3, 0)
    with pytest.raises(ft.FinetuneError, match="at least 2 classes.*'cat'"):
        ft.finetune(vit, tmp_path / "one", tmp_path / "o3", epochs=1, log=None, batch=8)
    loose = tmp_path / "loose"
    _write_class(loose, photos["coffee"], 2, 0)
    with pytest.raises(ft.FinetuneError, match="without a class"):
        ft.finetune(vit, loose, tmp_path / "o4", epochs=1, log=None)
    for name, value in (("epochs", 0), ("batch", -1), ("lr", 0.0), ("val_fraction", 1.0)):
        with pytest.raises(ft.FinetuneError, match=name):
            ft.finetune(vit, tmp_path / "one", tmp_path / "o5", log=None, **{name: value})


def test_corrupt_images_are_skipped_with_a_note(tmp_path, photos, vit):
    root = tmp_path / "d"
    _write_class(root / "a", photos["astronaut"], 3, 0)
    _write_class(root / "b", photos["chelsea"], 3, 1)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    lines: list[str] = []
    res = ft.finetune(vit, root, tmp_path / "o", epochs=1, batch=8, val_fraction=0.0, log=lines.append)
    assert [i for i, _ in res.skipped] == ["b/broken.jpg"]
    assert any("skipped 1 unreadable" in ln and "b/broken.jpg" in ln for ln in lines)
    assert len(res.train_ids) == 6 and res.val_ids == ()
    assert res.history[0]["val_acc"] is None  # no validation set: logged as empty
    assert _metrics(tmp_path / "o")[0]["val_acc"] == ""
    (root / "a2").mkdir()
    (root / "a2" / "x.png").write_bytes(b"garbage")
    for f in (root / "a").iterdir():
        f.write_bytes(b"garbage")  # class a unreadable: one class left
    with pytest.raises(ft.FinetuneError, match="at least 2 classes"):
        ft.finetune(vit, root, tmp_path / "o6", epochs=1, batch=8, log=None)


# ------------------------------------------------------------------------------ layout and CLI


def test_imagenette_layout_through_the_cli(tmp_path, photos, capsys):
    root = tmp_path / "imagenette"
    for k, (cls, name) in enumerate(CLASSES.items()):
        _write_class(root / "train" / cls, photos[name], 4, k)
        _write_class(root / "val" / cls, photos[name][::-1], 2, 10 + k)
    out = tmp_path / "out"
    rc = cli.main(
        [
            "finetune",
            str(root),
            "--model",
            MODEL,
            "--size",
            "32",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch",
            "8",
            "--seed",
            "3",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "RANDOM-INIT" in text and "epoch 2/2" in text and "val acc" in text
    record = json.loads((out / ft.CONFIG_FILE).read_text())
    assert record["layout"] == "train/val folders" and record["val_fraction"] is None
    assert record["n_train"] == 12 and record["n_val"] == 6
    split = list(csv.DictReader((out / ft.SPLIT_FILE).open(newline="")))
    assert {r["image_id"].split("/")[0] for r in split if r["split"] == "val"} == set(CLASSES)
    assert sum(r["split"] == "val" for r in split) == 6
    assert loading.load_vit(out).meta["finetune"]["layout"] == "train/val folders"
    rc = cli.main(
        [
            "finetune",
            str(root),
            "--model",
            MODEL,
            "--size",
            "32",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch",
            "8",
            "--seed",
            "4",
            "--quiet",
        ]
    )
    assert rc == 1 and "seed 3 there, 4 now" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", "--help"])
    assert e.value.code == 0 and "arb finetune imagenette2-320/" in capsys.readouterr().out


# ------------------------------------------------------------------------------ pieces


def test_split_by_seed_is_stratified_and_deterministic():
    labels = np.array(["a"] * 10 + ["b"] * 5 + ["c"] * 1)
    tr, va = ft.split_by_seed(labels, 0.2, seed=0)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(16))
    assert [int(np.sum(labels[va] == c)) for c in "abc"] == [2, 1, 0]  # c keeps its only image
    tr2, va2 = ft.split_by_seed(labels, 0.2, seed=0)
    np.testing.assert_array_equal(va, va2)
    assert any(not np.array_equal(va, ft.split_by_seed(labels, 0.2, seed=s)[1]) for s in (1, 2, 3))
    with pytest.raises(ft.FinetuneError, match="val_fraction"):
        ft.split_by_seed(labels, 1.0, seed=0)


def test_bundle_head_and_stored_params():
    cfg = get_config("test_tiny8")
    vit = build_vit(cfg, random_params(cfg, 0), image_size=48)  # pos_embed resampled 4x4 -> 6x6
    assert vit.params["pos_embed"].shape[1] == 1 + 36
    np.testing.assert_array_equal(vit.stored_params()["pos_embed"], random_params(cfg, 0)["pos_embed"])
    assert vit.head is None
    x = np.zeros((1, 48, 48, 3), np.float32)
    with pytest.raises(ValueError, match="no classification head"):
        vit.logits(x)
    with pytest.raises(ValueError, match="head kernel must have shape"):
        vit.with_head(np.zeros((5, 2)), np.zeros(2))
    rng = np.random.default_rng(0)
    k, b = rng.standard_normal((32, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    tuned = vit.with_head(k, b, meta={"classes": list("wxyz")})
    assert tuned.config.n_classes == 4 and tuned.meta["classes"] == list("wxyz")
    x = rng.standard_normal((2, 48, 48, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tuned.logits(x)), np.asarray(vit.features(x)) @ k + b, atol=1e-5)
    assert set(tuned.stored_params()) == set(vit.params) | {"head"}


def test_tfds_source_uses_train_and_validation_splits(tmp_path, photos, vit, monkeypatch):
    """tfds:NAME → its train and validation splits, streamed (tfds itself replaced by a stub)."""
    asked: list[str] = []

    def fake_tfds_items(spec: str):
        asked.append(spec)
        n = 4 if spec.endswith(":train") else 2
        for cls, name in CLASSES.items():
            for i in range(n):
                crop = np.ascontiguousarray(photos[name][i * 20 : i * 20 + 200, :200])
                yield ft.Item(f"{spec}/{cls}/{i}", cls, lambda c=crop: c)

    monkeypatch.setattr(ft.sources, "tfds_items", fake_tfds_items)
    res = ft.finetune(vit, "tfds:fake", tmp_path / "o", epochs=1, batch=8, log=None)
    assert asked == ["tfds:fake:train", "tfds:fake:validation"]
    assert len(res.train_ids) == 12 and len(res.val_ids) == 6
    assert json.loads((tmp_path / "o" / ft.CONFIG_FILE).read_text())["layout"] == "tfds train/validation"
