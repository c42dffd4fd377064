"""The ARB pipeline (arb_jax.core.pipeline.regularize_attention) end to end.

Models: ``test_tiny8`` with RANDOM-INIT weights (test fixtures, not trained models) at 64 x 64 px
(an 8 x 8 patch grid, 64 px² per patch) and 32 x 32 px. Statistics are checked against a plain
numpy computation on the nearest-upsampled pixel maps, as the reference code computes them
(docs/method.md §1, §3, §4), with statsmodels' ``local_fdr`` for the lfdr. The 4-device check runs in a
subprocess with ``--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import gc
import textwrap
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _subproc import jax_env, run_python  # tests/_subproc.py
from statsmodels.stats.multitest import local_fdr as sm_local_fdr

from arb_jax.core import bootstrap, engine, pipeline, regularize, stats
from arb_jax.core.options import split_options
from arb_jax.core.pipeline import ARBOptions, ARBResult
from arb_jax.core.regularize import Percentile
from arb_jax.io import images
from arb_jax.models import build_vit, xla_options

PATCH = 8
B = 6
TINY = float(np.finfo(np.float32).tiny)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vit64():
    return build_vit("test_tiny8", None, image_size=(64, 64))  # random-init FIXTURE


@pytest.fixture(scope="module")
def photos64() -> jax.Array:
    """Two scikit-image photos, ImageNet-normalised, 64 x 64."""
    sample = images.sample_images()
    return jnp.stack([images.prepare(sample[name], (64, 64), PATCH) for name in ("astronaut", "coffee")])


@pytest.fixture(scope="module")
def keys2() -> jax.Array:
    return jax.random.split(jax.random.key(7), 2)


@pytest.fixture(scope="module")
def chunk_runs(vit64, photos64, keys2):
    """B = 6 with boot_chunk 1, 3 and None (= 6): {chunk: (ARBResult, traces before, after)}."""
    out = {}
    for chunk in (1, 3, None):
        before = engine.trace_count()
        res = pipeline.regularize_attention(
            vit64, photos64, keys2, n_boot=B, boot_chunk=chunk, heads=True, return_null=True
        )
        out[chunk] = (res, before, engine.trace_count())
    return out


# ----------------------------------------------------------------------------------- numpy reference


def upsample(a: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Nearest-neighbour upsampling of (..., h, w) to (..., h·patch, w·patch)."""
    return np.repeat(np.repeat(a, patch, axis=-2), patch, axis=-1)


def statsmodels_lfdr(z: np.ndarray) -> np.ndarray:
    return sm_local_fdr(z, null_proportion=1.0, deg=7, nbins=30)


def pixel_reference(
    attn: np.ndarray, null: np.ndarray, alpha=0.3, beta=0.3, lfdr_fn=statsmodels_lfdr
) -> dict:
    """docs/method.md §3–4 on the upsampled pixels of one image, float64 numpy; alpha may be a Percentile.

    attn (h, w), null (B, h, w). Returns per-pixel statistics downsampled to the patch grid.
    """
    a = upsample(attn.astype(np.float64)).ravel()
    a0 = upsample(null.astype(np.float64)).reshape(null.shape[0], -1)
    log_a, log_0 = np.log(np.maximum(a, TINY)), np.log(np.maximum(a0, TINY))
    mu0, sigma0 = log_0.mean(), log_0.std()
    z = (log_a - mu0) / sigma0
    z0 = np.sort(((log_0 - mu0) / sigma0).ravel())
    p = (z0.size - np.searchsorted(z0, z, side="left")) / z0.size  # eq. 4
    lfdr = lfdr_fn(z)  # eq. 5, Efron
    lam = np.asarray(stats.DEFAULT_LAMBDAS)
    pi0_lambda = np.array([(p >= v).sum() / (p.size * (1 - v)) for v in lam])
    smoother = stats.smoother_matrix(stats.DEFAULT_LAMBDAS, 3.0)  # R smooth.spline(df = 3)
    pi0_raw = (smoother @ pi0_lambda)[-1]
    pi0 = min(max(pi0_raw, 0.0), 1.0)
    a_z = a * (z >= 0)
    t_alpha = np.percentile(p, alpha.q) if isinstance(alpha, Percentile) else alpha
    maps = {
        "z": a_z,
        "p": a_z * (p <= t_alpha),
        "lfdr": a_z * (lfdr <= beta),
        "pi0": a_z * (p <= np.percentile(p, 100 * (1 - pi0))),
        "soft": a * (1 - lfdr),
    }
    h, w = attn.shape

    def grid(v):  # every pixel of a patch is equal: take one
        v = v.reshape(h * PATCH, w * PATCH)
        assert np.array_equal(upsample(v[::PATCH, ::PATCH]), v)
        return v[::PATCH, ::PATCH]

    return {
        "z": grid(z),
        "p": grid(p),
        "lfdr": grid(lfdr),
        "mu0": mu0,
        "sigma0": sigma0,
        "pi0": pi0,
        "pi0_raw": pi0_raw,
        "maps": {k: grid(v) for k, v in maps.items()},
    }


def assert_matches_reference(got: dict, ref: dict, lfdr_tol: float = 1e-4) -> None:
    """Our float32 grid statistics against the float64 pixel reference of one image."""
    np.testing.assert_allclose(got["mu0"], ref["mu0"], rtol=1e-6)
    np.testing.assert_allclose(got["sigma0"], ref["sigma0"], rtol=1e-5)
    np.testing.assert_allclose(got["z"], ref["z"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["p"], ref["p"].astype(np.float32))
    np.testing.assert_allclose(got["lfdr"], ref["lfdr"], atol=lfdr_tol)
    np.testing.assert_allclose(got["pi0"], ref["pi0"], atol=1e-5)
    for k in ("z", "p", "lfdr", "pi0"):
        np.testing.assert_array_equal(np.asarray(got["maps"][k]) != 0, ref["maps"][k] != 0, err_msg=k)
        np.testing.assert_allclose(got["maps"][k], ref["maps"][k], rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(got["maps"]["soft"], ref["maps"]["soft"], atol=lfdr_tol)


# ----------------------------------------------------------------------------------- chunks, keys, cache


@pytest.mark.slow
def test_result_does_not_depend_on_the_chunk_size(chunk_runs):
    """boot_chunk 1, 3, None: the same null images and, as every forward has >= 2 images of
    65 tokens (XLA:CPU then picks the same kernels for every batch), bit-identical results."""
    ref = chunk_runs[None][0].to_numpy()
    for chunk in (1, 3):
        got = chunk_runs[chunk][0].to_numpy()
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"boot_chunk={chunk}: {k}")


@pytest.mark.slow
def test_shapes_heads_and_null(chunk_runs, vit64):
    res = chunk_runs[3][0]
    assert isinstance(res, ARBResult) and res.options.boot_chunk == 3 and res.options.n_boot == B
    h, w = vit64.grid
    for k in ("attn", "z", "p", "lfdr"):
        assert getattr(res, k).shape == (2, h, w), k
    assert res.attn_heads.shape == (2, vit64.n_heads, h, w)
    np.testing.assert_allclose(res.attn_heads.mean(1), res.attn, rtol=1e-6)
    assert res.z_null.shape == (2, B, h, w)
    assert res.pi0.shape == res.mu0.shape == res.sigma0.shape == (2,)
    assert set(res.maps) == {"z", "p", "lfdr", "pi0", "soft"}
    assert all(m.shape == (2, h, w) for m in res.maps.values())
    assert np.all((np.asarray(res.p) >= 0) & (np.asarray(res.p) <= 1))
    assert np.all((np.asarray(res.pi0) >= 0) & (np.asarray(res.pi0) <= 1))


@pytest.mark.slow
def test_same_key_is_bit_identical_and_other_keys_differ(chunk_runs, vit64, photos64, keys2):
    first = chunk_runs[3][0].to_numpy()
    again = pipeline.regularize_attention(
        vit64, photos64, keys2, n_boot=B, boot_chunk=3, heads=True, return_null=True
    ).to_numpy()
    for k in first:
        np.testing.assert_array_equal(again[k], first[k], err_msg=k)
    other = pipeline.regularize_attention(
        vit64,
        photos64,
        jax.random.split(jax.random.key(8), 2),
        n_boot=B,
        boot_chunk=3,
        heads=True,
        return_null=True,
    )
    np.testing.assert_array_equal(other.attn, first["attn"])  # the observed maps: no randomness
    assert not np.array_equal(other.z_null, first["z_null"])
    assert not np.array_equal(other.z, first["z"])


@pytest.mark.slow
def test_calls_reuse_the_compiled_function_and_models_never_share_it_wrongly(
    chunk_runs, vit64, photos64, keys2
):
    for _, before, after in chunk_runs.values():
        assert after == before + 1  # one trace per option set
    n = engine.trace_count()
    kw = dict(n_boot=B, boot_chunk=3, heads=True, return_null=True)
    first = pipeline.regularize_attention(vit64, photos64, keys2, **kw)
    assert engine.trace_count() == n  # second call: no retrace, no recompile
    # other weights, same architecture: the same function, with the new parameters
    other = build_vit("test_tiny8", None, image_size=(64, 64), seed=1)  # random-init FIXTURE
    res = pipeline.regularize_attention(other, photos64, keys2, **kw)
    assert engine.trace_count() == n
    assert not np.array_equal(res.attn, first.attn)
    np.testing.assert_allclose(res.attn, other.cls_attention(photos64).mean(1), rtol=1e-6)
    # thresholds and width are traced values: changing them does not retrace either
    pipeline.regularize_attention(vit64, photos64, keys2, alpha=0.1, beta=0.05, width=2.0, **kw)
    assert engine.trace_count() == n
    # the cache holds no model alive: a dead model's entry cannot be hit by a new one
    ref = weakref.ref(other)
    del other, res
    gc.collect()
    assert ref() is None
    # different architectures or dtypes get different functions
    static = split_options(ARBOptions(n_boot=B))[0]
    same = engine.compiled(vit64, static, None)
    assert engine.compiled(build_vit("test_tiny8", None, image_size=(32, 32)), static, None) is same
    for different in (
        build_vit("test_tiny16", None, image_size=(64, 64)),
        build_vit("test_tiny8", None, image_size=(64, 64), dtype="bfloat16"),
    ):
        assert engine.compiled(different, static, None) is not same


@pytest.mark.slow
def test_bfloat16_model_with_percentile_threshold():
    """A bfloat16 model (its own compiled function) with alpha = the 20th percentile of p;
    without heads=True / return_null=True no per-head maps or null z."""
    vit = build_vit("test_tiny8", None, image_size=(32, 32), dtype="bfloat16")  # random-init FIXTURE
    x = jax.random.normal(jax.random.key(3), (1, 32, 32, 3))
    n = engine.trace_count()
    res = pipeline.regularize_attention(vit, x, jax.random.key(4), n_boot=3, alpha=Percentile(20))
    assert engine.trace_count() == n + 1
    assert res.options.alpha == Percentile(20.0) and hash(res.options)
    assert res.attn_heads is None and res.z_null is None
    assert "attn_heads" not in res.to_numpy() and "z_null" not in res.to_numpy()
    for k, v in res.to_numpy().items():
        assert np.all(np.isfinite(v)), k
    want = regularize.p_threshold(res.attn, res.z, res.p, Percentile(20), map_ndim=2, repeat=PATCH * PATCH)
    np.testing.assert_array_equal(res.maps["p"], want)
    t = np.percentile(np.repeat(np.asarray(res.p).ravel(), PATCH * PATCH), 20)  # of the pixels
    np.testing.assert_array_equal(res.maps["p"], regularize.p_threshold(res.attn, res.z, res.p, t))


# ----------------------------------------------------------------------------------- numpy, pixels


@pytest.mark.slow
def test_pipeline_equals_numpy_pixel_level_computation(chunk_runs, vit64, photos64, keys2):
    """z, p, lfdr, π₀ and the maps of the pipeline (patch grid) against float64 numpy on the
    nearest-upsampled pixel maps, from null maps computed here independently."""
    res = chunk_runs[None][0]
    draw = [bootstrap.sample("normal", k, x, B) for k, x in zip(keys2, photos64, strict=True)]
    # compiled as the pipeline compiles its forward (the same CPU dot library, xla_options)
    attn_fn = xla_options.jit(lambda x: vit64.apply(vit64.params, x)["attn"].mean(1))
    null = np.asarray(attn_fn(jnp.concatenate(draw))).reshape(2, B, *vit64.grid)
    attn = np.asarray(attn_fn(photos64))
    np.testing.assert_allclose(res.attn, attn, rtol=1e-6)
    for i in range(2):
        got = jax.tree.map(lambda a, i=i: np.asarray(a[i]), res.to_numpy())
        got["maps"] = {k: got[f"map_{k}"] for k in res.maps}
        assert_matches_reference(got, pixel_reference(attn[i], null[i]))


@pytest.mark.slow
def test_null_images_are_the_null_the_pipeline_ran(chunk_runs, vit64, photos64, keys2):
    """null_images gives the pipeline's bootstrap images: the ViT on them, standardised with the
    returned mu0 / sigma0 (of log attention), reproduces the returned z_null; one key gives
    fold_in(key, i)."""
    res = chunk_runs[3][0]
    nulls = pipeline.null_images(keys2, photos64, B)
    assert nulls.shape == (2, B, 64, 64, 3) and nulls.dtype == jnp.float32
    attn = np.asarray(vit64.apply(vit64.params, nulls.reshape(-1, 64, 64, 3))["attn"].mean(1))
    z_null = (
        np.log(attn.reshape(2, B, *vit64.grid)) - np.asarray(res.mu0)[:, None, None, None]
    ) / np.asarray(res.sigma0)[:, None, None, None]
    np.testing.assert_allclose(z_null, res.z_null, rtol=1e-4, atol=1e-4)
    key = jax.random.key(11)
    for sampler in ("normal", "pixel", "patch", "uniform"):
        got = pipeline.null_images(key, photos64, 3, sampler, width=0.5, patch=PATCH)
        for i in range(2):
            want = bootstrap.sample(
                sampler, jax.random.fold_in(key, i), photos64[i], 3, width=0.5, patch=PATCH
            )
            np.testing.assert_array_equal(got[i], want, err_msg=sampler)
    with pytest.raises(ValueError, match="patch sampler needs patch|needs patch="):
        pipeline.null_images(key, photos64, 3, "patch")
    with pytest.raises(ValueError, match="n_boot must be >= 1"):
        pipeline.null_images(key, photos64, 0)
    with pytest.raises(ValueError, match=r"shape \(N, H, W, 3\)"):
        pipeline.null_images(key, photos64[0], 3)


STAT_OPTS = ARBOptions(n_boot=B, alpha=Percentile(30))


def _maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    attn = rng.dirichlet(np.full(64, 0.5)).reshape(8, 8).astype(np.float32)
    null = rng.dirichlet(np.full(64, 2.0), size=B).reshape(B, 8, 8).astype(np.float32)
    return attn, null


def test_statistics_with_a_percentile_threshold_equal_numpy():
    """arb_statistics (one image) against the pixel reference, alpha = Percentile(30) of the
    4096 pixel p-values (not of the 64 patch values: numpy's linear percentile differs)."""
    attn, null = _maps(0)
    got = jax.tree.map(np.asarray, pipeline.arb_statistics(attn, null, STAT_OPTS, patch=PATCH))
    assert_matches_reference(got, pixel_reference(attn, null, alpha=Percentile(30)))
    grid_t = np.percentile(got["p"], 30)
    assert not np.array_equal(got["maps"]["p"] != 0, (got["maps"]["z"] != 0) & (got["p"] <= grid_t))


def test_zero_scores_are_raised_to_float32_tiny():
    """Exact zeros (bfloat16 underflow) in the observed map and in a null map: log(tiny), finite
    z, the zero patches removed by every rule; the rest as the pixel reference. The lfdr is
    ill-posed here (z from −19 to 3: fewer non-empty histogram bins than the 8 parameters, no
    MLE; statsmodels' IRLS overflows), so the reference takes ours and checks only its use."""
    attn, null = _maps(0)
    attn[0, :3] = 0.0
    null[2, 5, 5] = 0.0
    got = jax.tree.map(np.asarray, pipeline.arb_statistics(attn, null, STAT_OPTS, patch=PATCH))
    ref = pixel_reference(
        attn, null, alpha=Percentile(30), lfdr_fn=lambda z: upsample(got["lfdr"]).ravel().astype(np.float64)
    )
    assert_matches_reference(got, ref)
    assert np.all((got["lfdr"] >= 0) & (got["lfdr"] <= 1))
    assert np.all(np.isfinite(got["z"])) and np.all(np.isfinite(got["z_null"]))
    z_zero = (np.log(np.float32(TINY)) - got["mu0"]) / got["sigma0"]
    np.testing.assert_allclose(got["z"][0, :3], z_zero, rtol=1e-6)
    assert got["z"][0, :3].max() < got["z"][1:].min()
    for k in ("z", "p", "lfdr", "pi0", "soft"):
        assert np.all(got["maps"][k][0, :3] == 0), k


def test_pi0_is_clamped_to_the_unit_interval():
    """p-values spread over [0, 0.7]: the cubic smoother dips below 0 (R would stop); π₀ is 0
    and the π₀ threshold keeps every z-passing patch."""
    rng = np.random.default_rng(1)
    log_null = rng.permutation(np.linspace(-6, -2, B * 64))
    null = np.exp(log_null).reshape(B, 8, 8).astype(np.float32)
    attn = np.exp(rng.permutation(np.linspace(-4.8 + 1e-3, -2 + 1e-3, 64))).reshape(8, 8)
    attn = attn.astype(np.float32)
    got = jax.tree.map(np.asarray, pipeline.arb_statistics(attn, null, STAT_OPTS, patch=PATCH))
    ref = pixel_reference(attn, null, alpha=Percentile(30))
    assert ref["pi0_raw"] < -0.05
    raw = stats.pi0est_unchecked(
        jnp.asarray(got["p"].reshape(1, -1)), stats.DEFAULT_LAMBDAS, "smoother", 3.0
    ).pi0[0]  # unchecked: R (and stats.pi0est) refuse max(p) < 0.95
    assert raw < -0.05  # what stats.pi0est returns unclamped
    assert got["pi0"] == 0.0
    np.testing.assert_array_equal(got["maps"]["pi0"], got["maps"]["z"])
    assert_matches_reference(got, ref, lfdr_tol=1e-3)


# ----------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def vit32():
    return build_vit("test_tiny8", None, image_size=(32, 32))  # random-init FIXTURE


GOOD = np.zeros((2, 32, 32, 3), np.float32)


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (GOOD[0], {}, ValueError, r"shape \(N, H, W, 3\)"),
        (GOOD[..., :1], {}, ValueError, r"3 \(RGB\) channels"),
        (GOOD.astype(np.uint8), {}, TypeError, "must be float"),
        (GOOD[:0], {}, ValueError, "empty batch"),
        (np.where(np.arange(3) == 1, np.nan, GOOD), {}, ValueError, "NaN or infinite"),
        (np.zeros((2, 48, 32, 3), np.float32), {}, ValueError, "48x32 but the model was loaded for 32x32"),
        ([[1.0]], {}, TypeError, "images must be an array"),
        (GOOD, {"n_boot": 0}, ValueError, "n_boot must be >= 1, got 0"),
        (GOOD, {"n_boot": 2.5}, TypeError, "n_boot must be an integer, got float"),
        (GOOD, {"n_boot": True}, TypeError, "n_boot must be an integer, got bool"),
        (GOOD, {"boot_chunk": 0}, ValueError, "boot_chunk must be"),
        (GOOD, {"image_chunk": -1}, ValueError, "image_chunk must be"),
        (GOOD, {"sampler": "gaussian"}, ValueError, "unknown sampler 'gaussian'"),
        (GOOD, {"pvalue": "lower"}, ValueError, "unknown pvalue 'lower'"),
        (GOOD, {"pi0_method": "storey"}, ValueError, "unknown pi0_method 'storey'"),
        (GOOD, {"lfdr_null": "normal"}, ValueError, "unknown lfdr_null 'normal'"),
        (GOOD, {"lfdr_pi0": "guess"}, ValueError, "lfdr_pi0 must be a number in"),
        (GOOD, {"lfdr_pi0": 0}, ValueError, r"lfdr_pi0 must lie in \(0, 1\]"),
        (GOOD, {"alpha": 1.5}, ValueError, r"alpha must be a finite number in \[0.0, 1.0\]"),
        (GOOD, {"beta": "0.3"}, TypeError, "beta must be a number or an arb_jax.regularize.Percentile"),
        (GOOD, {"alpha": Percentile(np.array([10.0, 20.0]))}, TypeError, "one concrete number q"),
        (GOOD, {"z_th": float("nan")}, ValueError, "z_th must be a finite number"),
        (GOOD, {"width": 0}, ValueError, "width must be"),
        (GOOD, {"heads": 1}, TypeError, "heads must be True or False"),
        (GOOD, {"n_bootstrap": 3}, TypeError, r"unknown ARB option\(s\) \['n_bootstrap'\]"),
        (GOOD, {"key": jax.random.split(jax.random.key(0), 3)}, ValueError, "one per image \\(2 images\\)"),
        (GOOD, {"key": 0}, TypeError, "key must be a JAX PRNG key"),
        (GOOD, {"key": np.zeros(2, np.int32)}, TypeError, "key must be a JAX PRNG key"),
        (GOOD, {"mesh": "cpu"}, TypeError, "mesh must be a jax.sharding.Mesh"),
    ],
)
def test_bad_input_gets_a_clear_error(vit32, images, kwargs, error, match):
    kwargs = dict(kwargs)
    key = kwargs.pop("key", jax.random.key(0))
    with pytest.raises(error, match=match):
        pipeline.regularize_attention(vit32, images, key, **kwargs)


def test_bad_model_and_mesh_get_a_clear_error(vit32):
    with pytest.raises(TypeError, match="vit must be an arb_jax ViT bundle"):
        pipeline.regularize_attention(object(), GOOD, jax.random.key(0))
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match="mesh axes must be"):
        pipeline.regularize_attention(vit32, GOOD, jax.random.key(0), mesh=mesh)
    with pytest.raises(ValueError, match="does not divide"):
        pipeline.image_mesh(jax.local_devices()[:1], boot=2)
    with pytest.raises(ValueError, match=r"attn must be \(h, w\)"):
        pipeline.arb_statistics(np.ones((4, 4)), np.ones((2, 4, 5)))


def test_options_are_hashable_and_normalised():
    a = ARBOptions(n_boot=np.int64(4), alpha=Percentile(np.float32(10)), beta=np.float32(0.25))
    b = ARBOptions(n_boot=4, alpha=Percentile(10.0), beta=0.25)
    assert a == b and hash(a) == hash(b) and type(a.n_boot) is int
    assert ARBOptions(n_boot=7, boot_chunk=3).chunk == 3 and ARBOptions(n_boot=2, boot_chunk=5).chunk == 3
    assert ARBOptions(n_boot=4).chunk == 5


# ----------------------------------------------------------------------------------- devices

FOUR_DEVICES = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from arb_jax import pipeline
    from arb_jax.models import build_vit
    assert jax.local_device_count() == 4, jax.devices()
    vit = build_vit("test_tiny8", None, image_size=(32, 32))  # random-init FIXTURE
    x = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))  # 5 images: padded to 8 / 6
    one = pipeline.image_mesh(jax.local_devices()[:1])
    runs = {
        "four": {},                                           # default: a mesh over 4 devices
        "one": {"mesh": one},
        "four_g2": {"image_chunk": 2, "boot_chunk": 1},
        "one_g2": {"mesh": one, "image_chunk": 2, "boot_chunk": 1},
        "grid_g2": {"mesh": pipeline.image_mesh(boot=2), "image_chunk": 2, "boot_chunk": 1},
        "grid_auto": {"mesh": pipeline.image_mesh(boot=2), "image_chunk": 2},  # B split 2 + 1
    }
    out = {}
    for name, kw in runs.items():
        res = pipeline.regularize_attention(vit, x, jax.random.key(2), n_boot=3, heads=True,
                                            return_null=True, **kw)
        out.update({f"{name}/{k}": v for k, v in res.to_numpy().items()})
    np.savez(sys.argv[1], **out)
""")


def _run(arrays, name: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(name + "/")}


def assert_within_float_bound(a: dict, b: dict) -> None:
    """Two runs whose forwards had other batch shapes (the module's stated bound): maps equal to
    ~1e-5 relative, z to 1e-4; p, π₀ and the masks differ only at near-ties of what decides them."""
    for k in ("attn", "attn_heads", "mu0", "sigma0"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    for k in ("z", "z_null"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)
    np.testing.assert_allclose(a["lfdr"], b["lfdr"], atol=1e-3)
    n = a["z"].shape[0]
    z, z0 = a["z"].reshape(n, -1), a["z_null"].reshape(n, -1)
    tie = (np.abs(z[:, :, None] - z0[:, None, :]) < 1e-4).any(-1)  # (N, h·w)
    p_moved = (a["p"] != b["p"]).reshape(n, -1)
    assert not (p_moved & ~tie).any(), "a p-value moved without a near-tie"
    same_p = ~p_moved.any(1)
    np.testing.assert_array_equal(a["pi0"][same_p], b["pi0"][same_p])
    near_z = np.abs(z) < 1e-4
    near = {
        "z": near_z,
        "p": near_z | p_moved,
        "lfdr": near_z | (np.abs(a["lfdr"] - 0.3) < 1e-3).reshape(n, -1),
        "pi0": near_z | ~same_p[:, None],
    }
    for k, allowed in near.items():
        moved = ((a[f"map_{k}"] != 0) != (b[f"map_{k}"] != 0)).reshape(n, -1)
        assert not (moved & ~allowed).any(), f"map {k}: a mask moved away from its threshold"
    np.testing.assert_allclose(a["map_soft"], b["map_soft"], atol=1e-3 * a["attn"].max())


@pytest.mark.slow
def test_four_cpu_devices_equal_one_device(tmp_path):
    """5 images on 4 fake CPU devices against 1 device. With image_chunk the per-device shapes
    are fixed: bit-identical, whatever the padding (8 vs 6 images), also on a 2 x 2
    ("images", "boot") mesh. Without it (2 vs 5 images per forward), and on the 2 x 2 mesh
    without a boot_chunk (2 null images per forward instead of 1), within the stated bound."""
    path = tmp_path / "runs.npz"
    run_python(FOUR_DEVICES, str(path), env=jax_env(n_devices=4), timeout=300)
    arrays = dict(np.load(path))
    ref = _run(arrays, "one_g2")
    assert ref["attn"].shape == (5, 4, 4) and ref["z_null"].shape == (5, 3, 4, 4)
    for name in ("four_g2", "grid_g2"):
        got = _run(arrays, name)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name}: {k}")
    assert_within_float_bound(_run(arrays, "four"), _run(arrays, "one"))
    assert_within_float_bound(_run(arrays, "four"), ref)
    assert_within_float_bound(_run(arrays, "grid_auto"), ref)
