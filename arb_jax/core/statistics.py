"""Statistics and shrunk maps of one image, from its observed and its null attention maps.

z-scores, empirical p-values, π₀ and the local FDR (docs/method.md §3), then every shrunk map
(§4), on the (h, w) patch grid with each patch standing for its p² pixels (§1): the functional
core's `arb_stats` and `shrink` (`arb_jax.core.functional`) with the options of an
`ARBOptions`. The runner (`arb_jax.core.engine`) vmaps `image_statistics` over the images.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arb_jax.checks import as_int
from arb_jax.core import functional
from arb_jax.core.options import ARBOptions, split_options

__all__ = ["arb_statistics", "image_statistics"]


def image_statistics(
    attn: jax.Array, attn_null: jax.Array, opts: ARBOptions, values: dict[str, Any], patch: int
) -> dict[str, Any]:
    """`arb_statistics` with the numeric options taken from ``values`` (they may be traced).

    Parameters
    ----------
    attn : jax.Array, shape (h, w)
        Observed head-mean map.
    attn_null : jax.Array, shape (B, h, w)
        Bootstrap maps.
    opts : ARBOptions
        Static options (`arb_jax.core.options.split_options`).
    values : dict
        The `arb_jax.core.options.DYNAMIC` values.
    patch : int
        Patch side in pixels.

    Returns
    -------
    dict
        As `arb_statistics`.
    """
    lfdr_pi0 = opts.lfdr_pi0 if isinstance(opts.lfdr_pi0, str) else values["lfdr_pi0"]
    st = functional.arb_stats(
        attn,
        attn_null,
        pvalue=opts.pvalue,
        pi0_method=opts.pi0_method,
        lfdr_pi0=lfdr_pi0,
        lfdr_null=opts.lfdr_null,
        scale=opts.scale,
    )
    maps = functional.shrink(
        attn, st, alpha=values["alpha"], beta=values["beta"], z_th=values["z_th"], patch=patch
    )
    return {**st._asdict(), "maps": maps}


def arb_statistics(
    attn: Any, attn_null: Any, opts: ARBOptions | None = None, patch: int = 1
) -> dict[str, Any]:
    """Statistics and shrunk maps of one image from its observed and null attention maps.

    The computation `arb_jax.core.pipeline.regularize_attention` runs for each image.

    Parameters
    ----------
    attn : array_like, shape (h, w)
        Observed head-mean map (scores >= 0).
    attn_null : array_like, shape (B, h, w)
        Bootstrap maps (scores >= 0).
    opts : ARBOptions or None, default None
        Only the statistics options are used (None: ``ARBOptions()``).
    patch : int, default 1
        Side of a patch in pixels: the maps stand for their nearest upsampling by ``patch``,
        whose percentiles (π₀ and ``Percentile`` thresholds) differ from the grid's
        (docs/method.md §1).

    Returns
    -------
    dict
        ``z``, ``p``, ``lfdr`` (h, w); ``z_null`` (B, h, w); ``pi0`` (the π₀ map's),
        ``lfdr_pi0`` (the lfdr's), ``mu0``, ``sigma0`` (scalars); ``maps`` (dict of (h, w) by
        method).
    """
    opts = ARBOptions() if opts is None else opts
    if not isinstance(opts, ARBOptions):
        raise TypeError(f"opts must be an ARBOptions, got {type(opts).__name__}")
    attn, attn_null = jnp.asarray(attn), jnp.asarray(attn_null)
    if attn.ndim != 2 or attn_null.ndim != 3 or attn_null.shape[1:] != attn.shape:
        raise ValueError(
            f"attn must be (h, w) and attn_null (B, h, w) of the same grid, got "
            f"{attn.shape} and {attn_null.shape}"
        )
    patch = as_int(patch, "patch")
    static, values = split_options(opts)
    return _statistics_jit(attn, attn_null, values, static, patch)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _statistics_jit(attn, attn_null, values, static, patch):
    return image_statistics(attn, attn_null, static, values, patch)
