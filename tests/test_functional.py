"""The functional core (null_maps, arb_stats, shrink) and the runner over any map function.

Properties: the three pieces called inside a user's jit/vmap, lax.scan and shard_map give the
runner's result bit for bit; a map function equal to the bundle's map gives the bundle's result
bit for bit; a user's sampler, p-value, π₀ and lfdr functions are used where names are; bad map
functions and samplers fail with one error naming them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from arb_jax import load_vit, null_images, regularize_attention
from arb_jax.core import bootstrap, stats
from arb_jax.core.choices import page
from arb_jax.core.functional import SCALES, arb_stats, null_maps, shrink
from arb_jax.core.statistics import arb_statistics
from arb_jax.io import images
from arb_jax.models import MAPS, cdam_map, cls_attention_map, rollout_map
from arb_jax.registry import Registry

B = 3


@pytest.fixture(scope="module")
def vit():
    return load_vit("demo").at_size(64)


@pytest.fixture(scope="module")
def x():
    photos = images.sample_images()
    return np.stack([images.prepare(photos[n], (64, 64), 8) for n in ("astronaut", "coffee", "chelsea")])


@pytest.fixture(scope="module")
def reference(vit, x):
    return regularize_attention(vit, x, jax.random.key(5), n_boot=B)


def _keys(n: int) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(n))


@pytest.fixture(scope="module")
def maps_and_nulls(vit, x):
    fn = cls_attention_map(vit)
    m = fn(vit.params, jnp.asarray(x))
    nm = null_maps(fn, vit.params, jnp.asarray(x), _keys(3), n_boot=B, patch=8, chunk=2)
    return m, nm


def _pieces(m, nm):
    st = arb_stats(m, nm)
    return st, shrink(m, st, patch=8)


def _assert_equal(st, maps, ref):
    """Equal bit for bit, except the lfdr: its Newton fit vmapped over maps rounds differently
    (XLA batches its linear algebra), by at most a few ulps."""
    for name in ("z", "p", "pi0", "mu0", "sigma0"):
        np.testing.assert_array_equal(getattr(st, name), ref[name], err_msg=name)
    np.testing.assert_allclose(st.lfdr, ref["lfdr"], rtol=0, atol=1e-6)
    for name in ("z", "p", "pi0"):
        np.testing.assert_array_equal(maps[name], ref["maps"][name], err_msg=name)
    scale = float(np.max(np.asarray(ref["maps"]["z"])))
    np.testing.assert_allclose(maps["soft"], ref["maps"]["soft"], rtol=0, atol=1e-6 * scale)  # A·(1 − lfdr)
    flips = np.asarray(maps["lfdr"] != ref["maps"]["lfdr"])
    assert np.all(np.abs(np.asarray(ref["lfdr"])[flips] - 0.3) < 1e-6)  # only ties with β


@pytest.fixture(scope="module")
def per_image(maps_and_nulls):
    m, nm = maps_and_nulls
    out = [arb_statistics(m[i], nm[i], patch=8) for i in range(3)]
    return jax.tree.map(lambda *a: jnp.stack(a), *out)


def test_null_maps_are_the_maps_of_the_pipelines_null_images(vit, x, maps_and_nulls):
    _, nm = maps_and_nulls
    assert nm.shape == (3, B, 8, 8)
    direct = np.stack([vit.cls_attention(im).mean(1) for im in null_images(jax.random.key(5), x, B)])
    np.testing.assert_allclose(nm, direct, atol=1e-6)  # float32: other batch shapes
    one = null_maps(cls_attention_map(vit), vit.params, jnp.asarray(x), _keys(3), n_boot=B, patch=8)
    np.testing.assert_allclose(one, nm, atol=1e-6)  # chunk does not change the null images


def test_pieces_inside_jit_and_vmap(maps_and_nulls, per_image):
    st, maps = jax.jit(jax.vmap(_pieces))(*maps_and_nulls)
    _assert_equal(st, maps, per_image)


def test_pieces_inside_lax_scan(maps_and_nulls, per_image):
    def step(carry, inp):
        st, maps = _pieces(*inp)
        return carry + st.pi0, (st, maps)

    total, (st, maps) = jax.jit(lambda a, b: jax.lax.scan(step, 0.0, (a, b)))(*maps_and_nulls)
    _assert_equal(st, maps, per_image)
    np.testing.assert_allclose(total, np.sum(per_image["pi0"]), rtol=1e-6)


def test_pieces_inside_shard_map(maps_and_nulls, per_image):
    mesh = Mesh(np.array(jax.devices()[:1]), ("i",))
    spec = PartitionSpec("i")
    sharded = jax.shard_map(jax.vmap(_pieces), mesh=mesh, in_specs=(spec, spec), out_specs=spec)
    st, maps = jax.jit(sharded)(*maps_and_nulls)
    _assert_equal(st, maps, per_image)


def test_pieces_agree_with_the_runner(maps_and_nulls, reference):
    st, maps = jax.jit(jax.vmap(_pieces))(*maps_and_nulls)
    np.testing.assert_allclose(st.z, reference.z, atol=1e-5)  # the forwards' batch shapes differ
    assert np.mean(np.abs(np.asarray(st.p) - np.asarray(reference.p)) > 1e-6) < 0.02


@pytest.mark.slow
def test_map_function_runner_equals_the_bundle(vit, x, reference):
    got = regularize_attention(
        cls_attention_map(vit), x, jax.random.key(5), n_boot=B, params=vit.params, patch=8
    )
    for k, v in reference.to_numpy().items():
        np.testing.assert_array_equal(got.to_numpy()[k], v, err_msg=k)
    roll = regularize_attention(rollout_map(vit), x, jax.random.key(5), n_boot=B, params=vit.params, patch=8)
    assert roll.attn.shape == reference.attn.shape and not np.allclose(roll.attn, reference.attn)
    total = np.asarray(roll.attn.sum((1, 2)))  # the CLS row of a row-stochastic product, CLS column left out
    assert np.all((total > 0) & (total <= 1 + 1e-6))
    # CDAM is signed: identity scale; with the log it is refused in one line naming the function
    cdam = cdam_map(vit, class_index=0)
    res = regularize_attention(
        cdam, x, jax.random.key(5), n_boot=B, params=vit.params, patch=8, scale="identity"
    )
    assert (np.asarray(res.attn) < 0).any() and np.isfinite(res.z).all()
    with pytest.raises(ValueError, match=r"map function cdam.* negative scores .* scale='identity'"):
        regularize_attention(cdam, x, jax.random.key(5), n_boot=B, params=vit.params, patch=8)


class TinyMapper(nn.Module):
    """A user's own Flax model: a score per 8 x 8 patch from a linear projection of its pixels."""

    @nn.compact
    def __call__(self, images):
        n, H, W, C = images.shape
        patches = images.reshape(n, H // 8, 8, W // 8, 8, C).transpose(0, 1, 3, 2, 4, 5)
        scores = nn.Dense(1)(patches.reshape(n, H // 8, W // 8, -1))[..., 0]
        return jax.nn.softplus(scores)  # > 0: the default log scale applies


def test_a_users_flax_model_runs_in_the_pipeline_and_alone(x):
    model = TinyMapper()
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))

    def map_fn(p, imgs):
        return model.apply(p, imgs)

    res = regularize_attention(map_fn, x, jax.random.key(1), n_boot=4, params=params, patch=8)
    assert res.z.shape == (3, 8, 8) and np.all((res.p >= 0) & (res.p <= 1))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(3))
    nm = null_maps(map_fn, params, jnp.asarray(x), keys, n_boot=4, patch=8)
    st, _ = jax.vmap(_pieces)(map_fn(params, jnp.asarray(x)), nm)
    np.testing.assert_allclose(st.z, res.z, atol=1e-5)


@pytest.mark.slow
def test_user_functions_where_names_are_accepted(vit, x, reference):
    fn = cls_attention_map(vit)
    kw = dict(n_boot=B, params=vit.params, patch=8)

    def upper(z, z_null):  # eq. 4 written out: the registered "upper" must agree
        return jnp.mean(z_null[None, :] >= z[:, None], axis=1)

    got = regularize_attention(fn, x, jax.random.key(5), pvalue=upper, **kw)
    np.testing.assert_allclose(got.p, reference.p, atol=1e-7)
    half = regularize_attention(fn, x, jax.random.key(5), pi0_method=lambda p: 0.5, lfdr_pi0="shared", **kw)
    np.testing.assert_array_equal(half.pi0, [0.5] * 3)
    np.testing.assert_array_equal(half.lfdr_pi0, [0.5] * 3)
    flat = regularize_attention(
        fn, x, jax.random.key(5), lfdr_null=lambda z, zn, pi0: jnp.full_like(z, pi0), **kw
    )
    np.testing.assert_array_equal(flat.lfdr, np.ones_like(flat.lfdr))

    def shuffle(key, image):  # a user's sampler: the image's pixels permuted
        flat_img = image.reshape(-1, 3)
        return flat_img[jax.random.permutation(key, flat_img.shape[0])].reshape(image.shape)

    mine = regularize_attention(fn, x, jax.random.key(5), sampler=shuffle, **kw)
    assert np.isfinite(mine.z).all() and not np.array_equal(mine.z, reference.z)


def test_bad_map_functions_and_samplers_fail_in_one_line(vit, x):
    def wrong_shape(p, imgs):
        return jnp.ones((imgs.shape[0], 3, 3))

    # 3 images, each with its 2 null images in one forward: 9 maps of 8 x 8 expected
    with pytest.raises(ValueError, match=r"map function .*wrong_shape.* \(9, 3, 3\).*expected \(9, 8, 8\)"):
        regularize_attention(wrong_shape, x, jax.random.key(0), n_boot=2, params=None, patch=8)

    def not_finite(p, imgs):
        return jnp.full(imgs.shape[:1] + (8, 8), jnp.nan)

    with pytest.raises(ValueError, match=r"map function .*not_finite.* non-finite"):
        regularize_attention(not_finite, x, jax.random.key(0), n_boot=2, params=None, patch=8)

    def small(key, image):
        return image[:8]

    fn = cls_attention_map(vit)
    with pytest.raises(ValueError, match=r"sampler .*small returned float32\(8, 64, 3\)"):
        regularize_attention(fn, x, jax.random.key(0), n_boot=2, params=vit.params, patch=8, sampler=small)
    with pytest.raises(TypeError, match="needs patch="):
        regularize_attention(fn, x, jax.random.key(0), params=vit.params)
    with pytest.raises(ValueError, match="heads=True needs a ViT bundle"):
        regularize_attention(fn, x, jax.random.key(0), params=vit.params, patch=8, heads=True)
    with pytest.raises(ValueError, match=r"negative scores .* scale='identity'"):
        arb_stats(-np.ones((4, 4)), np.ones((2, 4, 4)))


def test_registries_list_their_names_in_errors_and_generate_the_docs():
    with pytest.raises(ValueError, match=r"unknown sampler 'gauss'; known: normal, pixel, patch, uniform"):
        bootstrap.SAMPLERS["gauss"]
    with pytest.raises(ValueError, match=r"unknown p-value method 'lower'; known: upper, plus_one"):
        stats.PVALUE_METHODS.check("lower")
    assert list(SCALES) == ["log", "identity"] and list(MAPS) == ["cls_attention", "rollout", "cdam"]
    reg: Registry = Registry("thing", "(x) -> y")
    reg.add("a", abs, "absolute value")
    with pytest.raises(ValueError, match="registered already"):
        reg.add("a", abs, "again")
    assert reg.resolve("a") is abs and reg.resolve(len) is len and reg.help() == "a: absolute value"
    from pathlib import Path

    committed = (Path(__file__).resolve().parents[1] / "docs" / "choices.md").read_text()
    assert committed == page(), "docs/choices.md is stale: python -m arb_jax.core.choices > docs/choices.md"


def test_identity_scale_for_signed_maps_standardises_the_raw_scores():
    rng = np.random.default_rng(0)
    m, null = rng.normal(size=(6, 6)).astype(np.float32), rng.normal(size=(4, 6, 6)).astype(np.float32)
    st = arb_stats(m, null, scale="identity")
    mu, sd = null.astype(np.float64).mean(), null.astype(np.float64).std()
    np.testing.assert_allclose(st.z, (m - mu) / sd, atol=1e-5)
    np.testing.assert_allclose(st.mu0, mu, atol=1e-6)
