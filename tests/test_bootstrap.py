"""Bootstrap samplers (docs/method.md §2): distributions, supports, chunk invariance, jit/vmap, validation.

Statistical checks use fixed keys, so they are deterministic; their tolerances are 5 standard
errors (or a KS / chi-square p-value above 1e-3) of the stated sample sizes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from arb_jax.core import bootstrap

H, W, C = 16, 24, 3
NAMES = ("normal", "pixel", "patch", "uniform")


def _image(seed=0, h=H, w=W):
    """(h, w, 3) float32 test image, channels with different means and spreads."""
    rng = np.random.default_rng(seed)
    mean = np.array([-1.0, 0.2, 2.0])
    std = np.array([0.5, 1.0, 2.0])
    return (mean + std * rng.standard_normal((h, w, 3))).astype(np.float32)


def _tiles(x, p):
    """(..., H, W, C) → (..., n_tiles, p, p, C), tiles in raster order (numpy reference)."""
    *lead, h, w, c = x.shape
    t = x.reshape(*lead, h // p, p, w // p, p, c)
    t = np.moveaxis(t, -4, -3)  # (..., h/p, w/p, p, p, c)
    return t.reshape(*lead, (h // p) * (w // p), p, p, c)


def _sorted_rows(rows):
    rows = np.ascontiguousarray(rows.reshape(rows.shape[0], -1))
    return rows[np.lexsort(rows.T[::-1])]


# ----------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("width", [1.0, 2.0, 0.5])
def test_normal_matches_channel_moments(width):
    img = _image(1)
    n = 8
    out = np.asarray(bootstrap.normal(jax.random.key(3), jnp.asarray(img), n, width=width))
    assert out.shape == (n, H, W, C) and out.dtype == np.float32
    N = n * H * W
    for c in range(C):
        mu = img[..., c].mean(dtype=np.float64)
        sd = width * img[..., c].std(ddof=1, dtype=np.float64)
        v = out[..., c].ravel().astype(np.float64)
        assert abs(v.mean() - mu) < 5 * sd / np.sqrt(N)
        assert abs(v.std(ddof=1) / sd - 1) < 5 / np.sqrt(2 * (N - 1))
        assert sps.kstest(v, sps.norm(mu, sd).cdf).pvalue > 1e-3


def test_normal_uses_sample_std_ddof1():
    """On a 2-pixel image ddof=1 and ddof=0 differ by √2: the spread must follow ddof=1."""
    img = np.array([[[0.0, 10.0, -1.0]], [[2.0, 14.0, 1.0]]], np.float32)  # (2, 1, 3)
    out = np.asarray(bootstrap.normal(jax.random.key(0), img, 4000))
    sd = img.reshape(2, 3).std(axis=0, ddof=1)
    np.testing.assert_allclose(out.reshape(-1, 3).std(axis=0, ddof=1), sd, rtol=0.03)
    np.testing.assert_allclose(
        out.reshape(-1, 3).mean(axis=0), img.mean(axis=(0, 1)), atol=5 * sd.max() / np.sqrt(8000)
    )


def test_uniform_support_and_moments():
    img = _image(2)
    n = 8
    out = np.asarray(bootstrap.uniform(jax.random.key(4), jnp.asarray(img), n))
    assert out.shape == (n, H, W, C) and out.dtype == np.float32
    N = n * H * W
    for c in range(C):
        lo, hi = img[..., c].min(), img[..., c].max()
        v = out[..., c].ravel().astype(np.float64)
        assert v.min() >= lo and v.max() <= hi
        sd = (hi - lo) / np.sqrt(12)
        assert abs(v.mean() - (lo + hi) / 2) < 5 * sd / np.sqrt(N)
        assert sps.kstest(v, sps.uniform(lo, hi - lo).cdf).pvalue > 1e-3


def test_pixel_draws_whole_input_pixels_with_replacement():
    img = _image(3)
    n = 16
    out = np.asarray(bootstrap.pixel(jax.random.key(5), jnp.asarray(img), n))
    assert out.shape == (n, H, W, C)
    src = img.reshape(-1, C)
    assert len({tuple(r) for r in src}) == H * W  # every input pixel is distinct
    index = {tuple(r): i for i, r in enumerate(src)}
    drawn = np.array([index.get(tuple(r), -1) for r in out.reshape(-1, C)])
    assert (drawn >= 0).all(), "an output pixel is not an input pixel (channels mixed?)"
    per_sample = drawn.reshape(n, H * W)
    # with replacement: expected distinct share 1 − (1 − 1/m)^m ≈ 63%, never a permutation
    distinct = np.array([len(np.unique(s)) for s in per_sample]) / (H * W)
    assert np.all(distinct < 0.75) and np.all(distinct > 0.5)
    counts = np.bincount(drawn, minlength=H * W)
    assert sps.chisquare(counts).pvalue > 1e-3  # every pixel equally likely


@pytest.mark.parametrize("p", [1, 4, 8])
def test_patch_is_a_permutation_of_patches(p):
    img = _image(4)
    n = 4
    out = np.asarray(bootstrap.patch(jax.random.key(6), jnp.asarray(img), n, p))
    assert out.shape == (n, H, W, C)
    ref = _sorted_rows(_tiles(img, p))
    tiles = _tiles(out, p)
    for b in range(n):
        np.testing.assert_array_equal(_sorted_rows(tiles[b]), ref)
    assert not np.array_equal(out[0], img) and not np.array_equal(out[0], out[1])


def test_patch_positions_are_uniform():
    """Tile 0 lands in every position equally often (a uniformly random permutation)."""
    img = np.arange(4 * 4, dtype=np.float32).reshape(4, 4, 1)  # 2x2 patches: 4 distinct tiles
    out = np.asarray(bootstrap.patch(jax.random.key(7), img, 2000, 2))
    where0 = np.argmax(_tiles(out, 2)[:, :, 0, 0, 0] == 0, axis=1)
    assert sps.chisquare(np.bincount(where0, minlength=4)).pvalue > 1e-3


# ----------------------------------------------------------------------------- determinism


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_chunked_draw_equals_full_draw_bit_for_bit(name):
    key = jax.random.key(11)
    img = jnp.asarray(_image(5))
    full = np.asarray(bootstrap.sample(name, key, img, 8, patch=8, width=1.5))
    parts = [
        bootstrap.sample_range(name, key, img, a, b - a, patch=8, width=1.5) for a, b in ((0, 3), (3, 8))
    ]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    np.testing.assert_array_equal(  # fewer samples: a prefix of the draw
        np.asarray(bootstrap.sample(name, key, img, 3, patch=8, width=1.5)), full[:3]
    )
    # traced start, as in the pipeline's jitted lax.map over chunks
    chunks = jax.jit(
        lambda k, x: jax.lax.map(
            lambda c: bootstrap.sample_range(name, k, x, c * 2, 2, patch=8, width=1.5), jnp.arange(4)
        )
    )(key, img)
    np.testing.assert_array_equal(np.asarray(chunks).reshape(full.shape), full)


@pytest.mark.parametrize("name", NAMES)
def test_same_key_same_samples_other_key_other_samples(name):
    img = jnp.asarray(_image(6))
    a = bootstrap.sample(name, jax.random.key(1), img, 3, patch=4)
    b = bootstrap.sample(name, jax.random.key(1), img, 3, patch=4)
    c = bootstrap.sample(name, jax.random.key(2), img, 3, patch=4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))  # samples differ


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap_over_images_and_keys(name):
    imgs = jnp.stack([jnp.asarray(_image(s)) for s in range(3)])
    keys = jax.random.split(jax.random.key(9), 3)
    fn = bootstrap.get_sampler(name)
    kw = {"patch": 8} if name == "patch" else {}
    eager = np.stack([np.asarray(fn(keys[i], imgs[i], 2, **kw)) for i in range(3)])
    jitted = jax.jit(fn, static_argnums=2, static_argnames=tuple(kw))
    np.testing.assert_array_equal(np.asarray(jitted(keys[0], imgs[0], 2, **kw)), eager[0])
    vm = jax.jit(jax.vmap(lambda k, x: fn(k, x, 2, **kw)))(keys, imgs)
    assert vm.shape == (3, 2, H, W, C)
    np.testing.assert_array_equal(np.asarray(vm), eager)


def test_raw_uint32_keys_and_other_float_dtypes():
    img = _image(7)
    raw = jax.random.PRNGKey(0)
    out = bootstrap.normal(raw, img, 2)
    assert out.shape == (2, H, W, C)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(bootstrap.normal(raw, img, 2)))
    vm = jax.vmap(lambda k: bootstrap.pixel(k, img, 1))(jax.random.split(raw, 2))
    assert vm.shape == (2, 1, H, W, C)
    half = bootstrap.uniform(jax.random.key(0), img.astype(np.float16), 2)
    assert half.dtype == jnp.float16


def test_width_is_traceable():
    img = jnp.asarray(_image(8))
    f = jax.jit(lambda w: bootstrap.normal(jax.random.key(0), img, 2, width=w))
    np.testing.assert_allclose(
        np.asarray(f(2.0)),
        np.asarray(bootstrap.normal(jax.random.key(0), img, 2, width=2.0)),
        rtol=1e-6,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- registry, errors


def test_registry():
    assert set(bootstrap.SAMPLERS) == set(NAMES)
    for name in NAMES:
        assert bootstrap.get_sampler(name) is getattr(bootstrap, name)
    with pytest.raises(ValueError, match="known: normal, pixel, patch, uniform"):
        bootstrap.get_sampler("gaussian")
    with pytest.raises(ValueError, match="unknown sampler 'gauss'"):
        bootstrap.sample("gauss", jax.random.key(0), _image(), 1)
    with pytest.raises(ValueError, match="unknown sampler"):
        bootstrap.sample_range("nope", jax.random.key(0), _image(), 0, 1)


@pytest.mark.parametrize("name", NAMES)
def test_bad_image_and_counts(name):
    key = jax.random.key(0)
    kw = {"patch": 8}
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        bootstrap.sample(name, key, _image()[..., 0], 1, **kw)  # rank 2
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        bootstrap.sample(name, key, _image()[None], 1, **kw)  # rank 4
    with pytest.raises(TypeError, match="float"):
        bootstrap.sample(name, key, np.zeros((H, W, C), np.uint8), 1, **kw)
    with pytest.raises(TypeError, match="array"):
        bootstrap.sample(name, key, [[[0.0]]], 1, **kw)
    for n in (0, -2):
        with pytest.raises(ValueError, match="count must be >= 1"):
            bootstrap.sample(name, key, _image(), n, **kw)
    with pytest.raises(TypeError, match="int"):
        bootstrap.sample(name, key, _image(), 2.0, **kw)
    with pytest.raises(ValueError, match="start must be >= 0"):
        bootstrap.sample_range(name, key, _image(), -1, 2, **kw)
    with pytest.raises(TypeError, match="PRNG key"):
        bootstrap.sample(name, 0, _image(), 1, **kw)
    with pytest.raises(TypeError, match="PRNG key"):
        bootstrap.sample(name, jnp.zeros(2, jnp.float32), _image(), 1, **kw)
    with pytest.raises(ValueError, match="single PRNG key"):
        bootstrap.sample(name, jax.random.split(key, 2), _image(), 1, **kw)


def test_bad_patch_and_width():
    key, img = jax.random.key(0), _image()
    with pytest.raises(ValueError, match="multiples of patch=5"):
        bootstrap.patch(key, img, 1, 5)
    with pytest.raises(ValueError, match="multiples of patch=16"):
        bootstrap.patch(key, img, 1, 16)  # divides H=16, not W=24
    with pytest.raises(ValueError, match="needs patch="):
        bootstrap.sample("patch", key, img, 1)
    with pytest.raises(ValueError, match="patch must be >= 1"):
        bootstrap.patch(key, img, 1, 0)
    for w in (0.0, -1.0):
        with pytest.raises(ValueError, match="width must be > 0"):
            bootstrap.normal(key, img, 1, width=w)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        bootstrap.normal(key, np.ones((1, 1, 3), np.float32), 1)
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda n: bootstrap.normal(key, img, n))(2)
