"""ARB end to end: bootstrap null images → ViT attention → z, p, lfdr, π₀ → shrunk maps.

``regularize_attention`` runs one jit-compiled function per (model architecture, options): for
every image it draws ``n_boot`` null images (SPEC §2), runs the ViT on the observed image and on
the null images in chunks of ``boot_chunk`` (so memory stays bounded for large B: only the
(B, h, w) null maps are kept, which the exact p-values need anyway), and computes every
statistic on device (SPEC §3–4). Work is sharded over a ``Mesh`` of devices with an "images"
axis and optionally a "boot" axis that splits each image's bootstrap chunks (``image_mesh``).

Patch grid = pixels. The statistics are computed on the (h, w) patch grid and equal the
reference code's computation on the nearest-upsampled pixel maps (SPEC §1): means, stds, ECDFs
and histograms are unchanged by repeating each value p² times, but numpy's linear percentile is
not, so the π₀ threshold and ``Percentile`` thresholds are percentiles of the upsampled map
(``regularize`` with ``repeat=p²``).

Exactness. Bootstrap sample ``b`` of image ``i`` is drawn from ``fold_in(key_i, b)`` only, so
the null images do not depend on ``boot_chunk``, ``image_chunk``, the batch or the devices. The
loops over chunks and image groups get their trip counts as traced values, so XLA compiles their
bodies the same way for one step as for many. What can still differ is the ViT forward: XLA
chooses matmul kernels by shape, and on XLA:CPU small batches round differently from larger
ones (measured: the 17-token test model with up to 6 images, the 65-token one with 1 image — a
single CLS-query row). Hence:

- the same key, model, options and per-device forward shapes give a bit-identical result;
- ``boot_chunk`` does not change the result wherever the forward kernels do not depend on the
  batch (tested bit for bit: B = 6 in chunks of 1, 3, 6, two 64 x 64 images);
- with ``image_chunk`` the per-device shapes are fixed: the result does not depend on the number
  of images, the padding or the number of devices, also on a 2-D ("images", "boot") mesh given
  a ``boot_chunk`` (tested bit for bit on 4 CPU devices against one);
- otherwise a different number of images per device changes the maps by float32 rounding.
  Measured (5 images on 4 CPU devices vs 1, 32 x 32 test model): attention ≤ 1.8e-6 relative,
  z ≤ 2.6e-6, lfdr ≤ 4.2e-6, p and π₀ identical. A p-value (and with it π₀ and a mask) can move
  only where an observed and a null z lie within that distance; tested at this bound.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import numbers
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arb_jax.checks import as_int
from arb_jax.core import bootstrap, regularize, stats
from arb_jax.core.regularize import Percentile
from arb_jax.models.vit import check_images

__all__ = [
    "ARBOptions",
    "ARBResult",
    "LFDR_NULLS",
    "PI0_METHODS",
    "PVALUE_METHODS",
    "arb_statistics",
    "image_keys",
    "image_mesh",
    "null_images",
    "regularize_attention",
]

PVALUE_METHODS = stats.PVALUE_METHODS
PI0_METHODS = stats.PI0_METHODS
LFDR_NULLS = stats.LFDR_NULLS
IMAGES, BOOT = "images", "boot"  # mesh axis names

# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _check_number(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return value


def _check_threshold(value: Any, name: str, lo: float, hi: float) -> float | Percentile:
    """A number in [lo, hi] or a scalar ``Percentile`` (q normalised to a float: hashable)."""
    if isinstance(value, Percentile):
        q = value.q
        if isinstance(q, jax.core.Tracer) or np.ndim(q) != 0:
            raise TypeError(f"{name}: a pipeline Percentile needs one concrete number q "
                            f"(one threshold for every image), got {q!r}")
        return Percentile(_check_number(q.item() if hasattr(q, "item") else q,
                                        f"{name} Percentile q", 0.0, 100.0))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or an arb_jax.regularize.Percentile, got "
                        f"{type(value).__name__} {value!r}")
    return _check_number(value, name, lo, hi)


@dataclasses.dataclass(frozen=True)
class ARBOptions:
    """Options of one ARB run (frozen and hashable; numbers are normalised to ``float``).

    n_boot: bootstrap images per input (B >= 1). boot_chunk: null forwards run this many per
    image at a time (None: all B at once, or B split over a "boot" mesh axis); memory grows
    with it, the null images do not change (module notes). image_chunk: images per step on each
    device (None: all of a device's images at once); fixing it makes results independent of the
    batch size and the device count, and bounds memory for large batches.
    sampler / width: SPEC §2 ("normal" | "pixel" | "patch" | "uniform"; width > 0, normal only).
    pvalue: SPEC §3 eq. 4 variant ("upper" | "plus_one" | "two_sided" | "attnreg").
    alpha / beta: p- and lfdr-thresholds, a number in [0, 1] or ``Percentile(q)`` of each map's
    p / lfdr. z_th: the z-threshold every rule starts from, a number or ``Percentile(q)``.
    lfdr_pi0: π₀ in the lfdr, a number in (0, 1] (1.0 as the paper) or "estimate" (Storey's π₀
    of the attnreg p-values, as the reference code). lfdr_null: "theoretical" N(0, 1) or
    "empirical" (fitted to z_null). pi0_method: Storey's estimator for the π₀ threshold
    ("smoother" | "bootstrap"). heads: also return per-head maps. return_null: also return the
    bootstrap z (N, B, h, w).

    Only the structure (counts, method names, flags, number vs Percentile) selects a compiled
    function; width, alpha, beta, z_th and a numeric lfdr_pi0 are passed as traced values, so
    changing them does not recompile.
    """

    n_boot: int = 1
    boot_chunk: int | None = None
    image_chunk: int | None = None
    sampler: str = "normal"
    width: float = 1.0
    pvalue: str = "upper"
    alpha: float | Percentile = 0.3
    beta: float | Percentile = 0.3
    lfdr_pi0: float | str = 1.0
    lfdr_null: str = "theoretical"
    pi0_method: str = "smoother"
    z_th: float | Percentile = 0.0
    heads: bool = False
    return_null: bool = False

    def __post_init__(self):
        put = object.__setattr__
        put(self, "n_boot", as_int(self.n_boot, "n_boot"))
        put(self, "boot_chunk", as_int(self.boot_chunk, "boot_chunk", allow_none=True))
        put(self, "image_chunk", as_int(self.image_chunk, "image_chunk", allow_none=True))
        for name, allowed in (("sampler", tuple(bootstrap.SAMPLERS)), ("pvalue", PVALUE_METHODS),
                              ("pi0_method", PI0_METHODS), ("lfdr_null", LFDR_NULLS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        put(self, "width", _check_number(self.width, "width", 0.0))
        if self.width == 0:
            raise ValueError("width must be > 0, got 0.0")
        if isinstance(self.lfdr_pi0, str):
            if self.lfdr_pi0 != "estimate":
                raise ValueError(f"lfdr_pi0 must be a number in (0, 1] or 'estimate', got "
                                 f"{self.lfdr_pi0!r}")
        else:
            put(self, "lfdr_pi0", _check_number(self.lfdr_pi0, "lfdr_pi0", 0.0, 1.0))
            if self.lfdr_pi0 == 0:
                raise ValueError("lfdr_pi0 must lie in (0, 1], got 0.0")
        put(self, "alpha", _check_threshold(self.alpha, "alpha", 0.0, 1.0))
        put(self, "beta", _check_threshold(self.beta, "beta", 0.0, 1.0))
        put(self, "z_th", _check_threshold(self.z_th, "z_th", -math.inf, math.inf))
        for name in ("heads", "return_null"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def chunk(self) -> int:
        """Null images per image per forward: min(boot_chunk or B, B)."""
        return min(self.boot_chunk or self.n_boot, self.n_boot)

    @classmethod
    def from_kwargs(cls, **options: Any) -> ARBOptions:
        """``ARBOptions(**options)`` with a clear error naming unknown options."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown ARB option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


_DYNAMIC = ("width", "alpha", "beta", "z_th", "lfdr_pi0")


def _split_options(opts: ARBOptions) -> tuple[ARBOptions, dict[str, Any]]:
    """(static options with placeholder numbers, dict of the traced values)."""
    def placeholder(v):
        return Percentile(0.0) if isinstance(v, Percentile) else v if isinstance(v, str) else 1.0

    def traced(v):
        return Percentile(np.float32(v.q)) if isinstance(v, Percentile) else np.float32(v)

    static = dataclasses.replace(opts, **{k: placeholder(getattr(opts, k)) for k in _DYNAMIC})
    values = {k: traced(getattr(opts, k)) for k in _DYNAMIC if getattr(opts, k) != "estimate"}
    return static, values


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class ARBResult:
    """Per-image ARB output; every array has a leading image axis N and an (h, w) patch grid.

    attn: (N, h, w) float32 head-mean CLS attention (probabilities over patch keys).
    attn_heads: (N, heads, h, w) with ``heads=True``, else None.
    z, p, lfdr: (N, h, w). z_null: (N, B, h, w) with ``return_null=True``, else None.
    pi0: (N,) Storey's π₀ of the p-values, clamped to [0, 1] (R ``qvalue`` clamps at 1 and stops
    with an error for π₀ <= 0; one image cannot stop a batch, so a non-positive estimate — the
    cubic smoother can dip below 0 on small, strongly non-null maps — becomes 0: "no nulls",
    the π₀ threshold then keeps every z-passing patch).
    mu0, sigma0: (N,) mean and std (ddof 0) of the log null scores.
    maps: shrunk maps by method: "z", "p", "lfdr", "pi0", "soft" → (N, h, w).
    options: the ARBOptions that produced it (static).

    Zero scores (a softmax underflowing, e.g. in bfloat16, whose exponent range is float32's):
    every score below the smallest normal float32, ``finfo(float32).tiny`` = 1.18e-38 (exact
    zeros and subnormals), is raised to it before the log (``stats.zstat``): a zero stands for
    a true score below that, so tiny is the nearest representable value, log a = −87.34 and z
    stays finite. A zero observed score gets a very negative z (below chance, removed by every
    rule); zero null scores pull μ₀ down and σ₀ up; either stretches the lfdr's histogram (few
    occupied bins: its fit is then poorly determined). A constant null (σ₀ = 0) gives NaN
    statistics for that image.
    """

    attn: jax.Array
    z: jax.Array
    p: jax.Array
    lfdr: jax.Array
    pi0: jax.Array
    mu0: jax.Array
    sigma0: jax.Array
    maps: dict[str, jax.Array]
    attn_heads: jax.Array | None = None
    z_null: jax.Array | None = None
    options: ARBOptions = flax.struct.field(pytree_node=False, default=ARBOptions())

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Flat dict of host arrays (``maps`` flattened as ``map_<method>``), e.g. for ``np.savez``."""
        out = {k: np.asarray(getattr(self, k)) for k in ("attn", "z", "p", "lfdr", "pi0", "mu0", "sigma0")}
        out.update({f"map_{k}": np.asarray(v) for k, v in self.maps.items()})
        for k in ("attn_heads", "z_null"):
            if getattr(self, k) is not None:
                out[k] = np.asarray(getattr(self, k))
        return out


# --------------------------------------------------------------------------------------------
# Statistics of one image
# --------------------------------------------------------------------------------------------


def _statistics(attn: jax.Array, attn_null: jax.Array, opts: ARBOptions,
                values: dict[str, Any], patch: int) -> dict[str, Any]:
    """``arb_statistics`` with the numeric options taken from ``values`` (may be traced)."""
    shape = attn.shape
    z, z_null, mu0, sigma0 = stats.zstat(attn.reshape(-1), attn_null.reshape(attn_null.shape[0], -1))
    zn = z_null.reshape(-1)
    p = stats.empirical_pvalues(z, zn, method=opts.pvalue)
    def storey_pi0(p):  # pi0est is already min(·, 1); its smoother can dip below 0
        return jnp.maximum(stats.pi0est(p, method=opts.pi0_method).pi0, 0)

    pi0 = storey_pi0(p)
    if opts.lfdr_pi0 == "estimate":
        lfdr_pi0 = storey_pi0(stats.empirical_pvalues(z, zn, method="attnreg"))
    else:
        lfdr_pi0 = values["lfdr_pi0"]
    lfdr = stats.local_fdr(z, pi0=lfdr_pi0, null=opts.lfdr_null,
                           z_null=zn if opts.lfdr_null == "empirical" else None)
    maps = regularize.shrink_all(attn.reshape(-1), z, p, lfdr, pi0, alpha=values["alpha"],
                                 beta=values["beta"], z_th=values["z_th"], repeat=patch * patch)
    return {
        "z": z.reshape(shape), "p": p.reshape(shape), "lfdr": lfdr.reshape(shape),
        "z_null": z_null.reshape(attn_null.shape), "pi0": pi0, "mu0": mu0, "sigma0": sigma0,
        "maps": {k: v.reshape(shape) for k, v in maps.items()},
    }


def arb_statistics(attn: Any, attn_null: Any, opts: ARBOptions | None = None,
                   patch: int = 1) -> dict[str, Any]:
    """Statistics and shrunk maps of one image from its observed and null attention maps.

    attn: (h, w) observed head-mean map; attn_null: (B, h, w) bootstrap maps (scores >= 0).
    opts: ``ARBOptions`` (default ``ARBOptions()``); only the statistics options are used.
    patch: side of a patch in pixels: the maps stand for their nearest upsampling by ``patch``,
    whose percentiles (π₀ and ``Percentile`` thresholds) differ from the grid's (SPEC §1).
    Returns a dict of z, p, lfdr (h, w), z_null (B, h, w), pi0, mu0, sigma0 (scalars) and maps
    (dict of (h, w)) — the computation ``regularize_attention`` runs for each image.
    """
    opts = ARBOptions() if opts is None else opts
    if not isinstance(opts, ARBOptions):
        raise TypeError(f"opts must be an ARBOptions, got {type(opts).__name__}")
    attn, attn_null = jnp.asarray(attn), jnp.asarray(attn_null)
    if attn.ndim != 2 or attn_null.ndim != 3 or attn_null.shape[1:] != attn.shape:
        raise ValueError(f"attn must be (h, w) and attn_null (B, h, w) of the same grid, got "
                         f"{attn.shape} and {attn_null.shape}")
    patch = as_int(patch, "patch")
    static, values = _split_options(opts)
    return _statistics_jit(attn, attn_null, values, static, patch)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _statistics_jit(attn, attn_null, values, static, patch):
    return _statistics(attn, attn_null, static, values, patch)


# --------------------------------------------------------------------------------------------
# The compiled function
# --------------------------------------------------------------------------------------------

_N_TRACES = 0  # number of times the pipeline function was traced (tests check the cache)


def _n_traces() -> int:
    return _N_TRACES


def _loop(fn: Callable[[jax.Array], Any], n: int, n_traced: jax.Array) -> Any:
    """``lax.map(fn, arange(n))`` as a while loop whose trip count XLA cannot see.

    ``n_traced`` (= n, a traced int32) keeps XLA from unrolling or removing the loop when n is
    1, so its body — the forwards, the softmax, the head mean — is compiled and fused the same
    way for every n, and the results do not depend on the chunk or group count.
    """
    def zeros(t):  # inside shard_map: varying over the mesh axes the outputs vary over
        z = jnp.zeros((n,) + t.shape, t.dtype)
        manual = getattr(t, "manual_axis_type", None)
        vary = tuple(sorted(manual.varying)) if manual is not None else ()
        return jax.lax.pcast(z, vary, to="varying") if vary else z

    acc = jax.tree.map(zeros, jax.eval_shape(fn, jnp.int32(0)))

    def body(i, acc):
        return jax.tree.map(lambda a, o: jax.lax.dynamic_update_index_in_dim(a, o, i, 0), acc, fn(i))

    return jax.lax.fori_loop(0, n_traced, body, acc)


def _group(apply_fn: Callable, patch: int, opts: ARBOptions, params: Any, images: jax.Array,
           keys: jax.Array, values: dict[str, Any], steps: dict[str, jax.Array],
           boot: int | None) -> dict[str, Any]:
    """ARB for a group of G images (G, H, W, 3): one observed forward, chunked null forwards.

    The ViT runs on the G images, then on G·chunk null images per step of a loop over the
    chunks. ``boot``: the size of the "boot" mesh axis (None: no such axis); this device then
    computes its share of the chunks (padded to a multiple of ``boot``; samples past B are
    dropped) and all-gathers the null maps over "boot".
    """
    G, H, W, C = images.shape
    heads_obs = apply_fn(params, images)["attn"]                                  # (G, heads, h, w)
    attn = heads_obs.mean(1)
    grid = attn.shape[1:]
    chunk, per = _chunks(opts, boot)
    first = 0 if boot is None else jax.lax.axis_index(BOOT) * per

    def null_chunk(i):
        def draw(image, key):
            return bootstrap.sample_range(opts.sampler, key, image, (first + i) * chunk, chunk,
                                          width=values["width"], patch=patch)
        imgs = jax.vmap(draw)(images, keys)                                      # (G, chunk, H, W, 3)
        a = apply_fn(params, imgs.reshape(G * chunk, H, W, C))["attn"].mean(1)
        return a.reshape((G, chunk) + grid)

    null = _loop(null_chunk, per, steps["chunks"])                               # (per, G, chunk, h, w)
    if boot is not None:
        null = jax.lax.all_gather(null, BOOT, axis=0, tiled=True, to="invarying")
    null = jnp.moveaxis(null, 0, 1).reshape((G, -1) + grid)[:, : opts.n_boot]   # (G, B, h, w)
    out = jax.vmap(lambda a, an: _statistics(a, an, opts, values, patch))(attn, null)
    out["attn"] = attn
    out["attn_heads"] = heads_obs if opts.heads else None
    if not opts.return_null:
        out["z_null"] = None
    return out


def _local(apply_fn: Callable, patch: int, opts: ARBOptions, boot: int | None, params: Any,
           images: jax.Array, keys: jax.Array, values: dict[str, Any],
           steps: dict[str, jax.Array]) -> dict[str, Any]:
    """ARB for the images of one device: in groups of ``image_chunk`` (a loop), or all at once."""
    global _N_TRACES
    _N_TRACES += 1
    G = opts.image_chunk
    if G is None:
        return _group(apply_fn, patch, opts, params, images, keys, values, steps, boot)
    n = images.shape[0] // G

    def group(i):
        x = jax.lax.dynamic_slice_in_dim(images, i * G, G)
        k = jax.lax.dynamic_slice_in_dim(keys, i * G, G)
        return _group(apply_fn, patch, opts, params, x, k, values, steps, boot)

    out = _loop(group, n, steps["groups"])
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)


def _chunks(opts: ARBOptions, boot: int | None) -> tuple[int, int]:
    """(null images per image per forward, chunks this device runs).

    The chunk is ``opts.chunk``; without a boot_chunk on a mesh with a "boot" axis, B split over
    its devices. With a "boot" axis each device runs its share of the chunks (rounded up)."""
    chunk = math.ceil(opts.n_boot / boot) if opts.boot_chunk is None and boot else opts.chunk
    n_chunks = math.ceil(opts.n_boot / chunk)
    return chunk, n_chunks if boot is None else math.ceil(n_chunks / boot)


def _steps(opts: ARBOptions, per_device: int, boot: int | None) -> dict[str, np.ndarray]:
    """Trip counts of the loops over chunks and groups, passed traced (see ``_loop``)."""
    return {"chunks": np.int32(_chunks(opts, boot)[1]),
            "groups": np.int32(per_device // (opts.image_chunk or per_device))}


def _module_apply(module: Any, params: Any, images: jax.Array) -> dict[str, jax.Array]:
    return module.apply({"params": params}, images)


_CACHE_SIZE = 32
_COMPILED: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()


def _model_key(vit: Any) -> tuple:
    """What the traced model function depends on: the architecture and the compute dtype.

    Parameters are an argument of the compiled function, never closed over, so two bundles of
    the same architecture and dtype (e.g. other weights or another image size) share it.
    """
    missing = [a for a in ("config", "dtype", "module", "params", "image_size") if not hasattr(vit, a)]
    if missing:
        raise TypeError(f"vit must be an arb_jax ViT bundle (arb_jax.load_vit / build_vit); "
                        f"{type(vit).__name__} has no {', '.join(missing)}")
    return (type(vit), vit.config, str(vit.dtype))


def _compiled(vit: Any, opts: ARBOptions, mesh: Mesh | None) -> Callable:
    """The jitted ``(params, images (N,H,W,3), keys (N,), values, steps) -> dict`` (LRU cache).

    Keyed on the model architecture and dtype (``_model_key``), the static options and the mesh.
    The function closes over the linen module only (config and dtype), never over parameters.
    """
    cache_key = (_model_key(vit), opts, mesh)
    fn = _COMPILED.get(cache_key)
    if fn is not None:
        _COMPILED.move_to_end(cache_key)
        return fn
    apply_fn = functools.partial(_module_apply, vit.module)
    boot = mesh.shape[BOOT] if mesh is not None and BOOT in mesh.axis_names else None
    local = functools.partial(_local, apply_fn, vit.config.patch, opts, boot)
    if mesh is None:
        fn = jax.jit(local)
    else:
        spec, rep = PartitionSpec(IMAGES), PartitionSpec()
        fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rep, spec, spec, rep, rep),
                                   out_specs=spec))
    _COMPILED[cache_key] = fn
    while len(_COMPILED) > _CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return fn


_DEVICE_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _device_params(vit: Any, mesh: Mesh | None) -> Any:
    """``vit.params`` on the device (replicated over ``mesh``), transferred once per bundle."""
    try:
        cached = _DEVICE_PARAMS.get(vit)
    except TypeError:  # not weak-referenceable: transfer every call
        cached = None
    if cached is not None and cached[0] == mesh:
        return cached[1]
    target = NamedSharding(mesh, PartitionSpec()) if mesh is not None else jax.local_devices()[0]
    params = jax.device_put(vit.params, target)
    with contextlib.suppress(TypeError):
        _DEVICE_PARAMS[vit] = (mesh, params)
    return params


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def image_keys(key: Any, n: int) -> jax.Array:
    """(n,) typed per-image keys: image ``i`` gets ``fold_in(key, i)``; n keys pass through.

    key: one PRNG key (``jax.random.key`` or a raw uint32 ``PRNGKey`` (2,)), or one per image:
    (n,) typed keys or (n, 2) raw keys.
    """
    if not isinstance(key, jax.Array | np.ndarray):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)) or one per image, "
                        f"got {type(key).__name__}")
    key = jnp.asarray(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2) or key.shape[-1] != 2:
            raise TypeError(f"key must be a JAX PRNG key: typed (jax.random.key) or raw uint32 "
                            f"(2,) / (n, 2), got dtype {key.dtype} shape {key.shape}")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    if key.shape == (n,):
        return key
    raise ValueError(f"key must be one PRNG key or one per image ({n} images), got a batch of "
                     f"{key.shape[0] if key.ndim == 1 else key.shape} keys")


@functools.partial(jax.jit, static_argnames=("sampler", "n_boot", "patch"))
def _draw_nulls(keys: jax.Array, images: jax.Array, width: jax.Array, *, sampler: str,
                n_boot: int, patch: int | None) -> jax.Array:
    return jax.vmap(lambda k, im: bootstrap.sample_range(sampler, k, im, 0, n_boot, width=width,
                                                         patch=patch))(keys, images)


def null_images(key: Any, images: Any, n_boot: int, sampler: str = "normal", *,
                width: float = 1.0, patch: int | None = None) -> jax.Array:
    """(N, B, H, W, 3) float32: the bootstrap images ``regularize_attention`` draws for ``images``.

    Same arguments as there (one key: image i uses ``fold_in(key, i)``; or one key per image), so
    the result is exactly the null the pipeline runs the ViT on — to look at, or to run another
    model (e.g. a PyTorch baseline) on the same null. ``patch`` is needed by the "patch" sampler.
    Holds all N·B images in memory; the pipeline itself never does (``boot_chunk``).
    """
    opts = ARBOptions(n_boot=n_boot, sampler=sampler, width=width)   # checks n_boot, sampler, width
    x = _checked_images(images, patch if opts.sampler == "patch" and patch else 1)
    keys = image_keys(key, x.shape[0])
    return _draw_nulls(keys, x, jnp.float32(opts.width), sampler=opts.sampler, n_boot=opts.n_boot,
                       patch=patch if opts.sampler == "patch" else None)


def _checked_images(images: Any, patch: int,
                    image_size: tuple[int, int] | None = None) -> np.ndarray | jax.Array:
    """``images`` validated (``models.check_images``: shape, dtype, size; concrete; finite) as
    float32 — left where it is (a host array stays on the host, so it is transferred once)."""
    check_images(images, patch, image_size)
    if isinstance(images, jax.core.Tracer):
        raise TypeError("regularize_attention is compiled already: call it with concrete arrays, "
                        "not inside jit/vmap")
    if isinstance(images, jax.Array):
        x = images.astype(jnp.float32)
        finite = bool(jnp.isfinite(x).all())
    else:
        x = np.asarray(images, np.float32)
        finite = bool(np.isfinite(x).all())
    if not finite:
        raise ValueError("images contain NaN or infinite values")
    return x


def image_mesh(devices: Sequence[jax.Device] | None = None, boot: int = 1) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: this host's): axis "images", and "boot" if boot > 1.

    boot: devices that share one image's bootstrap chunks (a 2-D mesh (n/boot, boot)); must
    divide the number of devices.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    boot = as_int(boot, "boot")
    if len(devices) % boot:
        raise ValueError(f"boot={boot} does not divide the {len(devices)} devices")
    if boot == 1:
        return Mesh(np.array(devices), (IMAGES,))
    return Mesh(np.array(devices).reshape(-1, boot), (IMAGES, BOOT))


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see image_mesh), got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    if names not in ((IMAGES,), (IMAGES, BOOT)):
        raise ValueError(f"mesh axes must be ('images',) or ('images', 'boot'), got {names}")
    return mesh


def _pad(a: Any, total: int) -> Any:
    """a (a numpy or jax array) with its last element repeated up to ``total`` along axis 0."""
    pad = total - a.shape[0]
    xp = np if isinstance(a, np.ndarray) else jnp
    return a if pad == 0 else xp.concatenate([a, xp.repeat(a[-1:], pad, axis=0)], axis=0)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def regularize_attention(vit: Any, images: Any, key: Any, n_boot: int = 1,
                         sampler: str = "normal", *, mesh: Mesh | None = None,
                         **options: Any) -> ARBResult:
    """Attention Regularization by the Bootstrap for a batch of images.

    vit: a loaded ``ViT`` bundle (``arb_jax.load_vit``). images: (N, H, W, 3) float32,
    ImageNet-normalised, at ``vit.image_size``. key: one PRNG key (image i uses fold_in(key, i))
    or one key per image. n_boot: bootstrap images per input (B). sampler: "normal" | "pixel" |
    "patch" | "uniform". mesh: a ``Mesh`` with an "images" axis (and optionally "boot") to
    shard the work over (``image_mesh``); default: all local devices when there are several and
    N > 1. Images are padded with copies of the last one to fill every device (and every
    ``image_chunk``) and the padding is dropped. Other options: see ``ARBOptions`` (boot_chunk,
    image_chunk, width, pvalue, alpha, beta, lfdr_pi0, lfdr_null, pi0_method, z_th, heads,
    return_null).

    Returns an ``ARBResult``. The same key gives a bit-identical result for the same per-device
    forward shapes; with ``image_chunk`` set, for any N and number of devices. Otherwise the
    number of images per device (and ``boot_chunk``, where XLA picks batch-dependent kernels)
    can change the attention maps by float32 rounding (module notes give the measured bound).
    """
    opts = ARBOptions.from_kwargs(n_boot=n_boot, sampler=sampler, **options)
    _model_key(vit)
    x = _checked_images(images, vit.config.patch, tuple(vit.image_size))
    n = x.shape[0]
    keys = image_keys(key, n)
    if mesh is None and jax.local_device_count() > 1 and n > 1:
        mesh = image_mesh()
    if mesh is not None:
        mesh = _check_mesh(mesh)
    n_dev = 1 if mesh is None else mesh.shape[IMAGES]
    per_device = math.ceil(n / n_dev)
    if opts.image_chunk is not None:
        per_device = math.ceil(per_device / opts.image_chunk) * opts.image_chunk
    x, keys = _pad(x, per_device * n_dev), _pad(keys, per_device * n_dev)
    static, values = _split_options(opts)
    params = _device_params(vit, mesh)
    if mesh is not None:
        sharding = NamedSharding(mesh, PartitionSpec(IMAGES))
        x, keys = jax.device_put(x, sharding), jax.device_put(keys, sharding)
    boot = mesh.shape[BOOT] if mesh is not None and BOOT in mesh.axis_names else None
    steps = _steps(opts, per_device, boot)
    out = _compiled(vit, static, mesh)(params, x, keys, values, steps)
    if per_device * n_dev != n:
        out = jax.tree.map(lambda a: a[:n], out)
    return ARBResult(**out, options=opts)
