"""arb_jax.stats.local_fdr against statsmodels.stats.multitest.local_fdr (Efron's Poisson fit).

References, float64:
- ``statsmodels.stats.multitest.local_fdr`` itself, whenever it runs without a warning.
- For inputs where statsmodels' plain IRLS overflows (heavy tails, large n), a reference built
  from statsmodels' pieces — its histogram, scaled Vandermonde design and OLS start, the Poisson
  log-likelihood of its GLM — maximised by scipy's exact trust-region Newton. It is checked
  against statsmodels wherever both run.
x64 is enabled with the ``jax.enable_x64`` context manager, so it does not leak into other tests.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special
from statsmodels.genmod.generalized_linear_model import GLM, families
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import local_fdr as sm_local_fdr

from arb_jax.core import stats

SIZES = (100, 1_000, 10_000, 100_000)
DISTS = ("normal_mixture", "t3", "ties")
TOL_X64 = 1e-6  # required: max |lfdr − reference|, float64
# float32 vs the float64 reference (measured, see test_local_fdr_float32_error): normal mixtures
# <= 2.2e-6; heavy tails <= 2.7e-4, reached by t₃ at n = 10⁵ where 99.5% of z fall into 2 of the
# 29 bins and the fitted log-polynomial spans ~100 nats, so float32 rounding of its terms shows.
TOL_F32 = 1e-5
TOL_F32_HEAVY = 1e-3


def sample(dist: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, n, DISTS.index(dist)])
    k = int(0.8 * n)
    if dist == "normal_mixture":
        return np.concatenate([rng.standard_normal(k), rng.normal(3.0, 1.0, n - k)])
    if dist == "t3":
        return rng.standard_t(3, n)
    # many ties: a mixture rounded to one decimal (values fall exactly on bin edges)
    return np.round(np.concatenate([rng.standard_normal(k), rng.normal(2.5, 0.7, n - k)]), 1)


def _sm_design(x: np.ndarray, bins: np.ndarray | None = None):
    """statsmodels local_fdr's pieces: edges, counts, scaled design, OLS start, GLM model."""
    if bins is None:
        bins = np.linspace(min(x), max(x), 30)
    counts = np.histogram(x, bins)[0]
    centres = (bins[:-1] + bins[1:]) / 2
    dmat = np.vander(centres, 8)
    sd = dmat.std(0)
    ii = sd > 1e-8
    dmat[:, ii] /= sd[ii]
    start = OLS(np.log(1 + counts), dmat).fit().params
    model = GLM(counts, dmat, family=families.Poisson())
    return bins, ii, sd, start, model


def _design_at(v: np.ndarray, ii, sd) -> np.ndarray:
    d = np.vander(v, 8)
    d[:, ii] /= sd[ii]
    return d


def density_sm_irls(x: np.ndarray, at: np.ndarray) -> np.ndarray | None:
    """f fitted as statsmodels' local_fdr does (GLM IRLS); None if statsmodels warns or fails."""
    bins, ii, sd, start, model = _sm_design(x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = model.fit(start_params=start)
    except (RuntimeWarning, ValueError):
        return None
    return res.predict(_design_at(at, ii, sd)) / (len(x) * (bins[1] - bins[0]))


def log_density_trust_region(x: np.ndarray, at: np.ndarray, bins: np.ndarray | None = None):
    """log f from statsmodels' histogram/design/start, Poisson MLE by scipy trust-exact Newton.

    (log: on extreme fits the fitted density at the outermost z overflows float64.)
    """
    bins, ii, sd, start, model = _sm_design(x, bins)
    X, y = model.exog, model.endog
    np.testing.assert_allclose(
        model.loglike(start),  # same likelihood as GLM
        np.sum(y * (X @ start) - np.exp(X @ start)) - np.sum(special.gammaln(y + 1)),
        rtol=1e-12,
    )

    def fun(b):
        e = X @ b
        return np.sum(np.exp(e) - y * e) if e.max() < 600 else 1e300

    def jac(b):
        return X.T @ (np.exp(np.minimum(X @ b, 600)) - y)

    def hess(b):
        return X.T @ (np.exp(np.minimum(X @ b, 600))[:, None] * X)

    with np.errstate(under="ignore", over="ignore"):  # rejected trial steps may overflow
        res = optimize.minimize(
            fun, start, jac=jac, hess=hess, method="trust-exact", options={"gtol": 1e-10, "maxiter": 1000}
        )
    return _design_at(at, ii, sd) @ res.x - np.log(len(x) * (bins[1] - bins[0]))


def lfdr_from_log_f(z: np.ndarray, log_f: np.ndarray, pi0: float) -> np.ndarray:
    log_f0 = -0.5 * z**2 - 0.5 * np.log(2 * np.pi)
    return np.clip(pi0 * np.exp(np.minimum(log_f0 - log_f, 700)), 0, 1)


def reference_lfdr(z: np.ndarray, pi0: float) -> tuple[np.ndarray, str]:
    """statsmodels local_fdr if it runs cleanly, else the trust-region reference."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return sm_local_fdr(z, null_proportion=pi0), "statsmodels"
    except (RuntimeWarning, ValueError):
        return lfdr_from_log_f(z, log_density_trust_region(z, z), pi0), "trust-region"


@pytest.mark.slow
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dist", DISTS)
def test_local_fdr_matches_statsmodels_x64(dist, n):
    z = sample(dist, n)
    for pi0 in (1.0, 0.7):
        ref, source = reference_lfdr(z, pi0)
        with jax.enable_x64(True):
            got = stats.local_fdr(jnp.asarray(z), pi0=pi0)
            assert got.dtype == jnp.float64
            got = np.asarray(got)
        err = np.abs(got - ref).max()
        assert err <= TOL_X64, f"{dist} n={n} pi0={pi0} vs {source}: max err {err:.2e}"
        assert np.all((got >= 0) & (got <= 1))
    # which reference was used is part of the record: statsmodels fails only for heavy tails
    if dist != "t3" or n <= 1_000:
        assert source == "statsmodels"


@pytest.mark.parametrize(
    "dist,n", [("normal_mixture", 1_000), ("t3", 1_000), ("ties", 10_000), ("normal_mixture", 100_000)]
)
def test_trust_region_reference_agrees_with_statsmodels(dist, n):
    """The fallback reference is validated where statsmodels itself works."""
    z = sample(dist, n)
    f_sm = density_sm_irls(z, z)
    assert f_sm is not None
    f_tr = np.exp(log_density_trust_region(z, z))
    np.testing.assert_allclose(f_tr, f_sm, rtol=1e-6)


@pytest.mark.slow
def test_local_fdr_float32_error():
    """float32 (default) against the float64 reference on the float32-rounded z.

    Measured max |error| (n = 10²…10⁵, pi0 = 1): normal mixture 2.8e-7, 6.0e-7, 2.0e-6, 2.0e-6;
    t₃ 6.1e-7, 7.7e-7, 2.2e-6, 2.7e-4.
    """
    errs = {}
    for dist in ("normal_mixture", "t3"):
        for n in SIZES:
            z32 = sample(dist, n).astype(np.float32)
            ref, _ = reference_lfdr(z32.astype(np.float64), 1.0)
            got = stats.local_fdr(z32)
            assert got.dtype == jnp.float32
            errs[dist, n] = float(np.abs(np.asarray(got) - ref).max())
    print("float32 max |lfdr error|:", {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(v for (d, n), v in errs.items() if d == "normal_mixture") <= TOL_F32, errs
    assert max(v for (d, n), v in errs.items() if d == "t3" and n < 100_000) <= TOL_F32, errs
    assert errs["t3", 100_000] <= TOL_F32_HEAVY, errs


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_newton_loop_stops_once_converged(dtype):
    """The Newton loop stops after an undamped step of <= √eps: a normal mixture converges within
    9 iterations (capping n_iter at 9 changes nothing, bit for bit), and not within 2."""
    z = sample("normal_mixture", 3721).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        full, capped, early = (np.asarray(stats.local_fdr(jnp.asarray(z), n_iter=k)) for k in (50, 9, 2))
    np.testing.assert_array_equal(capped, full)
    assert np.abs(early - full).max() > TOL_F32  # two steps are not enough
    ref = sm_local_fdr(z.astype(np.float64))
    assert np.abs(full - ref).max() <= (TOL_F32 if dtype == np.float32 else TOL_X64)


def test_local_fdr_float32_ties_on_bin_edges():
    """Tied values lying exactly on a bin edge: float32 edges (numpy's linspace arithmetic in
    float32) may put them into the other bin than float64 edges would, a rounding-level change
    of the input; against a float64 fit of the float32 histogram the error is float32-small."""
    for n in (1_000, 10_000):
        z32 = sample("ties", n).astype(np.float32)
        edges32 = np.linspace(z32.min(), z32.max(), 30, dtype=np.float32)
        np.testing.assert_array_equal(
            np.histogram(z32, edges32)[0], np.histogram(z32.astype(np.float64), edges32.astype(np.float64))[0]
        )
        z64 = z32.astype(np.float64)
        ref = lfdr_from_log_f(z64, log_density_trust_region(z64, z64, edges32.astype(np.float64)), 1.0)
        err = np.abs(np.asarray(stats.local_fdr(z32)) - ref).max()
        assert err <= TOL_F32, f"n={n}: {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("n", (1_000, 10_000))
def test_local_fdr_empirical_null(n):
    """null="empirical": f₀ fitted to z⁰ like f, evaluated at z (extrapolated beyond z⁰'s range)."""
    rng = np.random.default_rng(n)
    z_null = rng.normal(0.2, 1.1, 3 * n)  # B = 3 bootstrap maps
    z = np.concatenate([rng.normal(0.2, 1.1, n - n // 10), rng.normal(3.5, 1.0, n // 10)])
    f = density_sm_irls(z, z)
    f0 = density_sm_irls(z_null, z)
    assert f is not None and f0 is not None
    for pi0 in (1.0, 0.7):
        ref = np.clip(pi0 * f0 / f, 0, 1)
        with jax.enable_x64(True):
            got = np.asarray(stats.local_fdr(z, pi0=pi0, null="empirical", z_null=z_null.reshape(3, n)))
            flat = np.asarray(stats.local_fdr(z, pi0=pi0, null="empirical", z_null=z_null))
        assert np.abs(got - ref).max() <= TOL_X64
        np.testing.assert_array_equal(got, flat)


@pytest.mark.slow
def test_local_fdr_properties():
    z = sample("normal_mixture", 2_000)
    lf1 = np.asarray(stats.local_fdr(z, pi0=1.0))
    lf7 = np.asarray(stats.local_fdr(z, pi0=0.7))
    # lfdr = min(pi0 · f0/f, 1): scaling pi0 scales the unclipped values
    unclipped = lf1 < 1
    np.testing.assert_allclose(lf7[unclipped], 0.7 * lf1[unclipped], rtol=1e-5)
    # alternatives (z ≈ 3) have small lfdr, the null bulk (z ≈ 0) large
    assert np.median(lf1[z > 3.5]) < 0.1 < 0.9 < np.median(lf1[np.abs(z) < 0.5])
    # a batch of maps equals the maps one by one, pi0 per map (x64: same arithmetic, up to
    # the reduction order of the batched program)
    z2 = np.stack([z, sample("t3", 2_000)])
    with jax.enable_x64(True):
        batched = np.asarray(stats.local_fdr(z2, pi0=jnp.array([1.0, 0.7])))
        for i, pi0 in enumerate((1.0, 0.7)):
            np.testing.assert_allclose(
                batched[i], np.asarray(stats.local_fdr(z2[i], pi0=pi0)), rtol=0, atol=1e-12
            )
    # jit with a traced pi0 gives the eager result
    jitted = jax.jit(lambda v, p: stats.local_fdr(v, pi0=p))(jnp.asarray(z, jnp.float32), 0.7)
    np.testing.assert_allclose(np.asarray(jitted), lf7, atol=1e-6)


def test_local_fdr_heavy_outliers_finite():
    """A few huge scores (as in attention maps) must not break the fit: finite, in [0, 1]."""
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.standard_normal(3_716), [15.0, 20.0, 30.0, -12.0, 40.0]])
    for x64 in (False, True):
        with jax.enable_x64(x64):
            got = np.asarray(stats.local_fdr(z))
        assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
        ref, _ = reference_lfdr(z, 1.0)
        assert np.abs(got - ref).max() <= (TOL_X64 if x64 else TOL_F32_HEAVY)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"null": "bogus"}, "unknown local FDR null"),
        ({"null": "empirical"}, "needs z_null"),
        ({"z_null": np.zeros(10)}, "only used"),
        ({"deg": 40}, "deg"),
        ({"nbins": 1}, "deg"),
        ({"pi0": 0.0}, "pi0"),
        ({"pi0": 1.5}, "pi0"),
        ({"pi0": np.ones(3)}, "batch shape"),
    ],
)
def test_local_fdr_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.local_fdr(np.linspace(-2, 2, 50), **kwargs)


def test_local_fdr_bad_values():
    with pytest.raises(ValueError, match="NaN or inf"):
        stats.local_fdr(np.array([0.0, 1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        stats.local_fdr(np.array([0.0, 1.0, np.inf, 2.0]))
    with pytest.raises(ValueError, match="empty"):
        stats.local_fdr(np.zeros(0))
    with pytest.raises(ValueError, match="constant"):
        stats.local_fdr(np.ones(20))
    with pytest.raises(TypeError, match="deg must be an int"):
        stats.local_fdr(np.linspace(-2, 2, 50), deg=7.0)
    with pytest.raises(TypeError, match="real numbers"):
        stats.local_fdr(np.array([1 + 2j, 3j]))
    with pytest.raises(ValueError, match="does not match"):
        stats.local_fdr(np.linspace(-2, 2, 50), null="empirical", z_null=np.zeros((3, 49)))
