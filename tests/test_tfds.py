"""``tfds:`` data sources against the real tensorflow-datasets library (no mock).

A small data set of scikit-image photos is written in TFDS's own format (tfrecord shards,
``dataset_info.json``, ``features.json``) with ``tfds.dataset_builders.store_as_tfds_dataset``
into a ``data_dir``; ``arb sweep tfds:NAME`` and ``arb finetune tfds:NAME`` then read it by name
through ``tfds.load`` (the folder given as ``$TFDS_DATA_DIR``), with the demo model.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from arb_jax import cli
from arb_jax.io import images
from arb_jax.study import finetune as ft
from arb_jax.study import sources

NAME = "arb_test_photos"
CLASSES = ["person", "thing"]
TRAIN = ["astronaut", "coffee", "camera", "rocket", "immunohistochemistry", "moon"]
VALIDATION = ["chelsea", "coins", "hubble_deep_field", "astronaut"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    sample = images.sample_images()

    def examples(names, split):
        for i, name in enumerate(names):
            a = np.asarray(Image.fromarray(sample[name]).convert("RGB").resize((72, 64)))
            yield f"{split}{i}", {"image": a, "label": i % 2, "file_name": f"{split}/{name}.png"}

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=CLASSES),
            "file_name": tfds.features.Text(),
        }
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name=NAME,
        version="1.0.0",
        features=features,
        split_datasets={
            "train": list(examples(TRAIN, "train")),
            "validation": list(examples(VALIDATION, "validation")),
        },
        data_dir=str(root),
    )
    assert (root / NAME / "1.0.0" / "dataset_info.json").exists()
    return root


def test_items_of_a_tfds_data_set_on_disk(data_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    items = list(sources.open_source(f"tfds:{NAME}"))  # the validation split by default
    assert sorted(i.image_id for i in items) == sorted(f"validation/{n}.png" for n in VALIDATION)
    labels = {i.image_id: i.label for i in items}
    assert labels == {f"validation/{n}.png": CLASSES[k % 2] for k, n in enumerate(VALIDATION)}
    img = items[0].load()
    assert img.shape == (64, 72, 3) and img.dtype == np.uint8
    with pytest.raises(sources.SourceError, match="cannot load tfds:no_such_set"):
        sources.open_source("tfds:no_such_set")


def test_sweep_and_finetune_read_tfds_by_name(data_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    out = tmp_path / "sweep"
    argv = ["sweep", f"tfds:{NAME}:validation", "--model", "demo", "--out", str(out), "--size", "64"]
    assert cli.main([*argv, "--z-filter", "none", "--batch", "4", "--quiet"]) == 0
    with open(out / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image_id"] for r in rows) == sorted(f"validation/{n}.png" for n in VALIDATION)
    assert {r["image_id"]: r["class"] for r in rows} == {
        f"validation/{n}.png": CLASSES[k % 2] for k, n in enumerate(VALIDATION)
    }
    assert json.loads((out / "sweep.json").read_text())["data"] == f"tfds:{NAME}:validation"

    head = tmp_path / "head"
    argv = ["finetune", f"tfds:{NAME}", "--model", "demo", "--size", "32", "--out", str(head)]
    assert cli.main([*argv, "--epochs", "1", "--batch", "4", "--quiet"]) == 0
    record = json.loads((head / ft.CONFIG_FILE).read_text())
    assert record["layout"] == "tfds train/validation"
    assert (record["n_train"], record["n_val"]) == (len(TRAIN), len(VALIDATION))
    capsys.readouterr()
