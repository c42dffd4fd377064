"""Evaluation metrics of the simulation study (docs/method.md §5; paper §3.2, eqs. 8-10).

The paper defines every metric on the pixels of the attention map nearest-upsampled to the image
(each patch value repeated p x p times) and a pixel ROI that need not align with the patches. Here
they are computed exactly on the (h, w) patch grid: a patch holds ``weights * p**2`` ROI pixels
and ``(1 - weights) * p**2`` pixels outside, with ``weights`` from
`arb_jax.study.simulate.roi_patch_weights`, so every pixel sum is a weighted patch sum. The results
equal the pixel-level definitions (tests compare with a plain numpy pixel implementation).

Maps "after" may carry leading axes (several regularisers, thresholds, ...): (..., h, w) gives
results of shape (...). The "before" map is a single (h, w) map.

`suppression_factor` is a host-side (numpy) aggregate over a table of images. The sRMSD of
p-values (Appendix C) lives in `arb_jax.stats`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from arb_jax.checks import as_int

__all__ = [
    "mean_percentile_in_roi",
    "nonzero_percent_in_roi",
    "sensitivity",
    "specificity",
    "sens_spec_curve",
    "suppression_factor",
]


# --------------------------------------------------------------------------- validation helpers


def _real_array(x: ArrayLike, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real (float or integer) array, got dtype {x.dtype}")
    return x


def _check_weights(roi_weights: ArrayLike) -> jax.Array:
    weights = _real_array(roi_weights, "roi_weights")
    if weights.ndim != 2:
        raise ValueError(f"roi_weights must have shape (h, w), got shape {weights.shape}")
    return weights.astype(jnp.result_type(weights.dtype, jnp.float32))


def _check_map(a: ArrayLike, name: str, weights: jax.Array, single: bool = False) -> jax.Array:
    a = _real_array(a, name)
    expected = "(h, w)" if single else "(..., h, w)"
    if a.ndim < 2 or a.shape[-2:] != weights.shape or (single and a.ndim != 2):
        raise ValueError(
            f"{name} must have shape {expected} with (h, w) = roi_weights.shape "
            f"{weights.shape}, got shape {a.shape}"
        )
    return a


# --------------------------------------------------------------------------- mean percentile


@functools.partial(jax.jit, static_argnames=("patch",))
def _mean_percentile(before, after, weights, patch):
    if patch is None:
        roi = weights.reshape(-1)
        out = 1.0 - roi
    else:  # integer pixel counts: exact cumulative sums
        roi = jnp.round(weights.reshape(-1) * patch * patch).astype(jnp.int32)
        out = patch * patch - roi
    flat = before.reshape(-1)
    order = jnp.argsort(flat)
    values = flat[order]
    below = jnp.concatenate([jnp.zeros(1, out.dtype), jnp.cumsum(out[order])])
    total_out = below[-1].astype(weights.dtype)
    roi = roi.astype(weights.dtype).reshape(weights.shape)
    total_roi = jnp.sum(roi)

    def mean_perc(a):
        # number of outside pixels of `before` with value strictly less than each value of `a`
        n_less = below[jnp.searchsorted(values, a, side="left")].astype(weights.dtype)
        return 100.0 * jnp.sum(roi * n_less, axis=(-2, -1)) / (total_roi * total_out)

    return mean_perc(before), mean_perc(after)


def mean_percentile_in_roi(
    before: ArrayLike,
    after: ArrayLike,
    roi_weights: ArrayLike,
    patch: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean percentile of the ROI's attention w.r.t. the outside of the map before (Fig. 3a).

    On pixels: for each ROI pixel value v of a map, the percentage of pixels OUTSIDE the ROI of the
    map ``before`` (the unregularised map) with value strictly less than v; averaged over the ROI
    pixels. Both the map before and each map after are ranked against the outside of the map
    before (as the reference code). 50 means the ROI looks like the rest, 0 that it is suppressed.

    Computed by sorting the before-map once and a weighted `searchsorted`: O(n log n) in the
    number of patches n, no n x n comparison matrix.

    Parameters
    ----------
    before : ArrayLike
        (h, w) attention map before regularisation, on the patch grid.
    after : ArrayLike
        (..., h, w) map(s) after regularisation.
    roi_weights : ArrayLike
        (h, w) ROI fraction of each patch (`arb_jax.study.simulate.roi_patch_weights`).
    patch : int | None, default None
        optional patch size p; if given, the weights are rounded to pixel counts
        ``weights * p**2`` and counted in integers (exact cumulative sums for any image size);
        without it the fractions are used directly (same result up to float rounding).

    Returns
    -------
    tuple[jax.Array, jax.Array]
        ``(perc_before, perc_after)``: a scalar and an array of shape (...), in percent [0, 100].
        NaN if the ROI or its outside is empty.
    """
    weights = _check_weights(roi_weights)
    before = _check_map(before, "before", weights, single=True)
    after = _check_map(after, "after", weights)
    patch = as_int(patch, "patch", allow_none=True)
    dtype = jnp.result_type(before.dtype, after.dtype)
    return _mean_percentile(before.astype(dtype), after.astype(dtype), weights, patch)


# --------------------------------------------------------------------------- non-zero %, sens, spec


def nonzero_percent_in_roi(attn: ArrayLike, roi_weights: ArrayLike) -> jax.Array:
    """Percentage of ROI pixels whose attention is non-zero (sparsity, Fig. 3b).

    Parameters
    ----------
    attn : ArrayLike
        (..., h, w) attention map(s) on the patch grid.
    roi_weights : ArrayLike
        (h, w) ROI fraction of each patch.

    Returns
    -------
    jax.Array
        (...) float, ``100 * #{ROI pixels != 0} / #ROI`` (NaN if the ROI is empty).
    """
    weights = _check_weights(roi_weights)
    attn = _check_map(attn, "attn", weights)
    nonzero = (attn != 0).astype(weights.dtype)
    return 100.0 * jnp.sum(weights * nonzero, axis=(-2, -1)) / jnp.sum(weights)


def sensitivity(before: ArrayLike, after: ArrayLike, roi_weights: ArrayLike) -> jax.Array:
    """Sensitivity, eq. 9: ``1 - sum_ROI A' / sum_ROI A`` over pixels.

    1: the attention in the ROI (the noise) is removed; 0: unchanged.

    Parameters
    ----------
    before : ArrayLike
        (h, w) map A before regularisation.
    after : ArrayLike
        (..., h, w) map(s) A' after regularisation.
    roi_weights : ArrayLike
        (h, w) ROI fraction of each patch.

    Returns
    -------
    jax.Array
        (...) float (NaN/inf if the ROI carries no attention before).
    """
    weights = _check_weights(roi_weights)
    before = _check_map(before, "before", weights, single=True)
    after = _check_map(after, "after", weights)
    return 1.0 - jnp.sum(weights * after, axis=(-2, -1)) / jnp.sum(weights * before)


def specificity(before: ArrayLike, after: ArrayLike, roi_weights: ArrayLike) -> jax.Array:
    """Specificity, eq. 10: ``sum_rest A' / sum_rest A`` over the pixels outside the ROI.

    1: the rest of the map (the signal) is intact; 0: removed.

    Parameters
    ----------
    before : ArrayLike
        (h, w) map A before regularisation.
    after : ArrayLike
        (..., h, w) map(s) A' after regularisation.
    roi_weights : ArrayLike
        (h, w) ROI fraction of each patch.

    Returns
    -------
    jax.Array
        (...) float (NaN/inf if the rest carries no attention before).
    """
    weights = _check_weights(roi_weights)
    before = _check_map(before, "before", weights, single=True)
    after = _check_map(after, "after", weights)
    rest = 1.0 - weights
    return jnp.sum(rest * after, axis=(-2, -1)) / jnp.sum(rest * before)


@functools.partial(jax.jit, static_argnames=("keep",))
def _sens_spec_curve(before, stat, weights, thresholds, base, keep):
    def one(t):
        kept = stat <= t if keep == "le" else stat >= t
        after = jnp.where(kept, base, jnp.zeros_like(base))
        roi_sum = jnp.sum(weights * after)
        rest_sum = jnp.sum((1.0 - weights) * after)
        return roi_sum, rest_sum

    roi_sums, rest_sums = jax.vmap(one)(thresholds)
    sens = 1.0 - roi_sums / jnp.sum(weights * before)
    spec = rest_sums / jnp.sum((1.0 - weights) * before)
    return sens, spec


def sens_spec_curve(
    before: ArrayLike,
    stat: ArrayLike,
    roi_weights: ArrayLike,
    thresholds: ArrayLike,
    *,
    keep: str = "le",
    base: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Sensitivity and specificity of threshold shrinkage over a grid of thresholds (Fig. 5).

    For each threshold t the map after is ``base * 1[stat <= t]`` (``keep="le"``: p-values,
    LFDR; the paper spans 50 thresholds) or ``base * 1[stat >= t]`` (``keep="ge"``: z-scores);
    both are scored against ``before`` with `sensitivity` and `specificity`. ``base`` defaults to
    ``before``; pass the z-thresholded map A_z to reproduce the paper's p- and LFDR-thresholding
    on top of it. The baseline of shrinking every score by the same factor s is the diagonal
    ``sensitivity = s, specificity = 1 - s``: a useful curve lies above it.

    Parameters
    ----------
    before : ArrayLike
        (h, w) map before regularisation.
    stat : ArrayLike
        (h, w) per-patch statistic (p, lfdr, z, ...).
    roi_weights : ArrayLike
        (h, w) ROI fraction of each patch.
    thresholds : ArrayLike
        (T,) threshold grid, e.g. ``jnp.linspace(0, 1, 50)``.
    keep : str, default 'le'
        "le" keeps scores with ``stat <= t``, "ge" those with ``stat >= t``.
    base : ArrayLike | None, default None
        optional (h, w) map that is thresholded (default ``before``).

    Returns
    -------
    tuple[jax.Array, jax.Array]
        ``(sens, spec)``, each (T,) float.
    """
    if keep not in ("le", "ge"):
        raise ValueError(f"keep must be 'le' or 'ge', got {keep!r}")
    weights = _check_weights(roi_weights)
    before = _check_map(before, "before", weights, single=True)
    stat = _check_map(stat, "stat", weights, single=True)
    base = before if base is None else _check_map(base, "base", weights, single=True)
    thresholds = _real_array(thresholds, "thresholds")
    if thresholds.ndim != 1:
        raise ValueError(f"thresholds must have shape (T,), got shape {thresholds.shape}")
    return _sens_spec_curve(before, stat, weights, thresholds, base, keep)


# --------------------------------------------------------------------------- suppression factor


def suppression_factor(perc_before: ArrayLike, perc_after: ArrayLike) -> tuple[float, float]:
    """Average suppression factor D (eq. 8) over N images, with the reference code's error.

    ``D = S_a / S_b`` with ``S_a = sum(perc_after)`` and ``S_b = sum(perc_before)``, the mean
    percentiles in the ROI after and before regularisation of each image. 1: no effect,
    0: perfect suppression. Error by first-order propagation with the sums treated as independent
    (the reference code; the before/after correlation is ignored):
    ``Var(D) = N var(after) / S_b**2 + (S_a / S_b**2)**2 N var(before)``, var with ddof=1,
    ``err = sqrt(Var(D))``.

    Parameters
    ----------
    perc_before : ArrayLike
        (N,) mean percentiles before, N >= 2.
    perc_after : ArrayLike
        (N,) mean percentiles after, same images.

    Returns
    -------
    tuple[float, float]
        ``(D, err)`` as Python floats.
    """
    before = np.asarray(perc_before, dtype=np.float64)
    after = np.asarray(perc_after, dtype=np.float64)
    if before.ndim != 1 or after.shape != before.shape:
        raise ValueError(
            f"perc_before and perc_after must be 1-D of equal length, got shapes "
            f"{before.shape} and {after.shape}"
        )
    n = before.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images for a ddof=1 variance, got {n}")
    if not (np.all(np.isfinite(before)) and np.all(np.isfinite(after))):
        raise ValueError("perc_before and perc_after must be finite (drop images with NaN first)")
    s_b, s_a = before.sum(), after.sum()
    if s_b == 0:
        raise ValueError("sum of perc_before is 0: D is undefined")
    d = s_a / s_b
    var = n * after.var(ddof=1) / s_b**2 + (s_a / s_b**2) ** 2 * n * before.var(ddof=1)
    return float(d), float(np.sqrt(var))
