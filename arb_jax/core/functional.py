"""ARB as pure functions of arrays, for any map: null maps → statistics → shrunk maps.

The three pieces compose the way optax's do, and each is usable alone inside a caller's own
``jit``, ``vmap``, ``shard_map`` or ``lax.scan``:

- `null_maps` (map_fn, params, images, keys) → the maps of bootstrap null images;
- `arb_stats` (map, null maps) → `ARBStats` (z, p, lfdr, π₀, μ₀, σ₀, …);
- `shrink` (map, stats) → every shrunk map.

A map function is ``map_fn(params, images (n, H, W, 3)) -> scores (n, h, w)``: attention (the
default scale, ``"log"``, needs scores > 0), or any signed map with ``scale="identity"``. The
named choices (samplers, p-value and π₀ methods, lfdr nulls, scales) are registries
(`arb_jax.registry`); a function is accepted wherever a name is. `regularize_attention`
(`arb_jax.core.pipeline`) runs these same functions, fused in one compiled program, over meshes,
chunks and padding. On a CPU it compiles with ``arb_jax.models.xla_options.compiler_options()``
(oneDNN's dots); a caller's own jit can use the same through ``xla_options.jit`` (not
``jax.jit(..., compiler_options=...)``: XLA:CPU 0.10.2 aborts when such an executable is freed
just after it ran, which ``xla_options.jit`` prevents).

Checks. Shapes, dtypes and names are checked when the functions are traced (one ValueError naming
the function and the shapes). Values can only be checked on concrete arrays: there, a negative
score under ``scale="log"`` or a non-finite score raises; under a caller's jit they give NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.checks import as_int
from arb_jax.core import bootstrap, regularize, stats
from arb_jax.models.maps import check_map_output
from arb_jax.registry import Registry

__all__ = [
    "SCALES",
    "ARBStats",
    "arb_stats",
    "bootstrap_chunk",
    "chunked_null_maps",
    "null_maps",
    "shrink",
]

SCALES: Registry = Registry("scale", "(scores) -> transformed scores, elementwise")


@SCALES.register("log", "log of the scores (> 0; zeros raised to float32's smallest normal), the paper's")
def _log_scale(x: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(x, jnp.finfo(x.dtype).tiny))


@SCALES.register("identity", "the scores as they are, for signed maps (e.g. gradients)")
def _identity_scale(x: jax.Array) -> jax.Array:
    return x


class ARBStats(NamedTuple):
    """The statistics of one map (docs/method.md §3); map-shaped fields have the map's shape.

    z, p, lfdr : the map's shape
        z-scores, p-values and local false discovery rates.
    z_null : (B, *map shape)
        The null maps' z.
    pi0 : ()
        π₀ of the p-values by the π₀ method, clamped to [0, 1] (the π₀ map's).
    lfdr_pi0 : ()
        The π₀ the lfdr used.
    mu0, sigma0 : ()
        Mean and standard deviation (ddof 0) of the scaled null scores.
    """

    z: jax.Array
    p: jax.Array
    lfdr: jax.Array
    z_null: jax.Array
    pi0: jax.Array
    lfdr_pi0: jax.Array
    mu0: jax.Array
    sigma0: jax.Array


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


# --------------------------------------------------------------------------------------------
# Null maps
# --------------------------------------------------------------------------------------------


def check_map_shape(map_fn: Callable, scores: Any, images: Any, patch: int) -> None:
    """One ValueError naming ``map_fn`` when its scores are not (n, H/patch, W/patch) float32
    (`arb_jax.models.check_map_output`, at trace time)."""
    check_map_output(_fn_name(map_fn), scores, images, patch)


def bootstrap_chunk(
    sampler: Any,
    images: jax.Array,
    keys: jax.Array,
    start: Any,
    chunk: int,
    *,
    width: Any,
    patch: int,
    observed: bool = False,
) -> jax.Array:
    """The images of slots ``start … start + chunk − 1`` of each of G images: (G, chunk, H, W, C).

    Slot j is null image j, drawn from ``fold_in(keys[g], j)`` alone (`bootstrap.sample_range`);
    with ``observed``, slot 0 is the image itself and slot j ≥ 1 its null image j − 1, so one
    forward can take an image together with its first null images. ``start`` may be traced.
    """

    def draw(image, key):
        if not observed:
            return bootstrap.sample_range(sampler, key, image, start, chunk, width=width, patch=patch)
        # null images max(start − 1, 0) …; in the first chunk (start = 0, possibly a concrete 0,
        # so never a draw at index −1) shifted one slot up, slot 0 replaced by the image
        nulls = bootstrap.sample_range(
            sampler, key, image, jnp.maximum(start - 1, 0), chunk, width=width, patch=patch
        )
        first = start == 0
        nulls = jnp.where(first, jnp.roll(nulls, 1, axis=0), nulls)
        return nulls.at[0].set(jnp.where(first, image.astype(nulls.dtype), nulls[0]))

    return jax.vmap(draw)(images, keys)


def chunked_null_maps(
    map_fn: Callable,
    params: Any,
    images: jax.Array,
    keys: jax.Array,
    *,
    sampler: Any,
    width: Any,
    patch: int,
    chunk: int,
    n_chunks: int,
    first: Any = 0,
    loop: Callable | None = None,
) -> jax.Array:
    """Null maps of G images, ``chunk`` null images each per call of ``map_fn``.

    Null image b of image g is drawn from ``fold_in(keys[g], b)`` alone (`bootstrap_chunk`), for
    b in ``(first + i)·chunk … (first + i + 1)·chunk − 1``, i = 0 … n_chunks − 1. ``loop(fn, n)``
    runs ``fn`` over ``arange(n)`` and stacks (default ``jax.lax.map``). Returns
    (n_chunks, G, chunk, h, w).
    """
    G, H, W, C = images.shape

    def one_chunk(i):
        imgs = bootstrap_chunk(sampler, images, keys, (first + i) * chunk, chunk, width=width, patch=patch)
        a = map_fn(params, imgs.reshape(G * chunk, H, W, C))
        check_map_shape(map_fn, a, imgs.reshape(G * chunk, H, W, C), patch)
        return a.reshape((G, chunk) + a.shape[1:])

    if loop is None:
        return jax.lax.map(one_chunk, jnp.arange(n_chunks))
    return loop(one_chunk, n_chunks)


def null_maps(
    map_fn: Callable,
    params: Any,
    images: Any,
    keys: Any,
    *,
    n_boot: int,
    patch: int,
    sampler: Any = "normal",
    width: Any = 1.0,
    chunk: int | None = None,
) -> jax.Array:
    """The maps of ``n_boot`` bootstrap null images of each image.

    Parameters
    ----------
    map_fn : callable
        ``map_fn(params, images (n, H, W, 3)) -> scores (n, H/patch, W/patch)``.
    params : pytree
        Its parameters.
    images : array, shape (G, H, W, 3)
        The observed images (ImageNet-normalised for this project's ViTs).
    keys : array, shape (G,)
        One PRNG key per image; null image b of image g uses ``fold_in(keys[g], b)`` alone, so
        the result does not depend on ``chunk``.
    n_boot : int
        Null images per image (B), static.
    patch : int
        Pixels per map cell (the ViT's patch), static.
    sampler : str or callable, default "normal"
        A name of `arb_jax.core.bootstrap.SAMPLERS`, or ``(key, image) -> null image``.
    width : float, default 1.0
        The "normal" sampler's width (may be traced).
    chunk : int or None, default None
        Null images per image per ``map_fn`` call (None: all B at once); memory grows with it.

    Returns
    -------
    jax.Array, shape (G, B, h, w)
        Pure and jittable; vmaps over a leading axis of ``images`` and ``keys``.
    """
    bootstrap.SAMPLERS.check(sampler)
    n_boot = as_int(n_boot, "n_boot")
    patch = as_int(patch, "patch")
    chunk = min(as_int(chunk, "chunk"), n_boot) if chunk is not None else n_boot
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (G, H, W, 3), got shape {images.shape}")
    n_chunks = math.ceil(n_boot / chunk)
    out = chunked_null_maps(
        map_fn,
        params,
        images,
        keys,
        sampler=sampler,
        width=width,
        patch=patch,
        chunk=chunk,
        n_chunks=n_chunks,
    )
    G = images.shape[0]
    return jnp.moveaxis(out, 0, 1).reshape((G, n_chunks * chunk) + out.shape[3:])[:, :n_boot]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _check_values(maps: Any, null: Any, scale: Any) -> None:
    for x, name in ((maps, "maps"), (null, "null_maps")):
        if not _is_concrete(x):
            continue
        v = np.asarray(x)
        if not np.isfinite(v).all():
            raise ValueError(f"{name} has non-finite scores (NaN or inf)")
        if scale == "log" and v.min() < 0:
            raise ValueError(
                f"{name} has negative scores (min {v.min():.3g}) and scale='log' needs scores >= 0; "
                "use scale='identity' for a signed map"
            )


def arb_stats(
    maps: Any,
    null_maps: Any,
    *,
    pvalue: Any = "upper",
    pi0_method: Any = "smoother",
    lfdr_pi0: Any = 1.0,
    lfdr_null: Any = "theoretical",
    scale: Any = "log",
) -> ARBStats:
    """z, p, lfdr and π₀ of one map against its null maps (docs/method.md §3).

    Parameters
    ----------
    maps : array, shape (*map)
        The observed map, e.g. (h, w).
    null_maps : array, shape (B, *map)
        The maps of its B null images.
    pvalue : str or callable, default "upper"
        A name of `arb_jax.core.stats.PVALUE_METHODS` or ``(z (n,), z_null (m,)) -> p (n,)``.
    pi0_method : str or callable, default "smoother"
        A name of `arb_jax.core.stats.PI0_METHODS` or ``(p (n,)) -> π₀``; the estimate is
        clamped to [0, 1].
    lfdr_pi0 : float, "estimate" or "shared", default 1.0
        π₀ in the lfdr: a number in (0, 1] (may be traced), the π₀ method's estimate of the
        attnreg p-values ("estimate") or the π₀ of ``pvalue``'s p-values ("shared").
    lfdr_null : str or callable, default "theoretical"
        A name of `arb_jax.core.stats.LFDR_NULLS` or ``(z (n,), z_null (m,), π₀) -> lfdr (n,)``.
    scale : str or callable, default "log"
        `SCALES`: "log" (attention, the paper's), "identity" (signed maps), or a function.

    Returns
    -------
    ARBStats
        Fields of the map's shape, z_null (B, *map), scalars; the dtype of the maps (at least
        float32).
    """
    maps, null = jnp.asarray(maps), jnp.asarray(null_maps)
    if maps.ndim < 1 or null.shape[1:] != maps.shape or null.shape[0] < 1:
        raise ValueError(f"null_maps must be (B, *map) for a map of shape {maps.shape}, got {null.shape}")
    for reg, choice in (
        (stats.PVALUE_METHODS, pvalue),
        (stats.PI0_METHODS, pi0_method),
        (stats.LFDR_NULLS, lfdr_null),
        (SCALES, scale),
    ):
        reg.check(choice)
    if isinstance(lfdr_pi0, str) and lfdr_pi0 not in ("estimate", "shared"):
        raise ValueError(f"lfdr_pi0 must be a number in (0, 1], 'estimate' or 'shared', got {lfdr_pi0!r}")
    _check_values(maps, null, scale)
    dtype = jnp.promote_types(jnp.result_type(maps, null), jnp.float32)
    flat, flat0 = maps.reshape(-1).astype(dtype), null.reshape(null.shape[0], -1).astype(dtype)
    to_scale = SCALES.resolve(scale)
    z, zn, mu0, sigma0 = stats.standardise(to_scale(flat), to_scale(flat0))
    zn = zn.reshape(-1)
    p = stats.PVALUE_METHODS.resolve(pvalue)(z, zn)
    estimate = stats.PI0_METHODS.resolve(pi0_method)

    def pi0_of(p):  # an estimator's π₀ (R's smoother can dip below 0) clamped to [0, 1]
        return jnp.clip(estimate(p), 0, 1)

    pi0 = pi0_of(p)
    if isinstance(lfdr_pi0, str) and lfdr_pi0 == "shared":
        lpi0 = pi0
    elif isinstance(lfdr_pi0, str):
        lpi0 = pi0_of(p if pvalue == "attnreg" else stats.PVALUE_METHODS["attnreg"](z, zn))
    else:
        lpi0 = jnp.asarray(lfdr_pi0, dtype)
    lfdr = stats.LFDR_NULLS.resolve(lfdr_null)(z, zn, lpi0)
    shape = maps.shape
    z, p, lfdr = z.reshape(shape), p.reshape(shape), lfdr.reshape(shape)
    return ARBStats(z, p, lfdr, zn.reshape(null.shape), pi0, lpi0, mu0, sigma0)


def shrink(
    maps: Any,
    st: ARBStats,
    *,
    alpha: Any = 0.3,
    beta: Any = 0.3,
    z_th: Any = 0.0,
    patch: int = 1,
) -> dict[str, jax.Array]:
    """Every shrunk map of one map from its statistics (docs/method.md §4).

    Parameters
    ----------
    maps : array, shape (*map)
        The observed map.
    st : ARBStats
        Its statistics (`arb_stats`).
    alpha, beta, z_th : float or Percentile
        The p-, lfdr- and z-thresholds (may be traced).
    patch : int, default 1
        Pixels per map cell along a side: the π₀ threshold and ``Percentile`` thresholds are
        percentiles of the nearest-upsampled map (docs/method.md §1).

    Returns
    -------
    dict of str to jax.Array
        "z", "p", "lfdr", "pi0", "soft", each of the map's shape.
    """
    maps = jnp.asarray(maps)
    patch = as_int(patch, "patch")
    out = regularize.shrink_all(
        maps.reshape(-1),
        st.z.reshape(-1),
        st.p.reshape(-1),
        st.lfdr.reshape(-1),
        st.pi0,
        alpha=alpha,
        beta=beta,
        z_th=z_th,
        repeat=patch * patch,
    )
    return {k: v.reshape(maps.shape) for k, v in out.items()}
