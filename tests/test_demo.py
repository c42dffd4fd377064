"""The embedded demo model: procedural data, the training script, and the shipped weights.

References: `skimage.measure.block_reduce` (patch coverage), a pixel-level brute force with
nearest-neighbour upsampling (attention on object), `hashlib` (sha256). The shipped-weights
figures are asserted below measured values with a margin (see the constants).
"""

import dataclasses
import hashlib
import json
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.measure import block_reduce

from arb_jax import cli
from arb_jax.checkpoints import demo as demo_weights
from arb_jax.demo import data as demo_data
from arb_jax.demo import train as train_demo
from arb_jax.io.images import normalize
from arb_jax.models import build_vit

# Held-out figures of the shipped model on TEST_SEED composites (never a training or the
# record's evaluation seed), measured when the weights were trained; asserted with a margin.
TEST_SEED = 2**32 + 777_777
TEST_N = 224
# Measured on these 224 images: accuracy 0.955, ratio 2.15 (median per image 2.26); on other
# 224-image seeds 0.93-0.95 and 2.03-2.13; a random-init model: 0.19 and 1.08.
MIN_ACCURACY = 0.88
MIN_RATIO = 1.8  # attention-on-object ratio (1 = blind to the object)


# --------------------------------------------------------------------------- data


def test_dataset_shapes_dtypes_and_balance():
    d = demo_data.make_dataset(70, image_size=48, seed=3)
    assert d.images.shape == (70, 48, 48, 3) and d.images.dtype == np.uint8
    assert d.labels.shape == (70,) and d.labels.dtype == np.int32
    assert d.masks.shape == (70, 48, 48) and d.masks.dtype == bool
    np.testing.assert_array_equal(np.bincount(d.labels, minlength=7), np.full(7, 10))
    area = d.masks.mean(axis=(1, 2))
    assert area.min() > 0.005 and area.max() < 0.95  # every image has a visible, partial object
    assert d.images.std() > 20  # not blank


def test_dataset_is_deterministic_per_seed():
    a = demo_data.make_dataset(12, image_size=32, seed=5)
    b = demo_data.make_dataset(12, image_size=32, seed=5)
    c = demo_data.make_dataset(12, image_size=32, seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)


def test_object_extent_follows_the_scale_range():
    d = demo_data.make_dataset(140, image_size=64, seed=11)
    for m in d.masks:
        rows, cols = np.nonzero(m)
        longest = max(np.ptp(rows) + 1, np.ptp(cols) + 1) / 64
        assert 0.1 < longest <= 1.0
    # objects appear all over the image, not only at the centre
    centres = np.array([np.argwhere(m).mean(0) for m in d.masks]) / 64
    assert centres.min() < 0.35 and centres.max() > 0.65


def test_mask_marks_the_pasted_pixels(monkeypatch):
    """Regenerate the same composite with the object made invisible (alpha 0): the two differ
    inside the mask, and outside it at most on a thin soft edge (0 < alpha <= 0.5)."""
    img, mask = demo_data.composite(np.random.default_rng(4), 2, 48)
    real_object = demo_data.cutout

    def invisible(rng, label, size):
        rgb, alpha = real_object(rng, label, size)
        return rgb, np.zeros_like(alpha)

    monkeypatch.setattr(demo_data, "cutout", invisible)
    bg, empty = demo_data.composite(np.random.default_rng(4), 2, 48)
    assert not empty.any() and mask.sum() > 20
    changed = np.any(img != bg, axis=-1)
    assert changed[mask].mean() > 0.6  # the object covers its mask
    assert changed[~mask].mean() < 0.05  # outside: only soft edge pixels


def test_generation_reads_the_source_photos_once(monkeypatch):
    """The photos and textures are decoded once per process, not per image (this is what keeps
    1000 composites fast)."""
    import skimage

    demo_data.make_dataset(8, image_size=64, seed=0)  # load the sources once
    reads = []

    class CountingData:
        def __getattr__(self, name):
            reads.append(name)
            return getattr(real, name)

    real = skimage.data
    monkeypatch.setattr(skimage, "data", CountingData())
    data = demo_data.make_dataset(1000, image_size=64, seed=1)
    assert reads == []
    assert data.images.shape == (1000, 64, 64, 3) and len(set(data.labels.tolist())) == len(demo_data.CLASSES)


def test_patch_coverage_matches_block_reduce():
    masks = np.random.default_rng(0).random((3, 24, 40)) > 0.6
    ref = block_reduce(masks.astype(np.float64), (1, 8, 8), np.mean)
    np.testing.assert_allclose(demo_data.patch_coverage(masks, 8), ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"n": 2.5}, TypeError, "n must be an integer"),
        ({"n": 2, "image_size": 8}, ValueError, "image_size must be >= 16"),
        ({"n": 2, "seed": True}, TypeError, "bool"),
    ],
)
def test_make_dataset_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        demo_data.make_dataset(**kwargs)


def test_patch_coverage_rejects_bad_input():
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        demo_data.patch_coverage(np.zeros((1, 20, 16), bool), 8)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        demo_data.patch_coverage(np.zeros((20, 16), bool), 8)


# --------------------------------------------------------------------------- attention on object


def _attention_reference(attn, masks):
    """Brute force on pixels: nearest-neighbour upsampled head-mean map, share on the mask."""
    p = masks.shape[1] // attn.shape[2]
    a = attn.mean(axis=1)
    pix = np.repeat(np.repeat(a, p, axis=1), p, axis=2)
    pix = pix / pix.sum(axis=(1, 2), keepdims=True)
    mass = (pix * masks).sum(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    return mass.mean(), area.mean(), mass.mean() / area.mean(), np.median(mass / area)


def test_attention_on_object_matches_pixel_reference():
    rng = np.random.default_rng(1)
    attn = rng.random((5, 3, 4, 6)) ** 4
    masks = demo_data.make_dataset(5, image_size=48, seed=2).masks[:, :32, :48]
    masks[:, 3:9, 5:17] = True  # make sure no mask is empty after the crop
    got = train_demo.attention_on_object(attn, masks)
    want = _attention_reference(attn, masks)
    np.testing.assert_allclose(
        [got["mass"], got["area"], got["ratio"], got["ratio_median"]], want, rtol=1e-12
    )


def test_attention_on_object_properties():
    masks = np.zeros((2, 16, 16), bool)
    masks[:, :8, :8] = True  # one full patch of four
    uniform = np.ones((2, 3, 2, 2))
    assert train_demo.attention_on_object(uniform, masks)["ratio"] == pytest.approx(1.0)
    on = np.zeros((2, 3, 2, 2))
    on[:, :, 0, 0] = 1.0
    out = train_demo.attention_on_object(on, masks)
    assert out["mass"] == pytest.approx(1.0) and out["ratio"] == pytest.approx(4.0)
    off = np.zeros((2, 3, 2, 2))
    off[:, :, 1, 1] = 1.0
    assert train_demo.attention_on_object(off, masks)["ratio"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same N"):
        train_demo.attention_on_object(uniform[:1], masks)
    with pytest.raises(ValueError, match="empty object mask"):
        train_demo.attention_on_object(uniform, np.zeros_like(masks))


# --------------------------------------------------------------------------- training


def test_seeds_never_collide():
    seeds = {train_demo.batch_seed(s, k) for s in range(3) for k in range(500)}
    assert len(seeds) == 1500 and max(seeds) < 2**32
    assert train_demo.eval_seed(0) >= 2**32 and TEST_SEED >= 2**32
    assert train_demo.eval_seed(0) != TEST_SEED


def test_optimizer_decays_kernels_only():
    s = dataclasses.replace(train_demo.SMOKE, weight_decay=0.5, warmup_steps=1, lr=0.1)
    tx = train_demo.make_optimizer(s)
    params = {"blk": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "pos_embed": jnp.ones(3)}
    state, update = tx.init(params), jax.jit(tx.update)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for _ in range(2):  # the schedule starts at lr 0 (warm-up)
        updates, state = update(zeros, state, params)
        params = flax.core.unfreeze(jax.tree_util.tree_map(lambda p, u: p + u, params, updates))
    np.testing.assert_allclose(params["blk"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(params["blk"]["bias"], 1.0)
    np.testing.assert_array_equal(params["pos_embed"], 1.0)


def test_train_settings_reject_bad_values():
    with pytest.raises(ValueError, match="multiple of the patch"):
        dataclasses.replace(train_demo.SMOKE, image_size=36)
    with pytest.raises(ValueError, match="warm_frac"):
        dataclasses.replace(train_demo.SMOKE, warm_frac=1.0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        dataclasses.replace(train_demo.SMOKE, steps=0)


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path, capsys):
    assert cli.main(["train-demo", "--smoke", "--out", str(tmp_path), "--quiet", "--seed", "3"]) == 0
    assert "attention-on-object ratio" in capsys.readouterr().out
    config, params, meta = demo_weights.load_demo_params(tmp_path)
    assert config == train_demo.demo_config(dataclasses.replace(train_demo.SMOKE, seed=3))
    assert meta["sha256"] == hashlib.sha256((tmp_path / "demo_vit.msgpack").read_bytes()).hexdigest()
    assert "NOT DINO" in meta["note"] and meta["steps"] == train_demo.SMOKE.steps
    assert meta["seed"] == 3 and 0.0 <= meta["held_out"]["accuracy"] <= 1.0
    vit = build_vit(config, params)  # the canonical tree the rest of the project expects
    d = demo_data.make_dataset(4, image_size=32, seed=9)
    attn = np.asarray(vit.cls_attention(jnp.asarray(normalize(d.images))))
    assert attn.shape == (4, 2, 4, 4) and np.all(np.isfinite(attn))
    assert np.all(attn.sum(axis=(2, 3)) < 1.0 + 1e-5)  # CLS column dropped, not renormalised

    # tampering with the weights is caught by the sha256 check
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path, bad, ignore=shutil.ignore_patterns("bad"))
    blob = bytearray((bad / "demo_vit.msgpack").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "demo_vit.msgpack").write_bytes(bytes(blob))
    with pytest.raises(demo_weights.DemoWeightsError, match="sha256"):
        demo_weights.load_demo_params(bad)
    (bad / "demo_vit.json").write_text("{not json")
    with pytest.raises(demo_weights.DemoWeightsError, match="not valid JSON"):
        demo_weights.load_demo_params(bad)
    (bad / "demo_vit.json").unlink()
    with pytest.raises(demo_weights.DemoWeightsError, match="missing"):
        demo_weights.load_demo_params(bad)


# --------------------------------------------------------------------------- shipped weights


@pytest.fixture(scope="module")
def shipped():
    return demo_weights.load_demo_params()


def test_shipped_weights_match_their_record(shipped):
    config, params, meta = shipped
    weights = demo_weights.ASSETS / demo_weights.WEIGHTS_FILE
    record = json.loads((demo_weights.ASSETS / demo_weights.RECORD_FILE).read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["sha256"]
    assert weights.stat().st_size == record["bytes"] < 5_000_000
    assert "NOT DINO" in record["note"]
    assert config.patch == 8 and config.n_classes == len(demo_data.CLASSES)
    assert config.pos_grid * config.patch == record["image_size"]
    n_params = sum(np.size(v) for v in jax.tree_util.tree_leaves(params))
    assert n_params * 4 <= record["bytes"] < n_params * 4 + 100_000
    build_vit(config, params)  # shapes match the canonical tree


def test_shipped_model_classifies_and_attends_to_the_object(shipped):
    config, params, meta = shipped
    data = demo_data.make_dataset(TEST_N, image_size=meta["image_size"], seed=TEST_SEED)
    ev = train_demo.evaluate(config, params, data)
    assert ev["accuracy"] >= MIN_ACCURACY
    assert ev["ratio"] >= MIN_RATIO
    assert ev["ratio_median"] > 1.0
