"""ARB end to end: bootstrap null images → ViT attention → z, p, lfdr, π₀ → shrunk maps.

``regularize_attention`` runs one jit-compiled function per (model architecture, options): for
every image it draws ``n_boot`` null images (docs/method.md §2), runs the ViT on the observed image and its
null images in chunks of ``boot_chunk`` images per input, the observed image in the first (so
memory stays bounded for large B: only the (B, h, w) null maps are kept, which the exact
p-values need anyway), and computes every
statistic on device (docs/method.md §3–4). Work is sharded over a ``Mesh`` of devices with an "images"
axis and optionally a "boot" axis that splits each image's bootstrap chunks (``image_mesh``).

Patch grid = pixels. The statistics are computed on the (h, w) patch grid and equal the
reference code's computation on the nearest-upsampled pixel maps (docs/method.md §1): means, stds, ECDFs
and histograms are unchanged by repeating each value p² times, but numpy's linear percentile is
not, so the π₀ threshold and ``Percentile`` thresholds are percentiles of the upsampled map
(``regularize`` with ``repeat=p²``).

Exactness (docs/method.md §6). Bootstrap sample ``b`` of image ``i`` is drawn from
``fold_in(key_i, b)`` only, so the null images do not depend on ``boot_chunk``, ``image_chunk``,
the batch or the devices; the loops over chunks and image groups get traced trip counts. What can
still differ is the ViT forward, whose matmul kernels XLA picks by shape. Hence:

- the same key, model, options and per-device forward shapes give a bit-identical result;
- ``boot_chunk`` does not change the result wherever the forward kernels do not depend on the
  batch;
- with ``image_chunk`` the per-device shapes are fixed: the result does not depend on the number
  of images, the padding or the number of devices, also on a 2-D ("images", "boot") mesh given
  a ``boot_chunk``;
- otherwise a different number of images per device changes the maps by float32 rounding.

The measured sizes of those differences are in ``bench/README.md`` ("Exactness and accuracy").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arb_jax.checks import as_int
from arb_jax.core import bootstrap, engine
from arb_jax.core.engine import BOOT, IMAGES
from arb_jax.core.options import LFDR_NULLS, PI0_METHODS, PVALUE_METHODS, ARBOptions, split_options
from arb_jax.core.statistics import arb_statistics
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


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class ARBResult:
    """Per-image ARB output; every array has a leading image axis N and an (h, w) patch grid.

    Attributes
    ----------
    attn : jax.Array, shape (N, h, w), float32
        Head-mean CLS attention (probabilities over the patch keys).
    attn_heads : jax.Array, shape (N, heads, h, w), or None
        Per-head maps with ``heads=True``.
    z, p, lfdr : jax.Array, shape (N, h, w)
        z-scores, p-values in [0, 1], local false discovery rates in [0, 1] (docs/method.md §3).
    z_null : jax.Array, shape (N, B, h, w), or None
        The bootstrap z with ``return_null=True``.
    pi0 : jax.Array, shape (N,)
        Storey's π₀ of the p-values, clamped to [0, 1] (R ``qvalue`` clamps at 1 and stops
        with an error for π₀ <= 0; one image cannot stop a batch, so a non-positive estimate —
        the cubic smoother can dip below 0 on small, strongly non-null maps — becomes 0: "no
        nulls", the π₀ threshold then keeps every z-passing patch).
    lfdr_pi0 : jax.Array, shape (N,), or None
        The π₀ the lfdr used (``options.lfdr_pi0``: the number, the estimate, or ``pi0``
        itself when "shared").
    mu0, sigma0 : jax.Array, shape (N,)
        Mean and standard deviation (ddof 0) of the log null scores.
    maps : dict of str to jax.Array, each (N, h, w)
        Shrunk maps by method: "z", "p", "lfdr", "pi0", "soft" (docs/method.md §4).
    options : ARBOptions
        The options that produced it (static).

    Notes
    -----
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
    lfdr_pi0: jax.Array | None = None
    options: ARBOptions = flax.struct.field(pytree_node=False, default=ARBOptions())

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Flat dict of host arrays (``maps`` flattened as ``map_<method>``), e.g. for ``np.savez``."""
        out = {k: np.asarray(getattr(self, k)) for k in ("attn", "z", "p", "lfdr", "pi0", "mu0", "sigma0")}
        out.update({f"map_{k}": np.asarray(v) for k, v in self.maps.items()})
        for k in ("attn_heads", "z_null", "lfdr_pi0"):
            if getattr(self, k) is not None:
                out[k] = np.asarray(getattr(self, k))
        return out


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=1)
def _fold_in_range(key: jax.Array, n: int) -> jax.Array:
    """(n,) keys ``fold_in(key, i)``, i = 0 … n − 1, in one compiled call (eagerly: 2 ms a call)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def image_keys(key: Any, n: int) -> jax.Array:
    """(n,) typed per-image keys: image ``i`` gets ``fold_in(key, i)``; n keys pass through.

    key: one PRNG key (``jax.random.key`` or a raw uint32 ``PRNGKey`` (2,)), or one per image:
    (n,) typed keys or (n, 2) raw keys.
    """
    if not isinstance(key, jax.Array | np.ndarray):
        raise TypeError(
            f"key must be a JAX PRNG key (jax.random.key(seed)) or one per image, got {type(key).__name__}"
        )
    key = jnp.asarray(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2) or key.shape[-1] != 2:
            raise TypeError(
                f"key must be a JAX PRNG key: typed (jax.random.key) or raw uint32 "
                f"(2,) / (n, 2), got dtype {key.dtype} shape {key.shape}"
            )
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return _fold_in_range(key, n)
    if key.shape == (n,):
        return key
    raise ValueError(
        f"key must be one PRNG key or one per image ({n} images), got a batch of "
        f"{key.shape[0] if key.ndim == 1 else key.shape} keys"
    )


@functools.partial(jax.jit, static_argnames=("sampler", "n_boot", "patch"))
def _draw_nulls(
    keys: jax.Array, images: jax.Array, width: jax.Array, *, sampler: str, n_boot: int, patch: int | None
) -> jax.Array:
    return jax.vmap(
        lambda k, im: bootstrap.sample_range(sampler, k, im, 0, n_boot, width=width, patch=patch)
    )(keys, images)


def null_images(
    key: Any,
    images: Any,
    n_boot: int,
    sampler: str = "normal",
    *,
    width: float = 1.0,
    patch: int | None = None,
) -> jax.Array:
    """(N, B, H, W, 3) float32: the bootstrap images ``regularize_attention`` draws for ``images``.

    Same arguments as there (one key: image i uses ``fold_in(key, i)``; or one key per image), so
    the result is exactly the null the pipeline runs the ViT on — to look at, or to run another
    model (e.g. a PyTorch baseline) on the same null. ``patch`` is needed by the "patch" sampler.
    Holds all N·B images in memory; the pipeline itself never does (``boot_chunk``).
    """
    opts = ARBOptions(n_boot=n_boot, sampler=sampler, width=width)  # checks n_boot, sampler, width
    x = _checked_images(images, patch if opts.sampler == "patch" and patch else 1)
    keys = image_keys(key, x.shape[0])
    return _draw_nulls(
        keys,
        x,
        jnp.float32(opts.width),
        sampler=opts.sampler,
        n_boot=opts.n_boot,
        patch=patch if opts.sampler == "patch" else None,
    )


def _checked_images(
    images: Any, patch: int, image_size: tuple[int, int] | None = None
) -> np.ndarray | jax.Array:
    """``images`` validated (``models.check_images``: shape, dtype, size; concrete; finite) as
    float32 — left where it is (a host array stays on the host, so it is transferred once)."""
    check_images(images, patch, image_size)
    if isinstance(images, jax.core.Tracer):
        raise TypeError(
            "regularize_attention is compiled already: call it with concrete arrays, not inside jit/vmap"
        )
    x: Any
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


def regularize_attention(
    vit: Any,
    images: Any,
    key: Any,
    n_boot: int = 1,
    sampler: Any = "normal",
    *,
    params: Any = None,
    patch: int | None = None,
    preset: str = "paper",
    mesh: Mesh | None = None,
    **options: Any,
) -> ARBResult:
    """Attention Regularization by the Bootstrap for a batch of images.

    Parameters
    ----------
    vit : arb_jax.models.ViT or callable
        A loaded bundle (``arb_jax.load_vit``): ARB on its last block's head-mean CLS
        attention. Or any map function ``map_fn(params, images (n, H, W, 3)) -> (n, H/patch,
        W/patch)`` (e.g. `arb_jax.models.rollout_map`, a Flax model of the user's), with
        ``params`` and ``patch`` given; signed maps need ``scale="identity"``.
    images : array_like, shape (N, H, W, 3), float32
        ImageNet-normalised images at ``vit.image_size`` (a map function: any size that is a
        multiple of ``patch``).
    key : jax.Array
        One PRNG key (image i uses ``fold_in(key, i)``) or one key per image, shape (N,).
    n_boot : int, default 1
        Bootstrap images per input (B).
    sampler : {"normal", "pixel", "patch", "uniform"}, default "normal"
        The bootstrap (docs/method.md §2).
    params : pytree, optional
        The map function's parameters (not with a bundle).
    patch : int, optional
        The map function's pixels per map cell (not with a bundle).
    preset : {"paper", "attnreg"}, default "paper"
        The statistical choices of the paper's equations or of the authors' code
        (`arb_jax.core.options.PRESETS`); options given here override it.
    mesh : jax.sharding.Mesh or None, default None
        A mesh with an "images" axis (and optionally "boot") to shard the work over
        (`image_mesh`); default: all local devices when there are several and N > 1. Images are
        padded with copies of the last one to fill every device (and every ``image_chunk``) and
        the padding is dropped.
    **options
        Any other field of `ARBOptions` (boot_chunk, image_chunk, width, pvalue, alpha, beta,
        lfdr_pi0, lfdr_null, pi0_method, z_th, percentile_decimals, heads, return_null).

    Returns
    -------
    ARBResult
        Statistics and shrunk maps of every image, on its (h, w) patch grid.

    Notes
    -----
    The same key gives a bit-identical result for the same per-device
    forward shapes; with ``image_chunk`` set, for any N and number of devices. Otherwise the
    number of images per device (and ``boot_chunk``, where XLA picks batch-dependent kernels)
    can change the attention maps by float32 rounding (bench/README.md gives the measured bound).
    """
    opts = ARBOptions.from_kwargs(n_boot=n_boot, sampler=sampler, preset=preset, **options)
    if callable(vit) and not hasattr(vit, "config"):
        if patch is None:
            raise TypeError("a map function needs patch= (pixels per map cell) and params=")
        model: Any = engine.MapModel(vit, params, patch)
        if opts.heads:
            raise ValueError("heads=True needs a ViT bundle: a map function returns one map per image")
        x = _checked_images(images, model.patch)
    else:
        if params is not None or patch is not None:
            raise TypeError("params= and patch= are for a map function; a ViT bundle has its own")
        engine.model_key(vit)
        model = vit
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
    static, values = split_options(opts)
    dev_params = engine.device_params(model, mesh)
    if mesh is not None:
        sharding = NamedSharding(mesh, PartitionSpec(IMAGES))
        x, keys = jax.device_put(x, sharding), jax.device_put(keys, sharding)
    boot = mesh.shape[BOOT] if mesh is not None and BOOT in mesh.axis_names else None
    steps = engine.loop_steps(opts, per_device, boot)
    out = engine.compiled(model, static, mesh)(dev_params, x, keys, values, steps)
    if per_device * n_dev != n:
        out = jax.tree.map(lambda a: a[:n], out)
    if "score_min" in out:
        _check_scores(vit, opts, out.pop("score_min"), out.pop("score_finite"))
    return ARBResult(**out, options=opts)


def _check_scores(map_fn: Any, opts: ARBOptions, score_min: Any, finite: Any) -> None:
    """One error naming a map function whose scores (observed or null) are not finite, or are
    negative where the scale is the log."""
    name = getattr(map_fn, "__qualname__", None) or type(map_fn).__name__
    finite, score_min = np.asarray(finite), np.asarray(score_min)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"map function {name} returned non-finite scores (NaN or inf) for image(s) {bad.tolist()}"
        )
    if opts.scale == "log" and (score_min < 0).any():
        raise ValueError(
            f"map function {name} returned negative scores (min {score_min.min():.3g}) and scale='log' "
            "takes their log: use scale='identity' for a signed map"
        )
