"""ARB statistics (docs/method.md §3, eqs. 1–5): z-scores, empirical p-values, local FDR, π₀, q-values.

One public function per method, each a pure function of arrays:

- ``zstat``:             z of log attention scores against the bootstrap (null) maps (eqs. 1–3);
                         ``standardise`` is its step after the log, for any scale
- ``empirical_pvalues``: p-values of z among the null z's (eq. 4; "upper", "plus_one",
                         "two_sided", "attnreg")
- ``local_fdr``:         Efron's local FDR, exactly ``statsmodels.stats.multitest.local_fdr``
                         (eq. 5), with the theoretical N(0, 1) or an empirical null
- ``pi0est``:            Storey's π₀, as R ``qvalue::pi0est`` ("smoother", "bootstrap"), or as the
                         reference code's Python ``pi0est`` ("attnreg", ``pi0_attnreg``)
- ``qvalues``:           Storey's q-values, as R ``qvalue::qvalue`` (pfdr = FALSE)
- ``bh_threshold`` / ``bh_reject``: Benjamini–Hochberg step-up at FDR level q
- ``srmsd``:             signed RMSD of p-values from uniform (docs/method.md §5, Yao & Ochoa 2023)

Shapes. A map is a vector of n scores (last axis); leading axes are a batch of maps (images), so
``z`` has shape (..., n). Null arrays are (..., B, n) (B bootstrap maps) or (..., m) (m = n·B
values, already flat). Every per-map statistic is computed for each map of a batch separately.

Dtypes. Computation runs in the input's floating dtype, at least float32 (bfloat16/float16 and
integers are promoted; float64 when the caller enables x64). Options (``method``, ``deg``, ...)
are static Python values; arrays may be traced, so every function jits and vmaps.

Validation. Shapes, option names and empty arrays are checked on every call. Values (NaN/inf,
ranges) are checked only when the input is concrete, i.e. not a JAX tracer: a jitted caller gets
no host round trip, and no error either (NaN in, NaN out).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import legendre as np_legendre

from arb_jax.registry import Registry

__all__ = [
    "LFDR_NULLS",
    "PVALUE_METHODS",
    "PI0_METHODS",
    "Pi0Estimate",
    "bh_reject",
    "bh_threshold",
    "count_null_geq",
    "divide",
    "empirical_pvalues",
    "local_fdr",
    "pi0_attnreg",
    "pi0est",
    "pi0est_unchecked",
    "qvalues",
    "smoother_matrix",
    "srmsd",
    "standardise",
    "zstat",
]

PVALUE_METHODS: Registry = Registry("p-value method", "(z (n,), z_null (m,)) -> p (n,) in [0, 1]")
PI0_METHODS: Registry = Registry(
    "pi0 method", "(p (n,)) -> pi0 (), the raw estimate (then clamped to [0, 1])"
)
LFDR_NULLS: Registry = Registry("local FDR null", "(z (n,), z_null (m,), pi0 ()) -> lfdr (n,) in [0, 1]")
# The reference code's λ: the last of numpy.arange(0, 0.90, 0.01), in float64 (0.89).
ATTNREG_LAMBDA = float(np.arange(0, 0.90, 0.01)[-1])
ATTNREG_MIN_N = 100  # its qvalue() takes π₀ = 1 for fewer p-values
# R qvalue's default λ grid, seq(0.05, 0.95, 0.05): from + (0:n)·by, then pmin(·, to).
DEFAULT_LAMBDAS = tuple(float(v) for v in np.minimum(0.05 + np.arange(19) * 0.05, 0.95))


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_float(x: Any, name: str) -> jax.Array:
    """x as a jnp floating array (at least float32); TypeError for bool/complex/non-numeric."""
    arr: Any
    if isinstance(x, jax.core.Tracer | jax.Array):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name} must be an array of real numbers: {e}") from None
    dtype = np.dtype(arr.dtype)
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16
    ):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {dtype}")
    if np.issubdtype(dtype, np.integer):
        return jnp.asarray(arr, dtype=jnp.result_type(float))
    out = jnp.asarray(arr)
    return out.astype(jnp.promote_types(out.dtype, jnp.float32))


def _require_nonempty(x: jax.Array, name: str, min_ndim: int = 1) -> None:
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")


def _require_finite(x: jax.Array, name: str) -> None:
    if _is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or inf")


def _require_in_unit_interval(x: jax.Array, name: str) -> None:
    _require_finite(x, name)
    if _is_concrete(x):
        v = np.asarray(x)
        if v.size and (v.min() < 0 or v.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{v.min()}, {v.max()}]")


def _check_option(value: Any, allowed: Sequence[str] | Registry, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(allowed)}")


def _flat_null(obs: jax.Array, null: jax.Array, obs_name: str, null_name: str) -> jax.Array:
    """Null array as (..., m) matching obs (..., n); accepts (..., B, n) or (..., m)."""
    batch = obs.shape[:-1]
    if null.ndim == obs.ndim + 1:
        if null.shape[:-2] != batch or null.shape[-1] != obs.shape[-1]:
            raise ValueError(
                f"{null_name} of shape {null.shape} does not match {obs_name} of "
                f"shape {obs.shape}: expected (..., B, {obs.shape[-1]}) with leading "
                f"axes {batch}"
            )
        return null.reshape(batch + (null.shape[-2] * null.shape[-1],))
    if null.ndim == obs.ndim:
        if null.shape[:-1] != batch:
            raise ValueError(
                f"{null_name} of shape {null.shape} does not match {obs_name} of "
                f"shape {obs.shape}: leading (batch) axes differ"
            )
        return null
    raise ValueError(
        f"{null_name} must have shape (..., B, n) or (..., m) with the leading axes "
        f"of {obs_name} {obs.shape}; got {null.shape}"
    )


def _div(a: jax.Array, b: Any) -> jax.Array:
    """a / b, correctly rounded also for a scalar or constant b.

    XLA rewrites x / broadcast(b) and x / constant as x · (1/b), off by an ulp for about a third
    of the values; a divisor that depends on a (b + 0·a, finite a) keeps the true division, so
    counts/m here equal numpy's (and R's) bit for bit.
    """
    return a / (b + 0 * a)


def divide(a: jax.Array, b: Any) -> jax.Array:
    """``a / b`` computed as a true division (as numpy's), never as a · (1/b) (see ``_div``)."""
    return _div(a, b)


def _batched(fn: Callable, n_batch: int) -> Callable:
    """fn vmapped over n_batch leading axes of every argument."""
    for _ in range(n_batch):
        fn = jax.vmap(fn)
    return fn


# --------------------------------------------------------------------------------------------
# z-scores (eqs. 1–3)
# --------------------------------------------------------------------------------------------


def standardise(t: jax.Array, t0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """z of scaled scores against their scaled null: μ₀, σ₀ (ddof 0) over all of t0 per map.

    t: (..., n); t0: (..., B, n) or (..., m). Returns z = (t − μ₀)/σ₀ (t's shape), z⁰ (t0's
    shape), μ₀ and σ₀ (...), with true divisions (`divide`). `zstat` is this of the logs.
    """
    axes = tuple(range(t.ndim - 1, t0.ndim))
    mu0 = jnp.mean(t0, axis=axes)
    sigma0 = jnp.sqrt(jnp.mean(jnp.square(t0 - jnp.expand_dims(mu0, axes)), axis=axes))
    z = _div(t - mu0[..., None], sigma0[..., None])
    z_null = _div(t0 - jnp.expand_dims(mu0, axes), jnp.expand_dims(sigma0, axes))
    return z, z_null, mu0, sigma0


@jax.jit
def _zstat(attn: jax.Array, attn_null: jax.Array):
    tiny = jnp.finfo(attn.dtype).tiny
    return standardise(jnp.log(jnp.maximum(attn, tiny)), jnp.log(jnp.maximum(attn_null, tiny)))


def zstat(attn: Any, attn_null: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """z-scores of log attention against the bootstrap null (docs/method.md §3, eqs. 1–3).

    μ₀ and σ₀ are the mean and standard deviation (ddof 0) of log a⁰ over all bootstrap maps and
    positions of one map; z = (log a − μ₀)/σ₀ and z⁰ = (log a⁰ − μ₀)/σ₀, as the reference code.

    Parameters
    ----------
    attn : (..., n) array, attention scores of the observed map(s), >= 0.
    attn_null : (..., B, n) or (..., m) array, scores of the bootstrap maps, >= 0.

    Returns
    -------
    z : (..., n); z_null : attn_null's shape; mu0, sigma0 : (...) — in the common floating dtype
    (at least float32).

    Notes
    -----
    Zero scores (e.g. bfloat16 underflow of a softmax): every score below ``finfo(dtype).tiny``
    of the computation dtype (zeros and subnormals) is raised to ``tiny`` before the log, so z stays
    finite: log tiny = -87.34 in float32 (also for bfloat16 input), -708.40 in float64. Negative,
    NaN or inf scores raise ValueError (concrete input), as does a constant null (σ₀ = 0).
    """
    attn = _as_float(attn, "attn")
    attn_null = _as_float(attn_null, "attn_null")
    _require_nonempty(attn, "attn")
    _require_nonempty(attn_null, "attn_null")
    flat_null = _flat_null(attn, attn_null, "attn", "attn_null")
    for x, name in ((attn, "attn"), (attn_null, "attn_null")):
        _require_finite(x, name)
        if _is_concrete(x) and np.asarray(x).min() < 0:
            raise ValueError(f"{name} has negative scores; attention scores must be >= 0")
    dtype = jnp.result_type(attn, attn_null)
    if _is_concrete(flat_null):
        # constant after the clamp at tiny: checked on the values, since the rounding of the mean
        # can leave a computed σ₀ of a few ulps instead of 0
        v = np.maximum(np.asarray(flat_null.astype(dtype), np.float64), float(jnp.finfo(dtype).tiny))
        if np.any(v.min(axis=-1) == v.max(axis=-1)):
            raise ValueError("attn_null is constant within a map (sigma0 = 0): z is undefined")
    return _zstat(attn.astype(dtype), attn_null.astype(dtype))


# --------------------------------------------------------------------------------------------
# Empirical p-values (eq. 4)
# --------------------------------------------------------------------------------------------


def count_null_geq(null: jax.Array, x: jax.Array) -> jax.Array:
    """#{v in null: v >= x_i} for every x_i (n values, m nulls, usually m = B·n >> n), x's dtype.

    Sorts the n observed values instead of the m nulls: each null value v lands at rank
    r_v = #{x_j <= v}, and x's k-th smallest value is <= exactly the nulls with r_v > k, so the
    counts are a reverse cumulative histogram of the ranks. O(n log n + m log n); integer exact,
    so equal to counting among the sorted nulls; several times faster than sorting the m nulls.
    """
    n = x.shape[0]
    order = jnp.argsort(x)
    ranks = jnp.searchsorted(x[order], null, side="right", method="scan_unrolled")  # (m,) in [0, n]
    hist = jnp.bincount(ranks, length=n + 1)
    at_least = jnp.cumsum(hist[::-1])[::-1]  # at_least[t] = #{r >= t}
    return jnp.zeros(n, at_least.dtype).at[order].set(at_least[1:]).astype(x.dtype)


@PVALUE_METHODS.register("upper", "eq. 4 of the paper: #{z0 >= z} / (nB) (preset paper)")
def _p_upper(z: jax.Array, z_null: jax.Array) -> jax.Array:
    return _div(count_null_geq(z_null, z), z_null.shape[0])


@PVALUE_METHODS.register("plus_one", "(1 + #{z0 >= z}) / (1 + nB), never 0 (Phipson & Smyth)")
def _p_plus_one(z: jax.Array, z_null: jax.Array) -> jax.Array:
    return _div(1 + count_null_geq(z_null, z), 1 + z_null.shape[0])


@PVALUE_METHODS.register("two_sided", "#{|z0| >= |z|} / (nB)")
def _p_two_sided(z: jax.Array, z_null: jax.Array) -> jax.Array:
    return _div(count_null_geq(jnp.abs(z_null), jnp.abs(z)), z_null.shape[0])


@PVALUE_METHODS.register(
    "attnreg", "the authors' code: two-sided, with the observed |z| pooled into the null (preset attnreg)"
)
def _p_attnreg(z: jax.Array, z_null: jax.Array) -> jax.Array:
    # 1 − ECDF(pool)(|z_i|) = #{v in pool: v > |z_i|} / |pool|, pool = |z| ∪ |z⁰|
    az = jnp.abs(z)
    pool = jnp.sort(jnp.concatenate([az, jnp.abs(z_null)]))
    n_above = pool.shape[0] - jnp.searchsorted(pool, az, side="right")
    return _div(n_above.astype(z.dtype), pool.shape[0])


def _pvalues_1d(z: jax.Array, z_null: jax.Array, method: Any) -> jax.Array:
    return PVALUE_METHODS.resolve(method)(z, z_null)


@functools.partial(jax.jit, static_argnames=("method",))
def _pvalues(z: jax.Array, z_null: jax.Array, method: str) -> jax.Array:
    return _batched(functools.partial(_pvalues_1d, method=method), z.ndim - 1)(z, z_null)


def empirical_pvalues(z: Any, z_null: Any, method: str = "upper") -> jax.Array:
    """Empirical p-values of observed z among the bootstrap z⁰ of the same map (docs/method.md §3, eq. 4).

    Parameters
    ----------
    z : (..., n) observed z-scores.
    z_null : (..., B, n) or (..., m) null z-scores of the same map(s); m = B·n values per map.
    method : str, static, default "upper"
        - "upper" (eq. 4): p_i = #{z⁰ >= z_i} / m. Can be 0.
        - "plus_one" (Phipson & Smyth 2010): (1 + #{z⁰ >= z_i}) / (1 + m), never 0.
        - "two_sided": #{|z⁰| >= |z_i|} / m.
        - "attnreg" (the authors' reference code): pool = |z| ∪ |z⁰| (n + m values),
          p_i = 1 − #{v in pool: v <= |z_i|} / (n + m), computed as #{v in pool: v > |z_i|} /
          (n + m) (no rounding of 1 − x); the largest |z| gets p = 0.

    Returns
    -------
    p : (..., n), z's dtype.

    Notes
    -----
    Ties count as "at least as extreme" (>=). Sort + binary search (``jnp.searchsorted``): the
    n observed values are sorted and the m nulls ranked among them, O((n + m) log n) time and
    O(n + m) memory per map, never an n × m matrix. The values
    equal the count definitions computed in numpy bit for bit (float32 and float64).
    """
    PVALUE_METHODS.check(method)
    z = _as_float(z, "z")
    z_null = _as_float(z_null, "z_null")
    _require_nonempty(z, "z")
    _require_nonempty(z_null, "z_null")
    z_null = _flat_null(z, z_null, "z", "z_null")
    _require_finite(z, "z")
    _require_finite(z_null, "z_null")
    dtype = jnp.result_type(z, z_null)
    return _pvalues(z.astype(dtype), z_null.astype(dtype), method)


# --------------------------------------------------------------------------------------------
# Local FDR (eq. 5): Efron's Poisson-regression density estimate, as statsmodels
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _poisson_basis(deg: int, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis of polynomials of degree <= deg at the nbins-1 bin centres.

    Bin centres on [-1, 1] (the histogram range mapped affinely) are t_k = -1 + (2k+1)/(nbins-1).
    Q = L R⁻¹ with L the Legendre design at the centres and L = QR: Q's columns are orthonormal
    (condition number 1) and span the same space as statsmodels' scaled Vandermonde design, so
    the Poisson MLE's fitted values are the same. Returns (Q (nbins-1, deg+1), R⁻¹ (deg+1, deg+1)),
    float64; a polynomial with coefficients β in the Q basis is ``legendre_values(t) @ R⁻¹ @ β``.
    """
    t = -1.0 + (2.0 * np.arange(nbins - 1) + 1.0) / (nbins - 1)
    q, r = np.linalg.qr(np_legendre.legvander(t, deg))
    return q, np.linalg.inv(r)


def _legendre_values(t: jax.Array, deg: int) -> jax.Array:
    """(..., deg+1) Legendre polynomials P_0..P_deg at t, by the three-term recurrence."""
    cols = [jnp.ones_like(t), t]
    for k in range(1, deg):
        cols.append(((2 * k + 1) * t * cols[k] - k * cols[k - 1]) / (k + 1))
    return jnp.stack(cols[: deg + 1], axis=-1)


def _fit_log_density(x: jax.Array, deg: int, nbins: int, n_iter: int):
    """Efron's Poisson fit of the histogram of x (1-D): returns log f as a function of points.

    As ``statsmodels.stats.multitest.local_fdr``: edges = numpy ``linspace(min x, max x, nbins)``
    (same arithmetic), ``numpy.histogram`` counts (last bin closed), log-polynomial of degree deg
    fitted by Poisson regression (Newton = IRLS from the least-squares fit of log(1 + counts),
    safeguarded, see ``local_fdr``), f(v) = fitted mean at v / (len(x) · bin width).
    """
    dtype = x.dtype
    n = x.shape[0]
    lo, hi = jnp.min(x), jnp.max(x)
    # numpy's linspace arithmetic, lo + k·step, bit for bit (values tied on an edge must land in
    # the same bin): an exact division, and a sort (a no-op, k·step is non-decreasing) between
    # the multiply and the add so XLA cannot contract them into an FMA, which rounds once.
    step = _div(hi - lo, nbins - 1)
    edges = (jnp.sort(jnp.arange(nbins, dtype=dtype) * step) + lo).at[-1].set(hi)
    # numpy.histogram counts: [e_k, e_k+1) and the last bin closed; #{x < e_0} = 0 and
    # #{x <= e_last} = n, so only the inner edges need counting (O(n · nbins), no sort).
    below = jnp.sum(x[:, None] < edges[None, 1:-1], axis=0)
    counts = jnp.diff(
        jnp.concatenate([jnp.zeros(1, below.dtype), below, jnp.full(1, n, below.dtype)])
    ).astype(dtype)
    width = edges[1] - edges[0]

    q_np, rinv_np = _poisson_basis(deg, nbins)
    q = jnp.asarray(q_np, dtype)
    beta0 = q.T @ jnp.log1p(counts)  # OLS start (orthonormal design)

    def neg_loglik(eta):  # Poisson, up to a constant
        return jnp.sum(jnp.exp(eta) - counts * eta, axis=-1)

    eps = jnp.finfo(dtype).eps
    log_tiny = jnp.log(jnp.finfo(dtype).tiny)
    damping = jnp.concatenate([jnp.zeros(1, dtype), 10.0 ** jnp.arange(-10, 3, dtype=dtype)])

    def newton_step(beta):
        eta = q @ beta
        mu = jnp.exp(eta)
        # Hessian H = Xᵀ diag(mu) X = aᵀa, a = diag(sqrt(mu)) X: the SVD of a gives H's eigenpairs
        # to full precision (forming H would square its condition number); the gradient of the
        # loglik, g = Xᵀ(counts − mu), is formed directly.
        sqrt_mu = jnp.exp(jnp.maximum(eta, log_tiny) / 2)
        _, sv, vt = jnp.linalg.svd(sqrt_mu[:, None] * q, full_matrices=False)
        g_v = vt @ (q.T @ (counts - mu))
        # Candidate steps (H + λI)⁻¹ g for λ = 0 (the Newton = IRLS step; singular values below
        # rounding dropped) and λ = s_max² · 10^k: the first that achieves >= 1/10 of its
        # predicted gain in loglik is taken (the Newton step once its predicted gain is at
        # rounding level: converged), else the best one.
        ev = sv**2
        lam = damping * ev[0]
        keep = (lam[:, None] > 0) | (sv > eps * sv[0])
        inv = jnp.where(keep, 1 / jnp.where(keep, ev + lam[:, None], 1), 0)  # (K, p)
        steps = (inv * g_v) @ vt  # (K, p)
        pred = jnp.sum(inv * g_v**2, -1) - 0.5 * jnp.sum(ev * (inv * g_v) ** 2, -1)
        cur = neg_loglik(eta)
        new = neg_loglik(eta + steps @ q.T)  # NaN/inf for overflowing steps
        slack = 100 * eps * jnp.sum(mu + counts * jnp.abs(eta))
        ok = (new <= cur + slack) & ((cur - new >= 0.1 * pred) | (pred[0] <= slack))
        best = jnp.argmin(jnp.where(jnp.isnan(new), jnp.inf, new))
        k = jnp.where(jnp.any(ok), jnp.argmax(ok), best)
        # Converged: the undamped Newton step was taken and moves log f by <= √eps anywhere on
        # the bins (q is orthonormal, so |q δ|∞ <= |δ|₂); Newton converges quadratically, so the
        # error left after it is at rounding level.
        converged = jnp.any(ok) & (k == 0) & (jnp.linalg.norm(steps[0]) <= math.sqrt(eps))
        return jnp.where(jnp.any(ok) | (new[k] < cur), beta + steps[k], beta), converged

    def body(carry):
        i, beta, _ = carry
        return i + 1, *newton_step(beta)

    _, beta, _ = jax.lax.while_loop(
        lambda c: (c[0] < n_iter) & ~c[2], body, (jnp.int32(0), beta0, jnp.zeros_like(beta0[0], bool))
    )
    coef = jnp.asarray(rinv_np, dtype) @ beta  # Legendre coefficients
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    log_norm = jnp.log(n * width)

    def log_f(v: jax.Array) -> jax.Array:
        return _legendre_values((v - centre) / half, deg) @ coef - log_norm

    return log_f


def _local_fdr_1d(z, pi0, z_null, *, deg, nbins, n_iter):
    log_f = _fit_log_density(z, deg, nbins, n_iter)(z)
    if z_null is None:
        log_f0 = -0.5 * jnp.square(z) - 0.5 * math.log(2 * math.pi)
    else:
        log_f0 = _fit_log_density(z_null, deg, nbins, n_iter)(z)
    return jnp.clip(pi0 * jnp.exp(log_f0 - log_f), 0, 1)


@LFDR_NULLS.register("theoretical", "f0 = N(0, 1), the bootstrap z being standardised (the paper's)")
def _lfdr_theoretical(z: jax.Array, z_null: Any, pi0: Any) -> jax.Array:
    return _local_fdr_1d(z, pi0, None, deg=7, nbins=30, n_iter=50)


@LFDR_NULLS.register("empirical", "f0 fitted to the bootstrap z like f (beyond the paper)")
def _lfdr_empirical(z: jax.Array, z_null: Any, pi0: Any) -> jax.Array:
    return _local_fdr_1d(z, pi0, z_null, deg=7, nbins=30, n_iter=50)


@functools.partial(jax.jit, static_argnames=("deg", "nbins", "n_iter"))
def _local_fdr(z, pi0, z_null, deg, nbins, n_iter):
    fn = functools.partial(_local_fdr_1d, deg=deg, nbins=nbins, n_iter=n_iter)
    return _batched(fn, z.ndim - 1)(z, pi0, z_null)


def local_fdr(
    z: Any,
    pi0: Any = 1.0,
    null: str = "theoretical",
    z_null: Any = None,
    deg: int = 7,
    nbins: int = 30,
    n_iter: int = 50,
) -> jax.Array:
    """Efron's local false discovery rate lfdr(z) = π₀ f₀(z) / f(z), clipped to [0, 1] (eq. 5).

    The same estimator as ``statsmodels.stats.multitest.local_fdr(z, null_proportion=pi0,
    deg=deg, nbins=nbins)`` (Efron 2008, "Microarrays, empirical Bayes and the two-groups
    model", Stat. Sci. 23:1–22), which the authors' reference code calls: the marginal density f
    is fitted by Poisson regression of the histogram of z — ``nbins`` equally spaced edges from
    min z to max z (nbins − 1 bins, last bin closed), log f a polynomial of degree ``deg`` —
    and f(z) = fitted count / (n · bin width).

    Parameters
    ----------
    z : (..., n) z-scores of each map; needs max z > min z.
    pi0 : scalar or (...) per map, default 1.0 (the paper's "most conservative" choice), in (0, 1].
        May be traced.
    null : {"theoretical", "empirical"}, static, default "theoretical"
        "theoretical": f₀ = N(0, 1) density (z is standardised by the bootstrap null).
        "empirical" (beyond the paper): f₀ fitted like f to ``z_null`` and evaluated at z; where
        z lies outside [min z⁰, max z⁰] the fitted log-polynomial is extrapolated, as evaluating
        statsmodels' fit there would.
    z_null : (..., B, n) or (..., m), required for null="empirical" only.
    deg : int, static, default 7 — degree of the log-density polynomial; deg + 1 <= nbins − 1.
    nbins : int, static, default 30 — number of bin edges (statsmodels' meaning).
    n_iter : int, static, default 50 — at most this many Newton (IRLS) iterations.
        statsmodels iterates plain IRLS to convergence (deviance change < 1e-8, at most 100)
        and overflows on some heavy-tailed inputs; here each iteration takes the Newton step
        unless it fails to reduce −loglik, then a Levenberg–Marquardt-damped one, so it
        converges where statsmodels does (to the same, unique MLE) and also where it diverges.
        The loop stops after an undamped Newton step that moves log f by <= √eps (Newton
        converges quadratically, so what is left is at rounding level): 4–9 iterations on
        normal mixtures, up to ~20 for heavy tails (bench/README.md, "Exactness and accuracy").
        The MLE needs at least deg + 1 non-empty bins; with fewer, statsmodels does not converge
        either and the result is the last iterate.

    Returns
    -------
    lfdr : (..., n) in [0, 1], z's dtype.

    Notes
    -----
    The Poisson MLE's fitted values depend only on the column space of the design, not on its
    basis; here the design is an orthonormalised Legendre basis on the histogram range instead of
    the std-scaled Vandermonde, with the same span, so the fitted density is the same but the
    Newton steps (from the SVD of diag(√μ)X) are well conditioned also in float32. The histogram
    edges reproduce numpy's float arithmetic bit for bit, so tied z on an edge fall into the same
    bin. The ratio is formed as exp(log f₀ − log f): no overflow, and f → 0 gives lfdr = 1.
    The measured distance to statsmodels is in bench/README.md ("Exactness and accuracy").
    """
    if callable(null):  # a user's lfdr: one map at a time, vmapped over the batch
        z = _as_float(z, "z")
        z_null = None if z_null is None else _flat_null(z, _as_float(z_null, "z_null"), "z", "z_null")
        pi0 = jnp.broadcast_to(_as_float(pi0, "pi0"), z.shape[:-1])
        return _batched(null, z.ndim - 1)(z, z_null, pi0)
    _check_option(null, LFDR_NULLS, "local FDR null")
    for value, name in ((deg, "deg"), (nbins, "nbins"), (n_iter, "n_iter")):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if deg < 0 or nbins < 2 or deg + 1 > nbins - 1 or n_iter < 0:
        raise ValueError(
            f"need deg >= 0, n_iter >= 0 and deg + 1 <= nbins − 1 (one parameter "
            f"per bin at most); got deg={deg}, nbins={nbins}, n_iter={n_iter}"
        )
    z = _as_float(z, "z")
    _require_nonempty(z, "z")
    _require_finite(z, "z")
    arrays = [z]
    if null == "empirical":
        if z_null is None:
            raise ValueError('null="empirical" needs z_null')
        z_null = _flat_null(z, _as_float(z_null, "z_null"), "z", "z_null")
        _require_nonempty(z_null, "z_null")
        _require_finite(z_null, "z_null")
        arrays.append(z_null)
    elif z_null is not None:
        raise ValueError('z_null is only used with null="empirical"')
    for x, name in zip(arrays, ("z", "z_null"), strict=False):
        if _is_concrete(x) and np.any(np.ptp(np.asarray(x), axis=-1) == 0):
            raise ValueError(f"{name} is constant within a map: the histogram has zero width")
    pi0 = _as_float(pi0, "pi0")
    if pi0.ndim and pi0.shape != z.shape[:-1]:
        raise ValueError(f"pi0 must be a scalar or have the batch shape {z.shape[:-1]}, got {pi0.shape}")
    if _is_concrete(pi0):
        v = np.asarray(pi0)
        if not np.all((v > 0) & (v <= 1)):
            raise ValueError(f"pi0 must lie in (0, 1], got {v}")
    dtype = jnp.result_type(*arrays)
    pi0 = jnp.broadcast_to(pi0.astype(dtype), z.shape[:-1])
    z_null = None if null == "theoretical" else z_null.astype(dtype)
    return _local_fdr(z.astype(dtype), pi0, z_null, deg, nbins, n_iter)


# --------------------------------------------------------------------------------------------
# π₀ (Storey & Tibshirani 2003; Storey, Taylor & Siegmund 2004), as R qvalue::pi0est
# --------------------------------------------------------------------------------------------


class Pi0Estimate(NamedTuple):
    """Result of ``pi0est`` (the fields of R ``qvalue::pi0est``), for one map of n p-values.

    pi0: () estimate, min(·, 1). pi0_lambda: (L,) raw π₀(λ) = #{p >= λ} / (n(1 − λ)), unclipped.
    lambdas: (L,) the λ grid. pi0_smooth: (L,) the smoothed π₀(λ) ("smoother" with L > 1),
    else None.
    """

    pi0: jax.Array
    pi0_lambda: jax.Array
    lambdas: jax.Array
    pi0_smooth: jax.Array | None


@functools.lru_cache(maxsize=32)
def smoother_matrix(lambdas: tuple[float, ...], df: float) -> np.ndarray:
    """(L, L) hat matrix of the cubic smoothing spline on x = lambdas with trace df (float64).

    R ``smooth.spline(x, y, df)`` with L < 50 distinct x puts a knot at every x; the penalised
    least-squares minimiser of Σ(y − g(x))² + λ∫g''² is then the natural cubic spline with knots
    at x (Reinsch form): S(λ) = (I + λK)⁻¹, K = Q R⁻¹ Qᵀ with Q the (L, L−2) second-difference
    and R the (L−2, L−2) tridiagonal matrix of the spacings (Green & Silverman 1994, §2.3).
    With K = U diag(d) Uᵀ, tr S(λ) = Σ 1/(1 + λ d_k) decreases from L to 2; λ solves
    tr S(λ) = df by 200 bisection steps in log λ (to float64 precision). x is first mapped to
    [0, 1], as R does.
    """
    x = np.asarray(lambdas, dtype=np.float64)
    x = (x - x[0]) / (x[-1] - x[0])
    n, h = x.size, np.diff(x)
    q = np.zeros((n, n - 2))
    r = np.zeros((n - 2, n - 2))
    for j in range(n - 2):
        q[j, j], q[j + 1, j], q[j + 2, j] = 1 / h[j], -1 / h[j] - 1 / h[j + 1], 1 / h[j + 1]
        r[j, j] = (h[j] + h[j + 1]) / 3
        if j + 1 < n - 2:
            r[j, j + 1] = r[j + 1, j] = h[j + 1] / 6
    d, u = np.linalg.eigh(q @ np.linalg.solve(r, q.T))
    d = np.clip(d, 0.0, None)  # 2 zero eigenvalues (lines)

    def trace(log_lam: float) -> float:
        return float(np.sum(1.0 / (1.0 + np.exp(log_lam) * d)))

    lo, hi = -60.0, 60.0  # tr S: ≈ L at lo, ≈ 2 at hi
    if df >= trace(lo):
        return np.eye(n)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if trace(mid) > df else (lo, mid)
    return (u / (1.0 + np.exp((lo + hi) / 2) * d)) @ u.T


def _type7_quantile_weights(n: int, prob: float) -> tuple[int, int, float]:
    """R quantile(type = 7) of n sorted values: (lo, hi) 0-based indices and weight h."""
    index = 1 + max(n - 1, 0) * prob
    lo, hi = math.floor(index), math.ceil(index)
    return lo - 1, hi - 1, index - lo


def _round_up(values: tuple[float, ...], dtype: Any) -> np.ndarray:
    """Each float64 value rounded up to ``dtype``: the smallest x of that dtype with x >= value."""
    v = np.asarray(values, np.float64)
    x = v.astype(dtype)
    return np.where(x.astype(np.float64) < v, np.nextafter(x, np.asarray(np.inf, dtype)), x)


def _round_down(value: float, dtype: Any) -> np.ndarray:
    """The float64 ``value`` rounded down to ``dtype``: the largest x of that dtype with x <= value.

    For p of that dtype, ``p > x`` is then exactly ``float64(p) > value``.
    """
    x = np.asarray(value, np.float64).astype(dtype)
    return np.where(x.astype(np.float64) > value, np.nextafter(x, np.asarray(-np.inf, dtype)), x)


def _pi0_attnreg_1d(p, *, small_n):
    dtype = p.dtype
    m = p.shape[0]
    count = jnp.sum(p > jnp.asarray(_round_down(ATTNREG_LAMBDA, dtype), dtype), dtype=jnp.int32)
    raw = count.astype(dtype) / jnp.asarray(m * (1.0 - ATTNREG_LAMBDA), dtype)
    pi0 = jnp.asarray(1.0, dtype) if small_n and m < ATTNREG_MIN_N else jnp.minimum(raw, 1)
    lam = jnp.asarray([ATTNREG_LAMBDA], dtype)
    return Pi0Estimate(pi0, raw[None], lam, None)


@functools.partial(jax.jit, static_argnames=("small_n",))
def _pi0_attnreg(p: jax.Array, small_n: bool) -> Pi0Estimate:
    return _batched(functools.partial(_pi0_attnreg_1d, small_n=small_n), p.ndim - 1)(p)


def pi0_attnreg(p: Any, *, small_n: bool = False) -> Pi0Estimate:
    """π₀ as the reference code estimates it: its Python port of qvalue's ``pi0est``.

    π₀(λ) = #{p > λ} / (n(1 − λ)) (strict ``>``) on λ = ``numpy.arange(0, 0.90, 0.01)``, then
    an interpolating cubic spline (``scipy.interpolate.splrep(λ, π₀(λ), k=3)``, s = 0) evaluated
    at the last λ, 0.89: an interpolating spline passes through its data, so the estimate is
    π₀(0.89) = #{p > 0.89} / (0.11·n), set to 1 where it exceeds 1 (docs/method.md §3). No
    smoothing: π₀ rests on the p-values above 0.89 only.

    Parameters
    ----------
    p : array_like, shape (..., n)
        p-values in [0, 1]; leading axes are a batch of maps. May be traced.
    small_n : bool, default False
        The rule of the port's ``qvalue()``: π₀ = 1 for fewer than 100 p-values. Its
        ``pi0est``, which the reference pipeline calls, has no such rule.

    Returns
    -------
    Pi0Estimate
        ``pi0`` (...), in [0, 1]; ``pi0_lambda`` (..., 1) the raw π₀(0.89); ``lambdas`` (1,).

    Notes
    -----
    The count compares each p with the float64 λ as numpy does (``p > λ`` with λ rounded down
    to p's dtype, which is exact), so p-values tied at 0.89 are left out, as there.
    """
    if not isinstance(small_n, bool):
        raise TypeError(f"small_n must be True or False, got {small_n!r}")
    p = _as_float(p, "p")
    _require_nonempty(p, "p")
    _require_in_unit_interval(p, "p")
    return _pi0_attnreg(p, small_n)


def _pi0est_1d(p, *, lambdas, method, smooth_df):
    dtype = p.dtype
    m = p.shape[0]
    lam = jnp.asarray(lambdas, dtype)
    one_minus = jnp.asarray(1.0 - np.asarray(lambdas), dtype)  # in float64: exact for float32
    # W = #{p >= λ} with R's float64 λ (0.05 + 14·0.05 = 0.7500000000000001 > 0.75): compared
    # with the smallest value of p's dtype >= λ, so a float32 p = 0.75 (bootstrap p-values are
    # often k/m) is not counted, as in R; float32(λ) itself would round down to 0.75.
    n_geq = jnp.sum(
        p[:, None] >= jnp.asarray(_round_up(lambdas, dtype), dtype), axis=0, dtype=jnp.int32
    ).astype(dtype)  # (L,), no sort
    pi0_lambda = _div(n_geq, m * one_minus)  # as R qvalue 2.30, bit for bit
    if len(lambdas) == 1:
        return Pi0Estimate(jnp.minimum(pi0_lambda[0], 1), pi0_lambda, lam, None)
    if method == "smoother":
        smooth = jnp.asarray(smoother_matrix(lambdas, smooth_df), dtype) @ pi0_lambda
        return Pi0Estimate(jnp.minimum(smooth[-1], 1), pi0_lambda, lam, smooth)
    # bootstrap: closed form of Storey, Taylor & Siegmund (2004) by D. Robinson, as qvalue.
    lo, hi, h = _type7_quantile_weights(len(lambdas), 0.1)
    srt = jnp.sort(pi0_lambda)
    min_pi0 = jnp.where((h > 0) & (srt[hi] != srt[lo]), (1 - h) * srt[lo] + h * srt[hi], srt[lo])
    mse = _div(n_geq, float(m) ** 2 * one_minus**2) * (1 - _div(n_geq, m)) + (pi0_lambda - min_pi0) ** 2
    best = jnp.min(jnp.where(mse == jnp.min(mse), pi0_lambda, jnp.inf))
    return Pi0Estimate(jnp.minimum(best, 1), pi0_lambda, lam, None)


@functools.partial(jax.jit, static_argnames=("lambdas", "method", "smooth_df"))
def pi0est_unchecked(p: jax.Array, lambdas: tuple[float, ...], method: str, smooth_df: float) -> Pi0Estimate:
    """`pi0est` without its checks and without clamping below: the raw estimate.

    R ``qvalue`` (and `pi0est`) refuse p-values with max(p) < max(λ); the pipeline computes
    the estimate anyway and clamps it to [0, 1] itself (docs/method.md §3).

    Parameters
    ----------
    p : jax.Array, shape (..., n)
        p-values; leading axes are a batch.
    lambdas : tuple of float
        The λ grid (e.g. `DEFAULT_LAMBDAS`).
    method : {"smoother", "bootstrap"}
        As `pi0est`.
    smooth_df : float
        Degrees of freedom of the smoother.

    Returns
    -------
    Pi0Estimate
        As `pi0est`, with ``pi0`` possibly below 0.
    """
    fn = functools.partial(_pi0est_1d, lambdas=lambdas, method=method, smooth_df=smooth_df)
    return _batched(fn, p.ndim - 1)(p)


def pi0est(p: Any, method: str = "smoother", lambdas: Any = None, smooth_df: float = 3.0) -> Pi0Estimate:
    """Storey's estimate of the proportion π₀ of true nulls, as R ``qvalue::pi0est`` (2.30).

    π₀(λ) = #{p >= λ} / (n(1 − λ)) on a grid of λ (Storey & Tibshirani 2003, PNAS 100:9440).
    Assumes null p-values uniform on [0, 1] and independent enough for the counts to average.

    Parameters
    ----------
    p : (..., n) p-values in [0, 1]; leading axes are a batch of maps.
    method : {"smoother", "bootstrap", "attnreg"}, static, default "smoother"
        "attnreg": the reference code's estimator, `pi0_attnreg` (its own λ; no ``lambdas``).
        "smoother": a cubic smoothing spline with ``smooth_df`` degrees of freedom of π₀(λ) on λ
        (R ``smooth.spline(lambda, pi0, df = 3)``), evaluated at the largest λ.
        "bootstrap": Storey, Taylor & Siegmund (2004, JRSS B 66:187) in qvalue's closed form:
        minπ₀ = the 10% quantile (R type 7) of π₀(λ); W = #{p >= λ};
        mse = W/(n²(1−λ)²)·(1 − W/n) + (π₀(λ) − minπ₀)²; π₀ = the smallest π₀(λ) of minimal mse.
    lambdas : static; default None = R's seq(0.05, 0.95, 0.05). A single λ gives π₀(λ); else at
        least 4 distinct values in [0, 1) (R's rule). Sorted as R does.
    smooth_df : float, static, default 3 — in (2, L] for L values of λ.

    Returns
    -------
    Pi0Estimate(pi0, pi0_lambda, lambdas, pi0_smooth); pi0 = min(estimate, 1), shape (...).

    Notes
    -----
    R finds the spline's smoothing parameter by a golden-section search that stops at tolerance
    1e-4 in R's ``spar`` (the reached trace is 3.0003 on the default grid); here tr S = df is
    solved exactly, so "smoother" differs from R by ~1e-5. The spline depends on λ only, so its
    hat matrix is a constant built once per grid in float64 (numpy) and applied as a matrix.
    R stops with an error when max(p) < max(λ) (raised here for concrete input) or when the
    estimate is <= 0 (returned unchanged here: check it).
    """
    _check_option(method, PI0_METHODS, "pi0 method")
    if method == "attnreg":
        if lambdas is not None:
            raise ValueError("the 'attnreg' pi0 method has its own lambda (0.89); do not pass lambdas")
        return pi0_attnreg(p)
    if lambdas is None:
        lam = DEFAULT_LAMBDAS
    else:
        if isinstance(lambdas, jax.core.Tracer):
            raise TypeError("lambdas must be static (a float or a sequence of floats)")
        lam = tuple(sorted(float(v) for v in np.atleast_1d(np.asarray(lambdas, np.float64))))
    if not lam or not all(0 <= v < 1 for v in lam):
        raise ValueError(f"lambdas must be non-empty and lie in [0, 1), got {lam}")
    if 1 < len(lam) < 4:
        raise ValueError(f"need 1 or at least 4 values of lambda, got {len(lam)}")
    if len(set(lam)) != len(lam):
        raise ValueError(f"lambdas must be distinct, got {lam}")
    smooth_df = float(smooth_df)
    if method == "smoother" and len(lam) > 1 and not 2 < smooth_df <= len(lam):
        raise ValueError(
            f"smooth_df must lie in (2, {len(lam)}] (a cubic smoothing spline has "
            f"more than 2 degrees of freedom, at most one per lambda), got "
            f"{smooth_df}"
        )
    p = _as_float(p, "p")
    _require_nonempty(p, "p")
    _require_in_unit_interval(p, "p")
    if _is_concrete(p) and np.any(np.asarray(p).max(axis=-1) < lam[-1]):
        raise ValueError(
            f"max(p) is smaller than the largest lambda {lam[-1]} (R qvalue: change the range of lambda)"
        )
    return pi0est_unchecked(p, lam, method, smooth_df)


PI0_METHODS.add(
    "smoother",
    lambda p: _pi0est_1d(p, lambdas=DEFAULT_LAMBDAS, method="smoother", smooth_df=3.0).pi0,
    "R qvalue's cubic smoothing spline of pi0(lambda), read at lambda = 0.95 (preset paper)",
)
PI0_METHODS.add(
    "bootstrap",
    lambda p: _pi0est_1d(p, lambdas=DEFAULT_LAMBDAS, method="bootstrap", smooth_df=3.0).pi0,
    "R qvalue's bootstrap choice of lambda (Storey, Taylor & Siegmund 2004)",
)
PI0_METHODS.add(
    "attnreg",
    lambda p: _pi0_attnreg_1d(p, small_n=False).pi0,
    "the authors' port of qvalue: #{p > 0.89} / (0.11 n), at most 1 (preset attnreg)",
)


# --------------------------------------------------------------------------------------------
# q-values, Benjamini–Hochberg, sRMSD
# --------------------------------------------------------------------------------------------


def _qvalues_1d(p, pi0):
    m = p.shape[0]
    order = jnp.argsort(p)
    ranks = jnp.arange(1, m + 1, dtype=p.dtype)
    q = jnp.minimum(1, jax.lax.cummin(p[order] * m / ranks, reverse=True))
    return jnp.zeros_like(p).at[order].set(pi0 * q)


@jax.jit
def _qvalues(p, pi0):
    return _batched(_qvalues_1d, p.ndim - 1)(p, pi0)


def _check_p_and_level(p: Any, level: Any, level_name: str, lo_open: bool) -> tuple:
    p = _as_float(p, "p")
    _require_nonempty(p, "p")
    _require_in_unit_interval(p, "p")
    level = _as_float(level, level_name)
    if level.ndim and level.shape != p.shape[:-1]:
        raise ValueError(
            f"{level_name} must be a scalar or have the batch shape {p.shape[:-1]}, got {level.shape}"
        )
    if _is_concrete(level):
        v = np.asarray(level)
        ok = (v > 0) if lo_open else (v >= 0)
        if not np.all(ok & (v <= 1)):
            raise ValueError(f"{level_name} must lie in {'(' if lo_open else '['}0, 1], got {v}")
    dtype = jnp.result_type(p, level)
    return p.astype(dtype), jnp.broadcast_to(level.astype(dtype), p.shape[:-1])


def qvalues(p: Any, pi0: Any) -> jax.Array:
    """Storey's q-values, as R ``qvalue::qvalue(p, pi0 = pi0)$qvalues`` (pfdr = FALSE).

    q_(k) = π₀ · min(1, min_{j >= k} p_(j) n / j) over the ascending p_(1) <= ... <= p_(n)
    (Storey 2002; Storey & Tibshirani 2003). With π₀ = 1 these are BH-adjusted p-values.

    Parameters
    ----------
    p : (..., n) p-values in [0, 1]. pi0 : scalar or (...) per map, in (0, 1], e.g.
        ``pi0est(p).pi0`` (qvalue's default is the "smoother" estimate). May be traced.

    Returns
    -------
    q : (..., n), in p's order; tied p-values get equal q.
    """
    p, pi0 = _check_p_and_level(p, pi0, "pi0", lo_open=True)
    return _qvalues(p, pi0)


def _bh_threshold_1d(p, q):
    m = p.shape[0]
    crit = _div(jnp.arange(1, m + 1, dtype=p.dtype), m) * q  # statsmodels: (k/m)·q
    k_max = jnp.max(jnp.where(jnp.sort(p) <= crit, jnp.arange(1, m + 1), 0))
    return _div(k_max.astype(p.dtype), m) * q


@jax.jit
def _bh_threshold(p, q):
    return _batched(_bh_threshold_1d, p.ndim - 1)(p, q)


def bh_threshold(p: Any, q: Any) -> jax.Array:
    """Benjamini–Hochberg (1995) step-up cutoff at FDR level q: reject p <= the returned value.

    With p_(1) <= ... <= p_(n) and k* = max{k: p_(k) <= (k/n)·q} (0 if none), returns
    t = (k*/n)·q; {p <= t} is exactly the BH rejection set (``statsmodels`` ``fdrcorrection``),
    and t = 0 when nothing is rejected (then every p > 0). Valid under independence or positive
    regression dependence of the null p-values.

    p : (..., n) in [0, 1]; q : scalar or (...) in [0, 1]. Returns t : (...), p's dtype.
    """
    p, q = _check_p_and_level(p, q, "q", lo_open=False)
    return _bh_threshold(p, q)


def bh_reject(p: Any, q: Any) -> jax.Array:
    """Benjamini–Hochberg rejections at FDR level q: boolean (..., n), p <= ``bh_threshold``."""
    p, q = _check_p_and_level(p, q, "q", lo_open=False)
    return p <= _bh_threshold(p, q)[..., None]


@jax.jit
def _srmsd(p):
    n = p.shape[-1]
    u = _div(jnp.arange(1, n + 1, dtype=p.dtype) - 0.5, n)
    rmsd = jnp.sqrt(jnp.mean(jnp.square(u - jnp.sort(p, axis=-1)), axis=-1))
    return jnp.where(jnp.median(p, axis=-1) > 0.5, -rmsd, rmsd)


def srmsd(p: Any) -> jax.Array:
    """Signed RMSD of p-values from the uniform distribution (docs/method.md §5; Yao & Ochoa 2023).

    Sort the n p-values, u_k = (k − 0.5)/n, RMSD = sqrt(mean((u_k − p_(k))²)), negated when
    median(p) > 0.5 (conservative p-values). 0 for uniform p; +: anti-conservative (small p
    over-represented). Under the null |sRMSD| ~ 0.4/sqrt(n) (Cramér–von Mises: E ∫(F_n − F)² =
    1/(6n)).

    p : (..., n) in [0, 1]. Returns (...), p's dtype.
    """
    p = _as_float(p, "p")
    _require_nonempty(p, "p")
    _require_in_unit_interval(p, "p")
    return _srmsd(p)
