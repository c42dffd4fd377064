"""Statistics and shrunk maps of one image, from its observed and its null attention maps.

z-scores, empirical p-values, π₀ and the local FDR (docs/method.md §3), then every shrunk map
(§4), on the (h, w) patch grid with each patch standing for its p² pixels (§1). The runner
(`arb_jax.core.engine`) vmaps `image_statistics` over the images of a batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arb_jax.checks import as_int
from arb_jax.core import regularize, stats
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
    shape = attn.shape
    z, z_null, mu0, sigma0 = stats.zstat(attn.reshape(-1), attn_null.reshape(attn_null.shape[0], -1))
    zn = z_null.reshape(-1)
    p = stats.empirical_pvalues(z, zn, method=opts.pvalue)

    def storey_pi0(p):  # pi0est is already min(·, 1); its smoother can dip below 0
        return jnp.maximum(stats.pi0est(p, method=opts.pi0_method).pi0, 0)

    pi0 = storey_pi0(p)
    if opts.lfdr_pi0 == "shared":
        lfdr_pi0 = pi0
    elif opts.lfdr_pi0 == "estimate":
        p_attnreg = p if opts.pvalue == "attnreg" else stats.empirical_pvalues(z, zn, method="attnreg")
        lfdr_pi0 = storey_pi0(p_attnreg)
    else:
        lfdr_pi0 = jnp.asarray(values["lfdr_pi0"], jnp.float32)
    lfdr = stats.local_fdr(
        z, pi0=lfdr_pi0, null=opts.lfdr_null, z_null=zn if opts.lfdr_null == "empirical" else None
    )
    maps = regularize.shrink_all(
        attn.reshape(-1),
        z,
        p,
        lfdr,
        pi0,
        alpha=values["alpha"],
        beta=values["beta"],
        z_th=values["z_th"],
        repeat=patch * patch,
    )
    return {
        "z": z.reshape(shape),
        "p": p.reshape(shape),
        "lfdr": lfdr.reshape(shape),
        "z_null": z_null.reshape(attn_null.shape),
        "pi0": pi0,
        "lfdr_pi0": lfdr_pi0,
        "mu0": mu0,
        "sigma0": sigma0,
        "maps": {k: v.reshape(shape) for k, v in maps.items()},
    }


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
