"""The runner: one jit-compiled ARB function per (architecture, dtype, options, mesh), cached.

Per device, the images run in groups (``image_chunk``) and each image with its null images in
chunks (``boot_chunk``, the image in the first), in loops whose trip counts are traced so XLA
compiles their bodies the same way for one step as for many (docs/method.md §6). Two caches:
compiled functions (LRU, keyed on `model_key`, the static options and the mesh; parameters are
arguments, never closed over) and each bundle's parameters on the device (weakly keyed on the
bundle).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arb_jax.checks import as_int
from arb_jax.core import functional
from arb_jax.core.options import ARBOptions
from arb_jax.core.statistics import image_statistics
from arb_jax.models import xla_options

__all__ = [
    "BOOT",
    "IMAGES",
    "MapModel",
    "compiled",
    "device_params",
    "loop_steps",
    "model_key",
    "trace_count",
]

IMAGES, BOOT = "images", "boot"  # mesh axis names


_N_TRACES = 0  # number of times the pipeline function was traced


def trace_count() -> int:
    """How many times the ARB function has been traced (compiled) in this process.

    Returns
    -------
    int
        A counter that grows by one per trace: a call that reuses a compiled function leaves it
        unchanged.
    """
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


def _group(
    forward: Callable,
    patch: int,
    score_range: bool,
    opts: ARBOptions,
    params: Any,
    images: jax.Array,
    keys: jax.Array,
    values: dict[str, Any],
    steps: dict[str, jax.Array],
    boot: int | None,
) -> dict[str, Any]:
    """ARB for a group of G images (G, H, W, 3): the images and their null images, in chunks.

    ``forward(params, images) -> (maps (n, h, w), per-head maps or None)``. Each image has
    1 + B slots, the image itself then its B null images (`functional.bootstrap_chunk`), and the
    model runs on G·chunk of them per step of a loop over the chunks, so the observed images
    share the first forward with their first null images. ``boot``: the size of the "boot" mesh
    axis (None: no such axis); this device then computes its share of the chunks (padded to a
    multiple of ``boot``; slots past 1 + B are dropped) and all-gathers the maps over "boot".
    ``score_range``: also return each image's smallest score and whether all are finite (a
    user's map function, checked by the caller once the result is concrete).
    """
    G, H, W, C = images.shape
    chunk, per = _chunks(opts, boot)
    first = 0 if boot is None else jax.lax.axis_index(BOOT) * per

    def one_chunk(i):
        start = (first + i) * chunk
        imgs = functional.bootstrap_chunk(
            opts.sampler, images, keys, start, chunk, width=values["width"], patch=patch, observed=True
        ).reshape(G * chunk, H, W, C)
        maps, heads = forward(params, imgs)  # (G·chunk, h, w), (G·chunk, heads, h, w) or None
        out = {"maps": maps.reshape((G, chunk) + maps.shape[1:])}
        if opts.heads:  # the per-head maps of each chunk's first slot (the image, in chunk 0)
            out["heads"] = heads.reshape((G, chunk) + heads.shape[1:])[:, 0]
        return out

    got = _loop(one_chunk, per, steps["chunks"])  # maps (per, G, chunk, h, w)
    if boot is not None:
        got = jax.lax.all_gather(got, BOOT, axis=0, tiled=True, to="invarying")
    grid = got["maps"].shape[3:]
    slots = jnp.moveaxis(got["maps"], 0, 1).reshape((G, -1) + grid)  # (G, ≥ 1 + B, h, w)
    attn, null = slots[:, 0], slots[:, 1 : 1 + opts.n_boot]  # (G, h, w), (G, B, h, w)
    out = jax.vmap(lambda a, an: image_statistics(a, an, opts, values, patch))(attn, null)
    out["attn"] = attn
    out["attn_heads"] = got["heads"][0] if opts.heads else None
    if not opts.return_null:
        out["z_null"] = None
    if score_range:
        both = slots[:, : 1 + opts.n_boot].reshape(G, -1)
        out["score_min"] = jnp.min(jnp.where(jnp.isnan(both), jnp.inf, both), axis=1)
        out["score_finite"] = jnp.all(jnp.isfinite(both), axis=1)
    return out


def _local(
    forward: Callable,
    patch: int,
    score_range: bool,
    opts: ARBOptions,
    boot: int | None,
    params: Any,
    images: jax.Array,
    keys: jax.Array,
    values: dict[str, Any],
    steps: dict[str, jax.Array],
) -> dict[str, Any]:
    """ARB for the images of one device: in groups of ``image_chunk`` (a loop), or all at once."""
    global _N_TRACES
    _N_TRACES += 1
    G = opts.image_chunk
    if G is None:
        return _group(forward, patch, score_range, opts, params, images, keys, values, steps, boot)
    n = images.shape[0] // G

    def group(i):
        x = jax.lax.dynamic_slice_in_dim(images, i * G, G)
        k = jax.lax.dynamic_slice_in_dim(keys, i * G, G)
        return _group(forward, patch, score_range, opts, params, x, k, values, steps, boot)

    out = _loop(group, n, steps["groups"])
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)


def _chunks(opts: ARBOptions, boot: int | None) -> tuple[int, int]:
    """(slots per image per forward, chunks this device runs), of the 1 + B slots per image.

    The chunk is ``opts.chunk``; without a boot_chunk on a mesh with a "boot" axis, the 1 + B
    slots split over its devices. With a "boot" axis each device runs its share of the chunks
    (rounded up)."""
    slots = 1 + opts.n_boot
    chunk = math.ceil(slots / boot) if opts.boot_chunk is None and boot else opts.chunk
    n_chunks = math.ceil(slots / chunk)
    return chunk, n_chunks if boot is None else math.ceil(n_chunks / boot)


def loop_steps(opts: ARBOptions, per_device: int, boot: int | None) -> dict[str, Any]:
    """Trip counts of the loops over chunks and groups, passed traced (see ``_loop``)."""
    return {
        "chunks": np.int32(_chunks(opts, boot)[1]),
        "groups": np.int32(per_device // (opts.image_chunk or per_device)),
    }


def _module_forward(module: Any, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A ViT bundle's maps: the head mean of its CLS attention, and the per-head maps."""
    heads = module.apply({"params": params}, images)["attn"]  # (n, heads, h, w)
    return heads.mean(1), heads


class MapModel:
    """A user's map function as a model for the runner: ``map_fn(params, images) -> (n, h, w)``.

    Parameters
    ----------
    map_fn : callable
        The map function (pure and jittable).
    params : pytree
        Its parameters (an argument of the compiled function, never closed over).
    patch : int
        Pixels per map cell along a side: maps are (n, H/patch, W/patch).
    """

    def __init__(self, map_fn: Callable, params: Any, patch: int):
        if not callable(map_fn):
            raise TypeError(
                f"map_fn must be a function (params, images) -> maps, got {type(map_fn).__name__}"
            )
        self.map_fn = map_fn
        self.params = params
        self.patch = as_int(patch, "patch")


def _map_forward(map_fn: Callable, patch: int, params: Any, images: jax.Array) -> tuple[jax.Array, None]:
    maps = map_fn(params, images)
    functional.check_map_shape(map_fn, maps, images, patch)
    return maps, None


_CACHE_SIZE = 32
_COMPILED: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()


def model_key(vit: Any) -> tuple:
    """What the traced model function depends on: the architecture and the compute dtype (a
    `MapModel`: its function and patch).

    Parameters are an argument of the compiled function, never closed over, so two bundles of
    the same architecture and dtype (e.g. other weights or another image size) share it.
    """
    if isinstance(vit, MapModel):
        return (MapModel, vit.map_fn, vit.patch)
    missing = [a for a in ("config", "dtype", "module", "params", "image_size") if not hasattr(vit, a)]
    if missing:
        raise TypeError(
            f"vit must be an arb_jax ViT bundle (arb_jax.load_vit / build_vit); "
            f"{type(vit).__name__} has no {', '.join(missing)}"
        )
    return (type(vit), vit.config, str(vit.dtype))


def compiled(vit: Any, opts: ARBOptions, mesh: Mesh | None) -> Callable:
    """The jitted ``(params, images (N,H,W,3), keys (N,), values, steps) -> dict`` (LRU cache).

    Keyed on the model architecture and dtype (`model_key`), the static options, the mesh and
    the compiler options (`arb_jax.models.xla_options`: which library runs a CPU's dots).
    The function closes over the linen module only (config and dtype), never over parameters.

    Parameters
    ----------
    vit : arb_jax.models.ViT
        The model bundle.
    opts : ARBOptions
        Static options (`arb_jax.core.options.split_options`).
    mesh : jax.sharding.Mesh or None
        Devices; None: one device.

    Returns
    -------
    callable
        The same object for the same architecture, dtype, options and mesh.
    """
    compiler = xla_options.compiler_options(mesh.devices.flat[0].platform if mesh is not None else None)
    cache_key = (model_key(vit), opts, mesh, tuple(sorted(compiler.items())))
    fn = _COMPILED.get(cache_key)
    if fn is not None:
        _COMPILED.move_to_end(cache_key)
        return fn
    user_map = isinstance(vit, MapModel)
    if user_map:
        forward: Callable = functools.partial(_map_forward, vit.map_fn, vit.patch)
        patch = vit.patch
    else:
        forward, patch = functools.partial(_module_forward, vit.module), vit.config.patch
    boot = mesh.shape[BOOT] if mesh is not None and BOOT in mesh.axis_names else None
    local = functools.partial(_local, forward, patch, user_map, opts, boot)
    if mesh is None:
        fn = xla_options.jit(local, compiler)
    else:
        spec, rep = PartitionSpec(IMAGES), PartitionSpec()
        sharded = jax.shard_map(local, mesh=mesh, in_specs=(rep, spec, spec, rep, rep), out_specs=spec)
        fn = xla_options.jit(sharded, compiler)
    _COMPILED[cache_key] = fn
    while len(_COMPILED) > _CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return fn


_DEVICE_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def device_params(vit: Any, mesh: Mesh | None) -> Any:
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
