"""A plain numpy transcription of the reference (authors') pipeline, on pixels, for the tests.

Written from the method's description (docs/method.md §3, §4 and "Reproducing the authors'
numbers"), not from their code: the patch maps are nearest-upsampled to pixels, then

- z of log scores against the pooled null (mean, std ddof 0 of all null pixels);
- two-sided pooled p-values: pool = |z| ∪ |z⁰|, p = 1 − #{v ∈ pool: v <= |z|} / |pool|;
- π₀ = the qvalue port's estimate: π₀(λ) = #{p > λ}/(n(1 − λ)) on λ = 0, 0.01, …, 0.89, an
  interpolating cubic spline evaluated at 0.89, capped at 1;
- lfdr = statsmodels ``local_fdr(z, null_proportion=π₀)``;
- the maps: A_z = A·1[z >= z_th]; A_p = A_z·1[p <= α]; A_l = A_z·1[lfdr <= β];
  A_π = A_z with p > percentile(p, 100(1 − π₀)) set to 0; percentile thresholds
  ``round(np.percentile(x, q), 2)``;
- ROI metrics against the outside of the map before; D = Σ after / Σ before and its error.

Everything in float64, except that the attention maps come in as the float32 the model made.
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate
from statsmodels.stats.multitest import local_fdr


def upsample(a: np.ndarray, patch: int) -> np.ndarray:
    """(..., h, w) → (..., h·patch, w·patch), each patch value repeated (nearest)."""
    return np.repeat(np.repeat(a, patch, axis=-2), patch, axis=-1)


def zstat(obs: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    log_null = np.log(np.asarray(null, np.float32).ravel()).astype(np.float64)
    mu, sd = log_null.mean(), log_null.std()
    z_null = (log_null - mu) / sd
    z = (np.log(np.asarray(obs, np.float32)).astype(np.float64) - mu) / sd
    return z, z_null.reshape(np.shape(null))


def pooled_pvalues(z: np.ndarray, z_null: np.ndarray) -> np.ndarray:
    az = np.abs(z).ravel()
    pool = np.sort(np.concatenate([az, np.abs(z_null).ravel()]))
    p = 1 - np.searchsorted(pool, az, side="right") / pool.size
    return p.reshape(z.shape)


def pi0(p: np.ndarray) -> float:
    p = np.asarray(p, np.float64).ravel()
    lam = np.arange(0, 0.90, 0.01)
    pi0_lam = np.array([np.sum(p > v) / (p.size * (1 - v)) for v in lam])
    est = float(interpolate.splev(lam[-1], interpolate.splrep(lam, pi0_lam, k=3)))
    return min(est, 1.0)


def pipeline(
    obs: np.ndarray,
    null: np.ndarray,
    patch: int,
    *,
    alpha: float = 0.3,
    beta: float = 0.3,
    alpha_q: float | None = None,
    beta_q: float | None = None,
    z_th: float = 0.0,
) -> dict:
    """The reference pipeline on one image: obs (h, w) and null (B, h, w) patch maps."""
    a = upsample(np.asarray(obs, np.float64), patch)
    a_null = upsample(np.asarray(null, np.float32), patch)
    z, z_null = zstat(upsample(np.asarray(obs, np.float32), patch), a_null)
    p = pooled_pvalues(z, z_null)
    est = pi0(p)
    lfdr = local_fdr(z.ravel(), null_proportion=est).reshape(z.shape)
    if alpha_q is not None:
        alpha = round(float(np.percentile(p, alpha_q)), 2)
    if beta_q is not None:
        beta = round(float(np.percentile(lfdr, beta_q)), 2)
    zmask = z >= z_th
    map_z = a * zmask
    map_pi0 = map_z.copy()
    map_pi0[p > np.percentile(p, 100 * (1 - est))] = 0
    return {
        "z": z,
        "pool": np.sort(np.concatenate([np.abs(z).ravel(), np.abs(z_null).ravel()])),
        "p": p,
        "lfdr": lfdr,
        "pi0": est,
        "alpha": alpha,
        "beta": beta,
        "maps": {"z": map_z, "p": map_z * (p <= alpha), "lfdr": map_z * (lfdr <= beta), "pi0": map_pi0},
    }


def roi_metrics(before: np.ndarray, after: np.ndarray, roi: np.ndarray) -> tuple[float, float]:
    """(mean percentile of the ROI of ``after`` among the outside of ``before``, non-zero %)."""
    rest = np.sort(before[~roi])
    inside = after[roi]
    perc = np.searchsorted(rest, inside, side="left") * 100 / rest.size
    return float(perc.mean()), float(np.count_nonzero(inside) / inside.size * 100)


def suppression(before: list[float], after: list[float]) -> tuple[float, float]:
    b, a = np.asarray(before), np.asarray(after)
    n, s_b, s_a = b.size, b.sum(), a.sum()
    var = n * a.var(ddof=1) / s_b**2 + (s_a / s_b**2) ** 2 * n * b.var(ddof=1)
    return float(s_a / s_b), float(np.sqrt(var))
