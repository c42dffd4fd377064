"""Shrinkage of attention maps by their bootstrap statistics (docs/method.md §4, eqs. 6–7).

Every rule starts from z-thresholding, A_z = A · 1[z ≥ z_th] (z_th = 0 by default):

- ``z_threshold``:    A_z
- ``p_threshold``:    A_p = A_z · 1[p ≤ α]           (eq. 6; reference default α = 0.3)
- ``lfdr_threshold``: A_l = A_z · 1[lfdr ≤ β]        (eq. 7; reference default β = 0.3)
- ``pi0_threshold``:  A_π = A_z · 1[p ≤ t], t = numpy ``percentile(p, 100·(1 − π₀))`` (linear)
- ``bh_threshold``:   A_z · 1[Benjamini–Hochberg rejects at FDR level q]  (beyond the paper)
- ``soft_shrink``:    A · (1 − lfdr), posterior weighting                  (beyond the paper)

The statistics z, p, lfdr, π₀ come from ``arb_jax.stats``; here they are only consumed.

Maps and batches. All arrays of one call share one shape. By default the whole array is one map
(any shape: a flat (n,) vector of patches or an (h, w) grid). With ``map_ndim=k`` the last k axes
form a map and the leading axes are a batch of maps; every per-map statistic (the π₀ threshold,
a ``Percentile`` threshold, BH) is then computed for each map separately, and π₀ and numeric
thresholds may be scalars or have the batch shape.

Thresholds α, β and z_th are numbers or ``Percentile(q)``: the q-th percentile (0–100, numpy's
linear interpolation) of that statistic over the map, or over the ROI pixels when a boolean
``roi`` mask is given (e.g. the paper's Fig. 2: α = the 10th percentile of p in the ROI).

Pixels. With ``repeat=r`` every map entry stands for r equal pixels (r = p² for a ViT patch grid
nearest-upsampled to the image): percentiles are then those of the upsampled map, as the reference
code computes them on pixels (numpy's linear percentile of repeated values differs from the
percentile of the distinct values: the virtual index is q·(n·r − 1), not q·(n − 1)). Means,
ECDFs and the z/p/lfdr masks are unchanged by repetition, so only percentiles need it.

Percentiles (``map_percentile``, also for the π₀ threshold) follow numpy's "linear" method
including its interpolation formula, which is exact between tied values (bootstrap p-values are
heavily tied, and a threshold one ulp below a tie would drop the whole tie group). The virtual
index is float32 here (float64 in numpy) and snapped to an integer within 8 ulps; a mask can
then differ from numpy's only when (n − 1)·q/100 is within ~1e-6 relative of an integer without
being one (numpy then drops the tie group at the next order statistic, we keep it).

BH uses ``arb_jax.stats.bh_reject``. All functions validate their inputs in Python (clear
``ValueError``/``TypeError``), then run one compiled ``jnp`` function; they also work under the
caller's jit/vmap (``Percentile`` is a pytree whose q may be traced) and keep the dtype of
``attn``. Masked-out entries are set to exactly 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.checks import as_int
from arb_jax.core import stats

__all__ = [
    "Percentile",
    "bh_threshold",
    "kth_smallest",
    "kth_smallest_select",
    "lfdr_threshold",
    "map_percentile",
    "p_threshold",
    "pi0_threshold",
    "shrink_all",
    "soft_shrink",
    "z_threshold",
]


@dataclasses.dataclass(frozen=True)
class Percentile:
    """A threshold given as the q-th percentile (0 <= q <= 100) of its statistic over the map.

    ``alpha=Percentile(10)`` keeps the 10% smallest p-values of each map (or of its ROI, when a
    ``roi`` mask is given). Percentiles use numpy's default (linear) interpolation.
    ``decimals=k`` rounds the percentile to k decimals before it is used, as the reference code's
    ``round(np.percentile(p, q), 2)`` (half to even, as numpy's ``round``).
    """

    q: Any
    decimals: int | None = None

    def __post_init__(self):
        d = self.decimals
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 12):
            raise TypeError(f"Percentile decimals must be None or an int in [0, 12], got {d!r}")
        q = self.q
        if isinstance(q, jax.core.Tracer):
            return  # traced under jit: checked where it is used, if concrete
        if isinstance(q, bool) or not isinstance(q, int | float | np.ndarray | np.generic | jax.Array):
            raise TypeError(f"Percentile q must be a number in [0, 100], got {q!r}")
        qa = np.asarray(q)
        if qa.dtype.kind not in "iuf":
            raise TypeError(f"Percentile q must be a number in [0, 100], got {q!r}")
        if not bool(((qa >= 0) & (qa <= 100)).all()):
            raise ValueError(f"Percentile q must lie in [0, 100], got {q!r}")


def _percentile_unflatten(decimals: int | None, children: Any) -> Percentile:
    obj = object.__new__(Percentile)  # leaves may be tracers or placeholders: no validation
    object.__setattr__(obj, "q", children[0])
    object.__setattr__(obj, "decimals", decimals)
    return obj


jax.tree_util.register_pytree_node(Percentile, lambda t: ((t.q,), t.decimals), _percentile_unflatten)

Threshold = float | jax.Array | Percentile


# ----------------------------------------------------------------------------- validation


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_array(x: Any, name: str) -> jax.Array:
    if isinstance(x, str | bytes) or x is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from err
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real-valued array, got dtype {x.dtype}")
    return x


def _check_map_ndim(map_ndim: Any, ndim: int) -> int:
    if ndim < 1:
        raise ValueError("attn must have at least one axis (a map), got a scalar")
    if map_ndim is None:
        return ndim
    if isinstance(map_ndim, bool):
        raise TypeError("map_ndim must be an int or None, got bool")
    try:
        map_ndim = operator.index(map_ndim)
    except TypeError:
        raise TypeError(f"map_ndim must be an int or None, got {type(map_ndim).__name__}") from None
    if not 1 <= map_ndim <= ndim:
        raise ValueError(f"map_ndim must lie in [1, {ndim}] for rank-{ndim} arrays, got {map_ndim}")
    return map_ndim


def _prepare(
    attn: Any, arrays: dict[str, Any], map_ndim: Any, roi: Any = None
) -> tuple[jax.Array, dict[str, jax.Array], int, jax.Array | None]:
    """Validate attn and the statistics (same shape), map_ndim and an optional boolean ROI."""
    attn = _as_array(attn, "attn")
    if not jnp.issubdtype(attn.dtype, jnp.floating):
        raise TypeError(f"attn must be a float array, got dtype {attn.dtype}")
    map_ndim = _check_map_ndim(map_ndim, attn.ndim)
    if math.prod(attn.shape[attn.ndim - map_ndim :]) == 0:
        raise ValueError(f"maps must not be empty, got attn of shape {attn.shape}")
    out = {}
    for name, x in arrays.items():
        x = _as_array(x, name)
        if x.shape != attn.shape:
            raise ValueError(f"{name} has shape {x.shape} but attn has shape {attn.shape}")
        out[name] = x
    if roi is not None:
        roi = _as_array(roi, "roi") if not hasattr(roi, "dtype") else jnp.asarray(roi)
        if roi.dtype != jnp.bool_:
            raise TypeError(f"roi must be a boolean mask, got dtype {roi.dtype}")
        try:
            shape = jnp.broadcast_shapes(roi.shape, attn.shape)
        except ValueError:
            shape = None
        if shape != attn.shape:
            raise ValueError(f"roi of shape {roi.shape} does not broadcast to the maps' shape {attn.shape}")
        roi = jnp.broadcast_to(roi, attn.shape)
        if _is_concrete(roi):
            counts = roi.reshape(attn.shape[: attn.ndim - map_ndim] + (-1,)).sum(-1)
            if bool((counts == 0).any()):
                raise ValueError("roi selects no entry of some map: its percentiles are undefined")
    return attn, out, map_ndim, roi


def _check_per_map(
    value: Any, name: str, batch: tuple[int, ...], bounds: tuple[float, float] | None = None
) -> jax.Array:
    """A number or an array of one value per map (broadcastable to ``batch``), within bounds."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or an array, got bool")
    value = _as_array(value, name)
    try:
        ok = jnp.broadcast_shapes(value.shape, batch) == batch
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} must be a scalar or have the batch shape {batch} "
            f"(one value per map), got shape {value.shape}"
        )
    if bounds is not None and _is_concrete(value):
        lo, hi = bounds
        if not bool(((value >= lo) & (value <= hi)).all()):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")
    return value


def _check_threshold(th: Any, name: str, batch: tuple[int, ...]) -> Threshold:
    """A threshold: a number, one value per map, or a ``Percentile`` (q in [0, 100])."""
    if isinstance(th, Percentile):
        return Percentile(_check_per_map(th.q, f"{name} Percentile q", batch, (0.0, 100.0)), th.decimals)
    try:
        return _check_per_map(th, name, batch)
    except TypeError:
        raise TypeError(
            f"{name} must be a number, an array or a Percentile, got {type(th).__name__}"
        ) from None


def _per_map(value: jax.Array, batch: tuple[int, ...], map_ndim: int) -> jax.Array:
    """A (validated) scalar or batch-shaped value, reshaped to batch + (1,) * map_ndim."""
    return jnp.broadcast_to(value, batch).reshape(batch + (1,) * map_ndim)


# ----------------------------------------------------------------------------- percentiles


def _order_key(x: jax.Array) -> jax.Array:
    """Unsigned ints with the order of the floats x (−0.0 just below +0.0; NaN above +inf)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    sign = bits >> (8 * x.dtype.itemsize - 1)
    return jnp.where(sign == 1, ~bits, bits | (jnp.ones((), bits.dtype) << (8 * x.dtype.itemsize - 1)))


def kth_smallest_select(x: jax.Array, ks: jax.Array) -> jax.Array:
    """x's ks-th smallest entries (0-based, (K,) ints in [0, n)) by bisection on the bit pattern.

    One compare-and-count pass over x per bit (32 for float32): O(bits · n) and no sort, which
    XLA's CPU backend runs an order of magnitude slower than numpy (0.4 ms for 3721 floats).
    """
    key = _order_key(x)
    nbits = 8 * x.dtype.itemsize
    one = jnp.ones((), key.dtype)

    def step(i, prefix):  # decide bit (nbits − 1 − i) of each answer's key
        bit = one << (nbits - 1 - i).astype(key.dtype)
        trial = prefix | (bit - one)  # largest key with this prefix, bit 0
        n_le = jnp.sum(key[None, :] <= trial[:, None], axis=1)
        return jnp.where(n_le > ks, prefix, prefix | bit)  # enough entries below: the bit is 0

    answer = jax.lax.fori_loop(0, nbits, step, jnp.zeros_like(ks, key.dtype))
    return x[jnp.argmax(key[None, :] == answer[:, None], axis=1)]  # a gather: exact for subnormals


def kth_smallest(x: jax.Array, ks: jax.Array) -> jax.Array:
    """x's ks-th smallest entries (1-D x, (K,) 0-based ks): selection on a CPU, a sort elsewhere."""
    return jax.lax.platform_dependent(x, ks, cpu=kth_smallest_select, default=lambda x, ks: jnp.sort(x)[ks])


def _percentile_1d(x: jax.Array, num: jax.Array, den: float, valid: jax.Array, repeat: int = 1) -> jax.Array:
    """numpy ``percentile(repeat(x[valid], repeat), 100·num/den)`` (method "linear"), one flat map.

    NaN if no entry is valid or a valid entry is NaN. The virtual index (n·repeat − 1)·num/den
    is computed in float32 (numpy: float64) and snapped to the nearest integer when within 8 ulps
    of it, so that integer indices (which select one order statistic exactly) stay integers.
    Order statistic j of the repeated values is entry j // repeat of the sorted map.
    """
    dt = jnp.promote_types(x.dtype, jnp.float32)
    x = x.astype(dt)
    k = valid.sum()
    vi = num.astype(dt) * (k * repeat - 1).astype(dt) / den
    r = jnp.round(vi)
    vi = jnp.where(jnp.abs(vi - r) <= 8 * jnp.finfo(dt).eps * jnp.maximum(r, 1), r, vi)
    lo = jnp.floor(vi)
    t = vi - lo
    lo_j = jnp.clip(lo.astype(jnp.int32), 0, k * repeat - 1)  # index among repeated values
    lo_i = jnp.clip(lo_j // repeat, 0, k - 1)
    hi_i = jnp.clip((lo_j + 1) // repeat, 0, k - 1)
    a, b = kth_smallest(jnp.where(valid, x, jnp.inf), jnp.stack([lo_i, hi_i]))
    d = b - a  # numpy's _lerp: exact when a == b
    out = jnp.where(t >= 0.5, b - d * (1 - t), a + d * t)
    bad = (k == 0) | jnp.isnan(jnp.where(valid, x, 0)).any()
    return jnp.where(bad, jnp.nan, out)


def map_percentile(
    x: Any, q: Any, *, map_ndim: int | None = None, roi: Any = None, repeat: int = 1
) -> jax.Array:
    """q-th percentile of each map of ``x``, as numpy ``percentile(..., method="linear")``.

    Parameters
    ----------
    x : Any
        (*batch, *map) real array; the last ``map_ndim`` axes form a map (None: all axes).
    q : Any
        percent in [0, 100]; a scalar or one per map (batch shape); may be traced.
    roi : Any, default None
        optional boolean mask broadcastable to x.shape: only its entries of each map count.
    repeat : int, default 1
        each entry counts as this many equal values (pixels per patch), see module notes.
    Returns
    -------
    jax.Array
        (*batch) float array: the percentile of each map (NaN where a map contains NaN).

    Interpolates as numpy's ``_lerp`` (a + (b − a)·t, or b − (b − a)·(1 − t) for t ≥ 0.5), so a
    percentile that falls between equal values is exactly that value, as in numpy;
    ``jnp.percentile`` does not guarantee this, and ties are the rule for bootstrap p-values.
    """
    x = _as_array(x, "x")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    x, _, map_ndim, roi = _prepare(x, {}, map_ndim, roi)
    q = _check_per_map(q, "percentile q", x.shape[: x.ndim - map_ndim], (0.0, 100.0))
    return _map_percentile_jit(
        x, q, roi, map_ndim=map_ndim, repeat=as_int(repeat, "repeat (pixels per map entry)")
    )


def _map_percentile(
    x: jax.Array, q: jax.Array, map_ndim: int, roi: jax.Array | None, den: float = 100.0, repeat: int = 1
) -> jax.Array:
    """(*batch) percentiles 100·q/den of each map; q (validated) scalar or batch-shaped."""
    batch = x.shape[: x.ndim - map_ndim]
    q = jnp.broadcast_to(jnp.asarray(q, jnp.promote_types(x.dtype, jnp.float32)), batch)
    flat = x.reshape((-1, math.prod(x.shape[x.ndim - map_ndim :])))
    valid = jnp.ones(flat.shape, bool) if roi is None else roi.reshape(flat.shape)
    pct = jax.vmap(_percentile_1d, in_axes=(0, 0, None, 0, None))(flat, q.reshape(-1), den, valid, repeat)
    return pct.reshape(batch)


@functools.partial(jax.jit, static_argnames=("map_ndim", "repeat"))
def _map_percentile_jit(
    x: jax.Array, q: jax.Array, roi: jax.Array | None, *, map_ndim: int, repeat: int = 1
) -> jax.Array:
    return _map_percentile(x, q, map_ndim, roi, repeat=repeat)


def _threshold(
    th: Threshold, stat: jax.Array, map_ndim: int, roi: jax.Array | None, repeat: int = 1
) -> jax.Array:
    """A (validated) threshold, broadcastable against the maps: per-map percentile or value(s)."""
    batch = stat.shape[: stat.ndim - map_ndim]
    if isinstance(th, Percentile):
        pct = _map_percentile(stat, th.q, map_ndim, roi, repeat=repeat)
        if th.decimals is not None:
            pct = jnp.round(pct, th.decimals)
        return pct.reshape(batch + (1,) * map_ndim)
    return _per_map(jnp.asarray(th), batch, map_ndim)


def _pi0_cut(p: jax.Array, pi0: jax.Array, map_ndim: int, repeat: int = 1) -> jax.Array:
    """Per-map π₀ threshold t = percentile(p, 100·(1 − π₀)), shaped batch + (1,) * map_ndim."""
    batch = p.shape[: p.ndim - map_ndim]
    frac = 1 - jnp.asarray(pi0, jnp.promote_types(p.dtype, jnp.float32))  # q / 100, unrounded
    pct = _map_percentile(p, frac, map_ndim, None, den=1.0, repeat=repeat)
    return pct.reshape(batch + (1,) * map_ndim)


def _bh_reject(p: jax.Array, q: jax.Array, map_ndim: int) -> jax.Array:
    """Benjamini–Hochberg rejections of each map's p-values (``arb_jax.stats.bh_reject``)."""
    batch = p.shape[: p.ndim - map_ndim]
    flat = p.reshape(batch + (math.prod(p.shape[p.ndim - map_ndim :]),))
    q = jnp.broadcast_to(jnp.asarray(q, p.dtype), batch)
    return stats.bh_reject(flat, q).reshape(p.shape)


def _keep(attn: jax.Array, mask: Any) -> jax.Array:
    return jnp.where(mask, attn, jnp.zeros((), attn.dtype))


@functools.partial(jax.jit, static_argnames=("rules", "map_ndim", "repeat"))
def _shrink(
    attn: jax.Array,
    z: Any,
    p: Any,
    lfdr: Any,
    pi0: Any,
    alpha: Any,
    beta: Any,
    z_th: Any,
    q: Any,
    roi: Any,
    *,
    rules: tuple[str, ...],
    map_ndim: int,
    repeat: int = 1,
) -> dict[str, jax.Array]:
    """The requested rules on validated arrays (unused statistics are None)."""
    out = {}
    zmask: Any = None if z is None else z >= _threshold(z_th, z, map_ndim, roi, repeat)
    if "z" in rules:
        out["z"] = _keep(attn, zmask)
    if "p" in rules:
        out["p"] = _keep(attn, zmask & (p <= _threshold(alpha, p, map_ndim, roi, repeat)))
    if "lfdr" in rules:
        out["lfdr"] = _keep(attn, zmask & (lfdr <= _threshold(beta, lfdr, map_ndim, roi, repeat)))
    if "pi0" in rules:
        out["pi0"] = _keep(attn, zmask & (p <= _pi0_cut(p, pi0, map_ndim, repeat)))
    if "soft" in rules:
        out["soft"] = attn * (1 - lfdr).astype(attn.dtype)
    if "bh" in rules:
        out["bh"] = _keep(attn, zmask & _bh_reject(p, q, map_ndim))
    return out


def _run(
    rules: tuple[str, ...],
    attn: Any,
    arrays: dict[str, Any],
    map_ndim: Any,
    roi: Any,
    *,
    pi0: Any = None,
    alpha: Any = None,
    beta: Any = None,
    z_th: Any = None,
    q: Any = None,
    repeat: int = 1,
) -> dict[str, jax.Array]:
    """Validate everything in Python (clear errors, before jit), then run the compiled rules."""
    attn, s, map_ndim, roi = _prepare(attn, arrays, map_ndim, roi)
    batch = attn.shape[: attn.ndim - map_ndim]
    if z_th is not None:
        z_th = _check_threshold(z_th, "z_th", batch)
    if alpha is not None:
        alpha = _check_threshold(alpha, "alpha", batch)
    if beta is not None:
        beta = _check_threshold(beta, "beta", batch)
    if pi0 is not None:
        pi0 = _check_per_map(pi0, "pi0", batch, (0.0, 1.0))
    if q is not None:
        q = _check_per_map(q, "q", batch, (0.0, 1.0))
        if _is_concrete(s["p"]) and not bool(((s["p"] >= 0) & (s["p"] <= 1)).all()):
            raise ValueError("p-values must lie in [0, 1] for Benjamini–Hochberg")
    return _shrink(
        attn,
        s.get("z"),
        s.get("p"),
        s.get("lfdr"),
        pi0,
        alpha,
        beta,
        z_th,
        q,
        roi,
        rules=rules,
        map_ndim=map_ndim,
        repeat=as_int(repeat, "repeat (pixels per map entry)"),
    )


# ----------------------------------------------------------------------------- rules


def z_threshold(
    attn: Any, z: Any, z_th: Threshold = 0.0, *, map_ndim: int | None = None, roi: Any = None, repeat: int = 1
) -> jax.Array:
    """z-thresholding A_z = A · 1[z ≥ z_th] (the start of every ARB rule, docs/method.md §4).

    attn: attention map(s), float, any shape; z: bootstrap z-scores, same shape. z_th: a number,
    one per map, or a ``Percentile`` of z. repeat: pixels per map entry, for ``Percentile``
    thresholds (module notes). Returns attn's shape and dtype.
    """
    return _run(("z",), attn, {"z": z}, map_ndim, roi, z_th=z_th, repeat=repeat)["z"]


def p_threshold(
    attn: Any,
    z: Any,
    p: Any,
    alpha: Threshold = 0.3,
    z_th: Threshold = 0.0,
    *,
    map_ndim: int | None = None,
    roi: Any = None,
    repeat: int = 1,
) -> jax.Array:
    """p-thresholding (paper eq. 6): A_p = A_z · 1[p ≤ α].

    attn, z, p: same shape (p: empirical bootstrap p-values in [0, 1]). alpha: a number
    (reference code 0.3), one per map, or a ``Percentile`` of p (Fig. 2: ``Percentile(10)`` with
    the ROI as ``roi``). repeat: pixels per map entry, for ``Percentile`` thresholds (module
    notes). Returns attn's shape and dtype.
    """
    return _run(("p",), attn, {"z": z, "p": p}, map_ndim, roi, alpha=alpha, z_th=z_th, repeat=repeat)["p"]


def lfdr_threshold(
    attn: Any,
    z: Any,
    lfdr: Any,
    beta: Threshold = 0.3,
    z_th: Threshold = 0.0,
    *,
    map_ndim: int | None = None,
    roi: Any = None,
    repeat: int = 1,
) -> jax.Array:
    """LFDR-thresholding (paper eq. 7): A_l = A_z · 1[lfdr ≤ β].

    attn, z, lfdr: same shape (lfdr: local false discovery rates in [0, 1]). beta: a number
    (reference code 0.3), one per map, or a ``Percentile`` of lfdr. repeat: pixels per map
    entry, for ``Percentile`` thresholds (module notes). Returns attn's shape and dtype.
    """
    return _run(("lfdr",), attn, {"z": z, "lfdr": lfdr}, map_ndim, roi, beta=beta, z_th=z_th, repeat=repeat)[
        "lfdr"
    ]


def pi0_threshold(
    attn: Any,
    z: Any,
    p: Any,
    pi0: Any,
    z_th: Threshold = 0.0,
    *,
    map_ndim: int | None = None,
    roi: Any = None,
    repeat: int = 1,
) -> jax.Array:
    """π₀-thresholding (docs/method.md §4): A_π = A_z · 1[p ≤ t], t = percentile(p, 100·(1 − π₀)).

    t is numpy's linear-interpolation percentile of all p-values of the map (the fraction 1 − π₀
    of smallest p-values is kept; no hand-set threshold). attn, z, p: same shape. pi0: Storey's
    π₀ in [0, 1], a scalar or one per map. ``roi`` only matters for a ``Percentile`` z_th.
    repeat: pixels per map entry (p² for a patch grid): t is then the percentile of the
    upsampled map, as on pixels (module notes). Returns attn's shape and dtype.
    """
    return _run(("pi0",), attn, {"z": z, "p": p}, map_ndim, roi, pi0=pi0, z_th=z_th, repeat=repeat)["pi0"]


def soft_shrink(attn: Any, lfdr: Any) -> jax.Array:
    """Soft shrinkage A · (1 − lfdr): each score weighted by its posterior probability of signal.

    attn, lfdr: same shape (lfdr in [0, 1], as ``arb_jax.stats`` clips it). No z-threshold.
    Returns attn's shape and dtype.
    """
    return _run(("soft",), attn, {"lfdr": lfdr}, None, None)["soft"]


def bh_threshold(
    attn: Any,
    z: Any,
    p: Any,
    q: Any = 0.1,
    z_th: Threshold = 0.0,
    *,
    map_ndim: int | None = None,
    roi: Any = None,
) -> jax.Array:
    """A_z · 1[p rejected by Benjamini–Hochberg at FDR level q], per map.

    Benjamini & Hochberg (1995) step-up on all n p-values of a map: with p_(1) ≤ … ≤ p_(n) and
    k the largest i with p_(i) ≤ (i/n)·q, keep the entries with p ≤ p_(k) (none if no such i);
    the same rejections as ``statsmodels.stats.multitest.multipletests(method="fdr_bh")``.
    attn, z, p: same shape. q: FDR level in [0, 1], a scalar or one per map. ``roi`` only
    matters for a ``Percentile`` z_th. Returns attn's shape and dtype.
    """
    return _run(("bh",), attn, {"z": z, "p": p}, map_ndim, roi, q=q, z_th=z_th)["bh"]


def shrink_all(
    attn: Any,
    z: Any,
    p: Any,
    lfdr: Any,
    pi0: Any,
    *,
    alpha: Threshold = 0.3,
    beta: Threshold = 0.3,
    z_th: Threshold = 0.0,
    q: Any = None,
    map_ndim: int | None = None,
    roi: Any = None,
    repeat: int = 1,
) -> dict[str, jax.Array]:
    """Every shrinkage rule at once, as the pipeline uses them.

    attn, z, p, lfdr: same shape; pi0: scalar or one per map. Returns a dict of arrays of attn's
    shape: "z" (A_z), "p" (A_p at alpha), "lfdr" (A_l at beta), "pi0" (A_π), "soft"
    (A·(1 − lfdr)), and "bh" (BH at FDR level q) when q is given. repeat: pixels per map entry
    (p² for a patch grid): the π₀ threshold and ``Percentile`` thresholds are then percentiles
    of the upsampled map, as the reference code's pixel-level computation (module notes).
    """
    rules = ("z", "p", "lfdr", "pi0", "soft") + (() if q is None else ("bh",))
    return _run(
        rules,
        attn,
        {"z": z, "p": p, "lfdr": lfdr},
        map_ndim,
        roi,
        pi0=pi0,
        alpha=alpha,
        beta=beta,
        z_th=z_th,
        q=q,
        repeat=repeat,
    )
