"""Scoring ARB results in the simulation study: the table of sweep metrics, and `evaluate`.

A per-method metric is defined once, in `METRICS`: a name and a function of the map before
shrinking, the maps after shrinking and the region of interest (ROI). `evaluate` computes every
entry for every shrinkage rule of `METHODS`; the CSV columns (`arb_jax.study.rows.COLUMNS`) and
the report (`arb_jax.study.report`) read the same table. A new metric is one new `Metric` here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.core import regularize, stats
from arb_jax.study import metrics, simulate

__all__ = ["IMAGE_METRICS", "METHODS", "METRICS", "Metric", "evaluate"]

METHODS = ("p", "lfdr", "pi0", "z")
"""Shrinkage rules scored in every row (docs/method.md §4): p-, LFDR-, π₀- and z-thresholding."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """One per-method sweep metric; the CSV has a column ``{name}_{method}`` per rule.

    Attributes
    ----------
    name : str
        Column stem (``perc_after`` → ``perc_after_p``, ``perc_after_lfdr``, ...).
    fn : callable
        ``fn(before, after, roi_weights, patch) -> array``: ``before`` (h, w) the map before
        shrinking, ``after`` (..., h, w) shrunk maps, ``roi_weights`` (h, w) the ROI fraction of
        each patch, ``patch`` the patch side in pixels; returns shape (...).
    doc : str
        What the column holds, with its unit.
    """

    name: str
    fn: Callable[[jax.Array, jax.Array, jax.Array, int], jax.Array]
    doc: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "perc_after",
            lambda before, after, w, patch: metrics.mean_percentile_in_roi(before, after, w, patch)[1],
            "mean percentile in the ROI after shrinking (%)",
        ),
        Metric(
            "nonzero_after",
            lambda before, after, w, patch: metrics.nonzero_percent_in_roi(after, w),
            "non-zero share of the ROI after shrinking (%)",
        ),
        Metric(
            "sens",
            lambda before, after, w, patch: metrics.sensitivity(before, after, w),
            "sensitivity, docs/method.md §5 (share of the ROI's attention removed)",
        ),
        Metric(
            "spec",
            lambda before, after, w, patch: metrics.specificity(before, after, w),
            "specificity, docs/method.md §5 (share of the attention outside the ROI kept)",
        ),
    )
}
"""Per-method metrics, in CSV column order."""

IMAGE_METRICS = {
    "mean_z_roi": "mean z-score in the ROI (the mean-z filter's statistic)",
    "perc_before": "mean percentile in the ROI before shrinking (%)",
    "nonzero_before": "non-zero share of the ROI before shrinking (%)",
    "srmsd_roi": "sRMSD of the ROI's p-values from uniform (pixel-weighted)",
}
"""Metrics of the image (one column each, the same for every rule)."""


@functools.partial(jax.jit, static_argnames=("patch", "roi_pixels"))
def _evaluate(attn, z, p, lfdr, map_z, map_pi0, weights, alphas, betas, z_th, *, patch, roi_pixels):
    n, t = attn.shape[0], alphas.shape[0]

    def tile(a):
        return jnp.broadcast_to(a[:, None], (n, t) + a.shape[1:])

    map_p = regularize.p_threshold(
        tile(attn), tile(z), tile(p), jnp.broadcast_to(alphas, (n, t)), z_th, map_ndim=2
    )
    map_l = regularize.lfdr_threshold(
        tile(attn), tile(z), tile(lfdr), jnp.broadcast_to(betas, (n, t)), z_th, map_ndim=2
    )
    after = jnp.concatenate([map_p, map_l, map_pi0[:, None], map_z[:, None]], axis=1)

    def one(before, stack, w, z1, p1):
        perc_b, _ = metrics.mean_percentile_in_roi(before, stack, w, patch)
        counts = jnp.round(w * patch * patch).astype(jnp.int32).reshape(-1)
        roi_p = jnp.repeat(p1.reshape(-1), counts, total_repeat_length=roi_pixels)
        out = {
            "mean_z_roi": simulate.mean_z_in_roi(z1, w),
            "perc_before": perc_b,
            "nonzero_before": metrics.nonzero_percent_in_roi(before, w),
            "srmsd_roi": stats.srmsd(roi_p),
        }
        out.update({name: m.fn(before, stack, w, patch) for name, m in METRICS.items()})
        return out

    return jax.vmap(one)(attn, after, weights, z, p)


def evaluate(
    attn: Any,
    z: Any,
    p: Any,
    lfdr: Any,
    map_z: Any,
    map_pi0: Any,
    roi_weights: Any,
    thresholds: Sequence[tuple[float, float]],
    *,
    patch: int,
    roi_pixels: int,
    z_th: float = 0.0,
) -> dict[str, np.ndarray]:
    """Simulation-study metrics of a batch of ARB results, at several threshold pairs.

    The p- and LFDR-maps are rebuilt from the same ``attn``, ``z``, ``p``, ``lfdr`` for every
    ``(alpha, beta)`` (no new forward pass); the z- and π₀-maps do not depend on them.

    Parameters
    ----------
    attn, z, p, lfdr, map_z, map_pi0 : array_like, shape (N, h, w)
        From `arb_jax.core.pipeline.regularize_attention` (``.attn``, ``.z``, ``.p``,
        ``.lfdr``, ``.maps["z"]``, ``.maps["pi0"]``).
    roi_weights : array_like, shape (N, h, w)
        ROI fraction of each patch (`arb_jax.study.simulate.roi_patch_weights`).
    thresholds : sequence of (float, float)
        T pairs ``(alpha, beta)``.
    patch : int
        Patch side p in pixels.
    roi_pixels : int
        Pixels in the ROI (``size**2``).
    z_th : float, default 0.0
        The z-threshold every rule starts from (the pipeline's ``z_th``).

    Returns
    -------
    dict of str to numpy.ndarray
        The `IMAGE_METRICS` (N,); and per method m in `METHODS` and metric in `METRICS`:
        ``{name}_{m}`` (N, T) (for "pi0" and "z" the T columns are equal).
    """
    if not thresholds:
        raise ValueError("thresholds is empty")
    alphas = jnp.asarray([a for a, _ in thresholds], jnp.float32)
    betas = jnp.asarray([b for _, b in thresholds], jnp.float32)
    out = jax.device_get(
        _evaluate(
            jnp.asarray(attn),
            jnp.asarray(z),
            jnp.asarray(p),
            jnp.asarray(lfdr),
            jnp.asarray(map_z),
            jnp.asarray(map_pi0),
            jnp.asarray(roi_weights, jnp.float32),
            alphas,
            betas,
            jnp.float32(z_th),
            patch=int(patch),
            roi_pixels=int(roi_pixels),
        )
    )
    t = len(thresholds)
    res = {k: np.asarray(out[k]) for k in IMAGE_METRICS}
    cols = {
        "p": slice(0, t),
        "lfdr": slice(t, 2 * t),
        "pi0": slice(2 * t, 2 * t + 1),
        "z": slice(2 * t + 1, 2 * t + 2),
    }
    for m, sl in cols.items():
        for name in METRICS:
            v = np.asarray(out[name])[:, sl]
            res[f"{name}_{m}"] = np.broadcast_to(v, (v.shape[0], t))
    return res
