"""z-scores, empirical p-values and sRMSD of arb_jax.stats against numpy, plus uniformity.

x64 is enabled with the ``jax.enable_x64`` context manager only, so it does not leak.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arb_jax.core import stats

METHODS = stats.PVALUE_METHODS


def numpy_zstat(attn, attn_null):
    log0 = np.log(attn_null)
    mu0, sigma0 = log0.mean(), log0.std()
    return (np.log(attn) - mu0) / sigma0, (log0 - mu0) / sigma0, mu0, sigma0


def brute_force_pvalues(z, z_null, method):
    """The definitions as n × m counts (docs/method.md §3, eq. 4 and variants)."""
    m = z_null.size
    if method == "upper":
        return (z_null[None, :] >= z[:, None]).sum(1) / m
    if method == "plus_one":
        return (1 + (z_null[None, :] >= z[:, None]).sum(1)) / (1 + m)
    if method == "two_sided":
        return (np.abs(z_null)[None, :] >= np.abs(z)[:, None]).sum(1) / m
    # 1 − #{v in pool: v <= |z_i|}/|pool| = #{v in pool: v > |z_i|}/|pool|, the count form
    # (no rounding of 1 − x); the literal form is checked to agree within 1 ulp of 1
    pool = np.concatenate([np.abs(z), np.abs(z_null)])
    p = (pool[None, :] > np.abs(z)[:, None]).sum(1) / pool.size
    literal = 1 - (pool[None, :] <= np.abs(z)[:, None]).sum(1) / pool.size
    np.testing.assert_allclose(p, literal, rtol=0, atol=np.finfo(np.float64).eps)
    return p


def numpy_srmsd(p):
    n = p.size
    u = (np.arange(1, n + 1) - 0.5) / n
    r = np.sqrt(np.mean((u - np.sort(p)) ** 2))
    return -r if np.median(p) > 0.5 else r


def attention_like(rng, shape):
    """Positive scores with the spread of softmax attention (log-normal around 1/n)."""
    return rng.lognormal(-8.0, 1.0, shape)


# --- z ---------------------------------------------------------------------------------------


def test_zstat_matches_numpy():
    rng = np.random.default_rng(0)
    attn, null = attention_like(rng, 500), attention_like(rng, (4, 500))
    ref = numpy_zstat(attn, null)
    with jax.enable_x64(True):
        got = stats.zstat(attn, null)
        assert got[0].dtype == jnp.float64
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(np.asarray(g), r, rtol=1e-12, atol=1e-12)
    got32 = stats.zstat(attn.astype(np.float32), null.astype(np.float32))
    assert got32[0].dtype == jnp.float32
    # float32: log of scores ~1e-4 is ~-9 ± 5 ulp; z error measured ~1e-6
    np.testing.assert_allclose(np.asarray(got32[0]), ref[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got32[1]), ref[1], rtol=0, atol=1e-5)


def test_zstat_shapes_and_batches():
    rng = np.random.default_rng(1)
    attn, null = attention_like(rng, (3, 200)), attention_like(rng, (3, 2, 200))
    with jax.enable_x64(True):
        z, z_null, mu0, sigma0 = stats.zstat(attn, null)
        assert z.shape == (3, 200) and z_null.shape == (3, 2, 200) and mu0.shape == (3,)
        z_flat, z_null_flat, _, _ = stats.zstat(attn, null.reshape(3, 400))  # (..., m) form
        np.testing.assert_allclose(np.asarray(z_flat), np.asarray(z), rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.asarray(z_null_flat).reshape(3, 2, 200), z_null, rtol=0, atol=1e-13)
        for i in range(3):
            zi, _, m_i, s_i = stats.zstat(attn[i], null[i])
            np.testing.assert_allclose(np.asarray(zi), np.asarray(z[i]), rtol=0, atol=1e-13)
            np.testing.assert_allclose([m_i, s_i], [mu0[i], sigma0[i]], rtol=1e-13)
        # the null standardised by itself: mean 0, std 1
        np.testing.assert_allclose(np.asarray(z_null).reshape(3, -1).mean(1), 0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(z_null).reshape(3, -1).std(1), 1, rtol=1e-12)
    # jit with traced inputs
    jitted = jax.jit(stats.zstat)(attn.astype(np.float32), null.astype(np.float32))
    np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(z), atol=1e-5)


def test_zstat_zero_scores_are_clamped_to_tiny():
    """Zero (and subnormal) scores become finfo(dtype).tiny before the log: z stays finite."""
    rng = np.random.default_rng(2)
    attn, null = attention_like(rng, 300), attention_like(rng, (2, 300))
    attn[:5] = 0.0
    null[0, :3] = 0.0
    null[1, 3] = 1e-40  # float32 subnormal
    for x64, dtype in ((False, np.float32), (True, np.float64)):
        with jax.enable_x64(x64):
            z, z_null, mu0, sigma0 = stats.zstat(attn.astype(dtype), null.astype(dtype))
            tiny = np.finfo(dtype).tiny
            ref = numpy_zstat(np.maximum(attn.astype(dtype), tiny), np.maximum(null.astype(dtype), tiny))
            assert np.all(np.isfinite(np.asarray(z))) and np.all(np.isfinite(np.asarray(z_null)))
            np.testing.assert_allclose(np.asarray(z), ref[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(float(mu0), ref[2], rtol=1e-6)
            expected = (np.log(tiny) - float(mu0)) / float(sigma0)
            np.testing.assert_allclose(np.asarray(z[:5]), expected, rtol=1e-5)
    # bfloat16 attention (where softmax underflow happens) is computed in float32
    z16, _, _, _ = stats.zstat(jnp.asarray(attn, jnp.bfloat16), jnp.asarray(null, jnp.bfloat16))
    assert z16.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(z16)))


@pytest.mark.parametrize(
    "attn,null,err,match",
    [
        (np.array([0.1, -0.2, 0.3]), np.full((2, 3), 0.1) + [0, 0.1, 0.2], ValueError, "negative"),
        (np.array([0.1, np.nan, 0.3]), np.ones((2, 3)), ValueError, "NaN or inf"),
        (np.array([0.1, 0.2, 0.3]), np.array([[0.1, np.inf, 0.2]] * 2), ValueError, "NaN or inf"),
        (np.zeros(0), np.zeros((2, 0)), ValueError, "empty"),
        (np.array(0.5), np.ones(3), ValueError, "at least 1 dimension"),
        (np.ones(3), np.ones((2, 4)), ValueError, "does not match"),
        (np.ones((2, 3)), np.ones((3, 5, 3)), ValueError, "does not match"),
        (np.ones((2, 3)), np.ones((3, 7)), ValueError, "does not match"),
        (np.ones(3), np.ones((1, 2, 2, 3)), ValueError, "must have shape"),
        (np.ones(3) * 0.2, np.full((2, 3), 0.1), ValueError, "constant"),
        (np.array([True, False]), np.ones((2, 2)), TypeError, "real numbers"),
        (np.ones(3) * 1j, np.ones((2, 3)), TypeError, "real numbers"),
        (["a", "b"], np.ones((2, 2)), TypeError, "real numbers"),
    ],
)
def test_zstat_bad_inputs(attn, null, err, match):
    with pytest.raises(err, match=match):
        stats.zstat(attn, null)


# --- p-values --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_pvalues_match_brute_force(method):
    """Exact (bit for bit) in float64 and float32, continuous z and heavily tied z."""
    rng = np.random.default_rng(3)
    continuous = (rng.normal(0.3, 1.2, 400), rng.normal(0, 1, (3, 400)))
    ties = (np.round(rng.normal(0.3, 1.2, 400), 1), np.round(rng.normal(0, 1, (3, 400)), 1))
    for z, z_null in (continuous, ties):
        ref = brute_force_pvalues(z, z_null.ravel(), method)
        with jax.enable_x64(True):
            got = np.asarray(stats.empirical_pvalues(z, z_null, method=method))
        np.testing.assert_array_equal(got, ref)
        z32, n32 = z.astype(np.float32), z_null.astype(np.float32)
        ref32 = brute_force_pvalues(z32, n32.ravel(), method).astype(np.float32)
        got32 = stats.empirical_pvalues(z32, n32, method=method)
        assert got32.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got32), ref32)
        assert np.all((got >= 0) & (got <= 1))
    if method == "plus_one":
        assert np.all(got > 0)


@pytest.mark.slow
def test_pvalues_batches_shapes_and_jit():
    rng = np.random.default_rng(4)
    z, z_null = rng.normal(size=(2, 300)), rng.normal(size=(2, 5, 300))
    for method in METHODS:
        batched = np.asarray(stats.empirical_pvalues(z, z_null, method=method))
        flat = np.asarray(stats.empirical_pvalues(z, z_null.reshape(2, -1), method=method))
        np.testing.assert_array_equal(batched, flat)
        for i in range(2):
            np.testing.assert_array_equal(
                batched[i], np.asarray(stats.empirical_pvalues(z[i], z_null[i], method=method))
            )
        jitted = jax.jit(stats.empirical_pvalues, static_argnames="method")(z, z_null, method)
        np.testing.assert_array_equal(np.asarray(jitted), batched)
    # the largest |z| gets p = 0 under "attnreg"; an observed z above every null z gets 0 ("upper")
    z1 = np.array([10.0, 0.0, -0.5])
    assert float(stats.empirical_pvalues(z1, rng.normal(size=50), "attnreg")[0]) == 0.0
    assert float(stats.empirical_pvalues(z1, rng.normal(size=50), "upper")[0]) == 0.0
    assert stats.empirical_pvalues(z1, rng.normal(size=50), "plus_one")[0] == np.float32(1 / 51)


def test_pvalues_realistic_size_is_fast():
    """ViT-S/8 at 488 px: n = 3721 patches, B = 16 bootstrap maps (m = 59536), no n × m matrix."""
    rng = np.random.default_rng(5)
    z, z_null = rng.normal(size=3721), rng.normal(size=(16, 3721))
    p = np.asarray(stats.empirical_pvalues(z, z_null))
    assert p.shape == (3721,)
    idx = rng.choice(3721, 50, replace=False)
    np.testing.assert_array_equal(
        p[idx],
        brute_force_pvalues(z[idx].astype(np.float32), z_null.astype(np.float32).ravel(), "upper").astype(
            np.float32
        ),
    )


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"method": "lower"}, ValueError, "unknown p-value method"),
        ({"z_null": np.ones((2, 5))}, ValueError, "does not match"),
        ({"z": np.array([0.0, np.nan, 1.0])}, ValueError, "NaN or inf"),
        ({"z_null": np.array([0.0, -np.inf])}, ValueError, "NaN or inf"),
        ({"z_null": np.zeros(0)}, ValueError, "empty"),
        ({"z": np.ones((2, 3)), "z_null": np.ones((3, 4))}, ValueError, "does not match"),
    ],
)
def test_pvalues_bad_inputs(kwargs, err, match):
    args = {"z": np.array([0.0, 1.0, 2.0]), "z_null": np.ones((2, 3)), "method": "upper"}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        stats.empirical_pvalues(**args)


# --- sRMSD and uniformity --------------------------------------------------------------------


def test_srmsd_matches_numpy_and_edge_cases():
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        for p in (rng.uniform(size=999), rng.beta(0.5, 1, 1000), rng.beta(2, 1, 1000)):
            np.testing.assert_allclose(float(stats.srmsd(p)), numpy_srmsd(p), rtol=1e-13)
        n = 400
        exact = (np.arange(1, n + 1) - 0.5) / n
        assert float(stats.srmsd(rng.permutation(exact))) == 0.0
        assert float(stats.srmsd(np.zeros(n))) == pytest.approx(np.sqrt(np.mean(exact**2)))
        assert float(stats.srmsd(np.ones(n))) == pytest.approx(-np.sqrt(np.mean((1 - exact) ** 2)))
        batch = np.stack([rng.beta(0.5, 1, 300), rng.beta(2, 1, 300)])
        got = np.asarray(stats.srmsd(batch))
        assert got[0] > 0 > got[1]  # anti-conservative vs conservative
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.srmsd(np.array([0.2, 1.5]))


def _dkw_epsilon(n: int, delta: float) -> float:
    """sup|F_n − F| <= ε with probability >= 1 − δ (Dvoretzky–Kiefer–Wolfowitz–Massart)."""
    return float(np.sqrt(np.log(2 / delta) / (2 * n)))


@pytest.mark.parametrize("method", METHODS)
def test_pvalues_uniform_under_the_null(method):
    """Observed and null maps from one distribution → p-values uniform, sRMSD ≈ 0.

    Bound. Let U_i = 1 − F(z_i), iid U(0, 1). For "upper", p_i = 1 − F_m(z_i⁻) with F_m the
    null ECDF, so |p_i − U_i| <= D_m = sup|F_m − F|; sorting is 1-Lipschitz in the sup norm and
    |U_(k) − (k − ½)/n| <= D_n + 1/(2n). Hence |sRMSD| <= max_k |p_(k) − u_k| <= D_n + D_m +
    1/(2n), and by DKW each D is <= ε(·, δ = 1e-6) with probability 1 − 1e-6 (the other methods:
    the same argument on |z|, or on the pooled ECDF; "plus_one" adds <= 1/(m + 1)).
    Size. E ∫(F_n − F)² = 1/(6n) (Cramér–von Mises), so E sRMSD² ≈ 1/(6n) + 1/(6m) for the
    two-sample methods and (m/(n+m))²(1/(6n) + 1/(6m)) for "attnreg" (its observed values are
    part of the pool). Asserted over R = 200 draws: the mean of sRMSD² within ±25% of that
    (sRMSD² varies by ~85% of its mean between draws, so ±25% is ~4 standard errors; measured
    ratios 0.99, 0.99, 0.95, 0.95), and |mean sRMSD| within 5 standard errors of 0 (measured
    <= 1.1). Measured max |sRMSD| 0.055 against the bound 0.21.
    """
    R, n, B = 200, 500, 2
    m = n * B
    rng = np.random.default_rng(7)
    z, z_null, _, _ = stats.zstat(attention_like(rng, (R, n)), attention_like(rng, (R, B, n)))
    s = np.asarray(stats.srmsd(stats.empirical_pvalues(z, z_null, method=method)))
    delta = 1e-6
    bound = _dkw_epsilon(n, delta) + _dkw_epsilon(m, delta) + 1 / (2 * n) + 1 / (m + 1)
    assert np.all(np.abs(s) <= bound), (np.abs(s).max(), bound)
    expected = 1 / (6 * n) + 1 / (6 * m)
    if method == "attnreg":
        expected *= (m / (n + m)) ** 2
    assert abs(np.mean(s**2) / expected - 1) <= 0.25, (np.mean(s**2), expected)
    assert abs(s.mean()) <= 5 * s.std() / np.sqrt(R)


@pytest.mark.slow
def test_ranking_nulls_among_observed_equals_sorting_the_nulls():
    """The fast count (sort the n observed, rank the m nulls) equals the direct one, ties included."""
    rng = np.random.default_rng(5)
    for n, m in [(1, 1), (7, 3), (50, 800), (200, 20000)]:
        x = rng.integers(-5, 6, n).astype(np.float32)  # heavy ties within and across
        null = rng.integers(-6, 7, m).astype(np.float32)
        want = (null[None, :] >= x[:, None]).sum(1)
        got = stats.count_null_geq(jnp.asarray(null), jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(got), want)
