"""Shrinkage rules (docs/method.md §4) against plain numpy / statsmodels versions written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from arb_jax.core import regularize as rg
from arb_jax.core.regularize import Percentile

# ----------------------------------------------------------------------------- references


def np_rules(A, z, p, lfdr, pi0, alpha=0.3, beta=0.3, z_th=0.0):
    """docs/method.md §4 for one map, in numpy (as the reference code's ``regularize_attention_all``)."""
    Az = A * (z >= z_th)
    t = np.percentile(p, 100 * (1 - pi0))
    return {
        "z": Az,
        "p": Az * (p <= alpha),
        "lfdr": Az * (lfdr <= beta),
        "pi0": Az * (p <= t),
        "soft": A * (1 - lfdr),
    }


def inputs(seed, shape=(9, 11), n_boot=20):
    """Random map: attention in (0, 1], z ~ N(0, 1), bootstrap-like p (ties!), lfdr in [0, 1]."""
    rng = np.random.default_rng(seed)
    A = rng.uniform(1e-4, 1, shape).astype(np.float32)
    z = rng.standard_normal(shape).astype(np.float32)
    p = (rng.integers(0, n_boot + 1, shape) / n_boot).astype(np.float32)
    lfdr = np.clip(rng.uniform(-0.2, 1.2, shape), 0, 1).astype(np.float32)
    return A, z, p, lfdr


def assert_same(got, want):
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))


# ----------------------------------------------------------------------------- each rule


@pytest.mark.parametrize("seed", range(4))
def test_each_rule_equals_numpy(seed):
    A, z, p, lfdr = inputs(seed)
    rng = np.random.default_rng(100 + seed)
    pi0 = float(rng.uniform(0.05, 0.95))
    alpha, beta, z_th = (float(v) for v in rng.uniform([0, 0, -0.5], [1, 1, 0.5]))
    ref = np_rules(A, z, p, lfdr, pi0, alpha, beta, z_th)
    assert_same(rg.z_threshold(A, z, z_th), ref["z"])
    assert_same(rg.p_threshold(A, z, p, alpha, z_th), ref["p"])
    assert_same(rg.lfdr_threshold(A, z, lfdr, beta, z_th), ref["lfdr"])
    assert_same(rg.pi0_threshold(A, z, p, pi0, z_th), ref["pi0"])
    np.testing.assert_allclose(np.asarray(rg.soft_shrink(A, lfdr)), ref["soft"], rtol=1e-6)
    out = rg.shrink_all(A, z, p, lfdr, pi0, alpha=alpha, beta=beta, z_th=z_th)
    assert set(out) == {"z", "p", "lfdr", "pi0", "soft"}
    for k in ("z", "p", "lfdr", "pi0"):
        assert_same(out[k], ref[k])
    np.testing.assert_allclose(np.asarray(out["soft"]), ref["soft"], rtol=1e-6)


def test_defaults_are_reference_defaults():
    A, z, p, lfdr = inputs(7)
    ref = np_rules(A, z, p, lfdr, 0.5)  # α = β = 0.3, z_th = 0
    assert_same(rg.p_threshold(A, z, p), ref["p"])
    assert_same(rg.lfdr_threshold(A, z, lfdr), ref["lfdr"])
    assert_same(rg.z_threshold(A, z), ref["z"])
    out = rg.shrink_all(A, z, p, lfdr, 0.5)
    for k in ("z", "p", "lfdr", "pi0"):
        assert_same(out[k], ref[k])


def test_properties():
    A, z, p, lfdr = inputs(8, shape=(40,), n_boot=1000)
    Az = np.asarray(rg.z_threshold(A, z))
    assert np.all((Az == 0) | (Az == A))
    for rule in (
        rg.p_threshold(A, z, p, 0.5),
        rg.lfdr_threshold(A, z, lfdr, 0.5),
        rg.pi0_threshold(A, z, p, 0.5),
    ):
        r = np.asarray(rule)
        assert np.all((r == 0) | (r == Az))  # every rule only removes from A_z
    prev = np.zeros_like(A, bool)
    for a in np.linspace(0, 1, 11):  # larger α keeps a superset
        kept = np.asarray(rg.p_threshold(A, z, p, a)) != 0
        assert np.all(kept >= prev)
        prev = kept
    # π₀ = 0 keeps all of A_z; π₀ = 1 keeps only the smallest p-value(s)
    np.testing.assert_array_equal(np.asarray(rg.pi0_threshold(A, z, p, 0.0)), Az)
    kept = np.asarray(rg.pi0_threshold(A, np.ones_like(z), p, 1.0)) != 0
    np.testing.assert_array_equal(kept, p == p.min())
    soft = np.asarray(rg.soft_shrink(A, lfdr))
    assert np.all(soft <= A) and np.all(soft >= 0)


def test_dtype_is_kept():
    A, z, p, lfdr = inputs(9)
    for dt in (jnp.float16, jnp.bfloat16):
        out = rg.shrink_all(jnp.asarray(A, dt), z, p, lfdr, 0.4)
        assert all(v.dtype == dt for v in out.values())


# ----------------------------------------------------------------------------- percentiles


@pytest.mark.parametrize("seed", range(3))
def test_map_percentile_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, 13)).astype(np.float32)
    ties = (rng.integers(0, 6, (7, 13)) / 5).astype(np.float32)
    for q in (0.0, 3.0, 10.0, 37.5, 50.0, 91.0, 100.0, float(rng.uniform(0, 100))):
        np.testing.assert_allclose(float(rg.map_percentile(x, q)), np.percentile(x, q), rtol=1e-6, atol=1e-7)
        t = rg.map_percentile(ties, q)
        np.testing.assert_allclose(float(t), np.percentile(ties, q), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(ties <= np.asarray(t), ties <= np.percentile(ties, q))


def test_percentile_between_equal_values_is_that_value():
    """numpy's interpolation returns v exactly between two equal v; masks p ≤ t depend on it."""
    rng = np.random.default_rng(0)
    f = jax.jit(rg.map_percentile)
    for i in range(60):
        v = np.float32(rng.uniform(0, 1))
        n = (4, 9, 61)[i % 3]
        x = np.full(n, v, np.float32)
        x[0], x[-1] = 0.0, 1.0
        q = 100 * float(rng.uniform(1, n - 2)) / (n - 1)  # virtual index between two v
        assert float(f(x, q)) == np.percentile(x, q) == v


def test_pi0_masks_equal_numpy_on_tied_pvalues():
    """π₀ from Storey's estimator is a float32 number; numpy is given exactly that value."""
    rng = np.random.default_rng(1)
    f = jax.jit(lambda A, z, p, pi0: rg.pi0_threshold(A, z, p, pi0))
    for i in range(300):
        n, n_boot = (7, 61, 3721)[i % 3], int(rng.integers(1, 15))
        A, z, p, lfdr = (x.ravel() for x in inputs(int(rng.integers(1 << 30)), (n,), n_boot))
        pi0 = np.float32(rng.uniform(0, 1))
        assert_same(f(A, z, p, pi0), np_rules(A, z, p, lfdr, float(pi0))["pi0"])


def test_integer_percentiles_select_order_statistics_exactly():
    """(n − 1)·q/100 integer: the threshold is that order statistic, tie group included, as numpy.

    Under jit XLA turns x/100 into x·0.01 and folds constants, so the float32 virtual index
    lands an ulp below the integer; without snapping it back, ties at the order statistic would
    be dropped (85 of 1500 random such cases differed from numpy before the fix).
    """
    rng = np.random.default_rng(2)
    f = jax.jit(lambda A, z, p, q: rg.p_threshold(A, z, p, Percentile(q)))
    A, z = np.ones(61, np.float32), np.ones(61, np.float32)
    for q in range(0, 101):
        p = (rng.integers(0, 8, 61) / 7).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(f(A, z, p, np.float32(q))) != 0, p <= np.percentile(p, q))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_statistics_by_bisection_equal_numpy_sort(dtype):
    """The CPU path of percentiles (bisection on the bit pattern, no sort) and the sort path give
    numpy's sorted values exactly: ties, ±0, ±inf, subnormals and huge values included."""
    rng = np.random.default_rng(4)
    tiny = np.finfo(dtype).tiny
    cases = [
        rng.normal(size=1000),
        np.round(rng.normal(size=777), 1),
        rng.integers(0, 3, 50),
        np.r_[
            np.inf,
            -np.inf,
            0.0,
            -0.0,
            rng.normal(size=40) * tiny / 4,
            rng.uniform(-1, 1, 40) * np.finfo(dtype).max,
            [1.5] * 9,
        ],
        np.ones(1),
    ]
    with jax.enable_x64(dtype == np.float64):
        for x in cases:
            x = np.asarray(x, dtype)
            ks = jnp.asarray(rng.permutation(len(x)))
            want = np.sort(x)[np.asarray(ks)]
            for fn in (rg.kth_smallest_select, rg.kth_smallest):
                got = np.asarray(jax.jit(fn)(jnp.asarray(x), ks))
                assert got.dtype == dtype
                np.testing.assert_array_equal(got, want)
                # equal as floats is not enough for ±0 and subnormals: the same bits
                np.testing.assert_array_equal(
                    got.view(f"u{x.itemsize}")[want != 0], want.view(f"u{x.itemsize}")[want != 0]
                )


def test_percentile_thresholds_over_map_and_roi():
    A, z, p, lfdr = inputs(11, shape=(12, 12), n_boot=500)
    roi = np.zeros((12, 12), bool)
    roi[2:7, 3:9] = True
    for q in (10.0, 25.0, 60.0):
        # over the whole map
        ref = np_rules(
            A,
            z,
            p,
            lfdr,
            0.5,
            alpha=np.percentile(p, q),
            beta=np.percentile(lfdr, q),
            z_th=np.percentile(z, q),
        )
        assert_same(rg.p_threshold(A, z, p, Percentile(q), Percentile(q)), ref["p"])
        assert_same(rg.lfdr_threshold(A, z, lfdr, Percentile(q), Percentile(q)), ref["lfdr"])
        assert_same(rg.z_threshold(A, z, Percentile(q)), ref["z"])
        # over the ROI only (the paper's Fig. 2: α = 10th percentile of p in the ROI)
        ref = np_rules(
            A,
            z,
            p,
            lfdr,
            0.5,
            alpha=np.percentile(p[roi], q),
            beta=np.percentile(lfdr[roi], q),
            z_th=np.percentile(z[roi], q),
        )
        out = rg.shrink_all(
            A, z, p, lfdr, 0.5, alpha=Percentile(q), beta=Percentile(q), z_th=Percentile(q), roi=roi
        )
        for k in ("z", "p", "lfdr", "pi0"):
            assert_same(out[k], ref[k])
        np.testing.assert_allclose(
            float(rg.map_percentile(p, q, roi=roi)), np.percentile(p[roi], q), rtol=1e-6
        )


# ----------------------------------------------------------------------------- BH


@pytest.mark.parametrize("q", [0.05, 0.1, 0.3])
def test_bh_equals_statsmodels(q):
    rng = np.random.default_rng(int(q * 100))
    n = 300
    p = np.concatenate([rng.uniform(0, 1, n - 60), rng.beta(0.3, 8, 60)]).astype(np.float32)
    A = rng.uniform(0.01, 1, n).astype(np.float32)
    z = np.abs(rng.standard_normal(n)).astype(np.float32)  # z ≥ 0: the BH mask alone
    want = multipletests(p.astype(np.float64), alpha=q, method="fdr_bh")[0]
    assert 0 < want.sum() < n
    got = np.asarray(rg.bh_threshold(A, z, p, q)) != 0
    np.testing.assert_array_equal(got, want)
    out = rg.shrink_all(A, z, p, np.zeros_like(p), 1.0, q=q)
    np.testing.assert_array_equal(np.asarray(out["bh"]) != 0, want)
    # with a z-threshold, BH is still run on all p of the map, then intersected with z ≥ z_th
    got = np.asarray(rg.bh_threshold(A, z, p, q, z_th=1.0)) != 0
    np.testing.assert_array_equal(got, want & (z >= 1.0))


def test_bh_rejects_nothing_when_all_null():
    p = np.linspace(0.5, 1, 50, dtype=np.float32)
    A = np.ones(50, np.float32)
    assert not np.asarray(rg.bh_threshold(A, A, p, 0.1)).any()


# ----------------------------------------------------------------------------- batches, jit


def test_batches_of_maps_with_per_map_pi0_and_percentiles():
    maps = [inputs(20 + i) for i in range(4)]
    A, z, p, lfdr = (np.stack(x) for x in zip(*maps, strict=True))  # (4, 9, 11)
    pi0 = np.array([0.1, 0.5, 0.8, 1.0], np.float32)
    alpha = np.array([0.2, 0.4, 0.6, 0.8], np.float32)
    out = rg.shrink_all(A, z, p, lfdr, pi0, alpha=alpha, beta=Percentile(30), map_ndim=2, q=0.2)
    for i in range(4):
        ref = np_rules(
            A[i], z[i], p[i], lfdr[i], float(pi0[i]), alpha=float(alpha[i]), beta=np.percentile(lfdr[i], 30)
        )
        for k in ("z", "p", "lfdr", "pi0"):
            assert_same(out[k][i], ref[k])
        bh = multipletests(p[i].ravel().astype(np.float64), alpha=0.2, method="fdr_bh")[0]
        np.testing.assert_array_equal(np.asarray(out["bh"][i]).ravel() != 0, bh & (z[i].ravel() >= 0))
    np.testing.assert_allclose(
        np.asarray(rg.map_percentile(p, 40.0, map_ndim=2)),
        np.percentile(p.reshape(4, -1), 40, axis=1),
        rtol=1e-6,
    )
    # the same with map_ndim=1 on flattened maps, and vmapped one map at a time
    flat = rg.shrink_all(
        *(x.reshape(4, -1) for x in (A, z, p, lfdr)), pi0, alpha=alpha, beta=Percentile(30), map_ndim=1
    )
    vm = jax.vmap(lambda a, b, c, d, e, f: rg.shrink_all(a, b, c, d, e, alpha=f, beta=Percentile(30)))(
        A, z, p, lfdr, pi0, alpha
    )
    for k in ("z", "p", "lfdr", "pi0", "soft"):
        np.testing.assert_array_equal(np.asarray(flat[k]).reshape(A.shape), np.asarray(out[k]))
        np.testing.assert_array_equal(np.asarray(vm[k]), np.asarray(out[k]))


def test_jit_with_traced_thresholds():
    A, z, p, lfdr = inputs(30)
    eager = rg.shrink_all(A, z, p, lfdr, 0.6, alpha=Percentile(10), beta=0.2, z_th=0.1, q=0.1)
    fn = jax.jit(
        lambda A, z, p, lfdr, pi0, alpha, beta, z_th, q: rg.shrink_all(
            A, z, p, lfdr, pi0, alpha=alpha, beta=beta, z_th=z_th, q=q
        )
    )
    jitted = fn(A, z, p, lfdr, 0.6, Percentile(10.0), 0.2, 0.1, 0.1)
    assert set(jitted) == {"z", "p", "lfdr", "pi0", "soft", "bh"}
    for k in eager:
        np.testing.assert_array_equal(np.asarray(jitted[k]), np.asarray(eager[k]))
    roi = np.zeros(A.shape, bool)
    roi[:4] = True
    g = jax.jit(lambda p, roi, q: rg.map_percentile(p, q, roi=roi))
    np.testing.assert_allclose(float(g(p, roi, 10.0)), np.percentile(p[roi], 10), rtol=1e-6)


# ----------------------------------------------------------------------------- validation


def test_shape_and_type_errors():
    A, z, p, lfdr = inputs(40)
    with pytest.raises(ValueError, match=r"z has shape \(9, 10\) but attn has shape \(9, 11\)"):
        rg.z_threshold(A, z[:, :10])
    with pytest.raises(ValueError, match="p has shape"):
        rg.pi0_threshold(A, z, p.ravel(), 0.5)
    with pytest.raises(ValueError, match="lfdr has shape"):
        rg.soft_shrink(A, lfdr[None])
    with pytest.raises(TypeError, match="attn must be a float array"):
        rg.z_threshold(np.ones((3, 3), np.int32), z[:3, :3])
    with pytest.raises(TypeError, match="z must be a real-valued array"):
        rg.z_threshold(A, z.astype(np.complex64))
    with pytest.raises(TypeError, match="p must be an array"):
        rg.p_threshold(A, z, "p")
    with pytest.raises(ValueError, match="scalar"):
        rg.z_threshold(np.float32(1.0), np.float32(0.0))
    with pytest.raises(ValueError, match="must not be empty"):
        rg.z_threshold(np.zeros((0,), np.float32), np.zeros((0,), np.float32))
    with pytest.raises(ValueError, match=r"map_ndim must lie in \[1, 2\]"):
        rg.z_threshold(A, z, map_ndim=3)
    with pytest.raises(ValueError, match="map_ndim"):
        rg.z_threshold(A, z, map_ndim=0)


def test_threshold_errors():
    A, z, p, lfdr = inputs(41)
    for bad in (-0.1, 1.5, np.array([0.2, 1.2])):
        with pytest.raises(ValueError, match="pi0 must lie in"):
            rg.pi0_threshold(A[:2], z[:2], p[:2], bad, map_ndim=1)
    with pytest.raises(ValueError, match=r"pi0 must be a scalar or have the batch shape \(9,\)"):
        rg.pi0_threshold(A, z, p, np.full(3, 0.5), map_ndim=1)
    with pytest.raises(ValueError, match="alpha must be a scalar or have the batch shape"):
        rg.p_threshold(A, z, p, np.full(11, 0.3))  # one map: scalar α only
    with pytest.raises(TypeError, match="alpha must be a number, an array or a Percentile"):
        rg.p_threshold(A, z, p, "10%")
    with pytest.raises(TypeError, match="beta must be a number"):
        rg.lfdr_threshold(A, z, lfdr, True)
    with pytest.raises(ValueError, match=r"q must lie in \[0.0, 1.0\]"):
        rg.bh_threshold(A, z, p, 1.5)
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        rg.bh_threshold(A, z, p + 1.0, 0.1)
    with pytest.raises(ValueError, match=r"Percentile q must lie in \[0, 100\]"):
        Percentile(150)
    with pytest.raises(ValueError, match=r"Percentile q must lie in \[0, 100\]"):
        Percentile(np.float32(-1))
    with pytest.raises(TypeError, match="Percentile q must be a number"):
        Percentile("10")
    with pytest.raises(ValueError, match=r"percentile q must lie in \[0.0, 100.0\]"):
        rg.map_percentile(p, 101.0)


def test_roi_errors():
    A, z, p, lfdr = inputs(42)
    with pytest.raises(TypeError, match="roi must be a boolean mask"):
        rg.p_threshold(A, z, p, Percentile(10), roi=np.ones(A.shape, np.int32))
    with pytest.raises(ValueError, match=r"roi of shape \(3, 3\) does not broadcast"):
        rg.p_threshold(A, z, p, Percentile(10), roi=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="roi selects no entry"):
        rg.p_threshold(A, z, p, Percentile(10), roi=np.zeros(A.shape, bool))


@pytest.mark.parametrize("repeat", [1, 4, 64])
def test_map_percentile_with_repeat_equals_numpy_on_repeated_pixels(repeat):
    """A patch grid with ``repeat`` pixels per patch: the percentile of the pixels, exactly."""
    rng = np.random.default_rng(repeat)
    for _ in range(40):
        x = rng.choice(rng.random(5), size=(3, 4)).astype(np.float32)  # many ties, like p-values
        q = float(rng.uniform(0, 100))
        want = np.percentile(np.repeat(x.ravel(), repeat).astype(np.float64), q)
        got = float(rg.map_percentile(jnp.asarray(x), q, repeat=repeat))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if repeat > 1:  # and it is not the percentile of the patch values themselves
        x = np.array([0.0, 1.0], np.float32)
        assert float(rg.map_percentile(x, 50.0, repeat=repeat)) == pytest.approx(0.5)
        assert float(rg.map_percentile(x, 40.0, repeat=repeat)) == 0.0


def test_map_percentile_rejects_bad_repeat():
    with pytest.raises(ValueError, match="repeat"):
        rg.map_percentile(jnp.ones(4), 50.0, repeat=0)
