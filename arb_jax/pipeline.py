"""ARB end to end: bootstrap null images → ViT attention → z, p, lfdr, π₀ → shrunk maps.

One jit-compiled function per (model, options): for every image it draws ``n_boot`` null images
(SPEC §2), runs the ViT on them in chunks of ``boot_chunk`` (so memory stays bounded for large B),
and computes every statistic on device (SPEC §3–4). Bootstrap sample ``b`` of image ``i`` depends
only on ``(key_i, b)``, so the result does not depend on the chunk size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arb_jax import bootstrap, regularize, stats

PVALUE_METHODS = ("upper", "plus_one", "two_sided", "attnreg")
PI0_METHODS = ("smoother", "bootstrap")
LFDR_NULLS = ("theoretical", "empirical")


@dataclasses.dataclass(frozen=True)
class ARBOptions:
    """Static options of one ARB run (hashable: one compiled function per distinct value).

    n_boot: bootstrap images per input (B). boot_chunk: null forwards run this many at a time.
    sampler / width: SPEC §2. pvalue: SPEC §3 eq. 4 variant. alpha / beta: p- and lfdr-thresholds.
    lfdr_pi0: π₀ in the lfdr (1.0 as the paper; "estimate" = Storey's π₀ on the attnreg p-values, as
    the reference code). lfdr_null: "theoretical" N(0,1) or "empirical" (fitted to z_null).
    pi0_method: Storey estimator for π₀-thresholding. z_th: the z-threshold every method starts from.
    heads: also return per-head maps. return_null: also return the bootstrap z (N, B, h, w).
    """

    n_boot: int = 1
    boot_chunk: int | None = None
    sampler: str = "normal"
    width: float = 1.0
    pvalue: str = "upper"
    alpha: float = 0.3
    beta: float = 0.3
    lfdr_pi0: float | str = 1.0
    lfdr_null: str = "theoretical"
    pi0_method: str = "smoother"
    z_th: float = 0.0
    heads: bool = False
    return_null: bool = False

    def __post_init__(self):
        if not isinstance(self.n_boot, int | np.integer) or self.n_boot < 1:
            raise ValueError(f"n_boot must be an integer >= 1, got {self.n_boot!r}")
        if self.boot_chunk is not None and (
            not isinstance(self.boot_chunk, int | np.integer) or self.boot_chunk < 1
        ):
            raise ValueError(f"boot_chunk must be an integer >= 1 or None, got {self.boot_chunk!r}")
        if self.sampler not in bootstrap.SAMPLERS:
            raise ValueError(
                f"unknown sampler {self.sampler!r}; choose one of {sorted(bootstrap.SAMPLERS)}"
            )
        if self.pvalue not in PVALUE_METHODS:
            raise ValueError(f"unknown p-value method {self.pvalue!r}; choose one of {PVALUE_METHODS}")
        if self.pi0_method not in PI0_METHODS:
            raise ValueError(f"unknown pi0 method {self.pi0_method!r}; choose one of {PI0_METHODS}")
        if self.lfdr_null not in LFDR_NULLS:
            raise ValueError(f"unknown lfdr null {self.lfdr_null!r}; choose one of {LFDR_NULLS}")
        if isinstance(self.lfdr_pi0, str):
            if self.lfdr_pi0 != "estimate":
                raise ValueError(f"lfdr_pi0 must be a number in (0, 1] or 'estimate', got {self.lfdr_pi0!r}")
        elif not 0.0 < float(self.lfdr_pi0) <= 1.0:
            raise ValueError(f"lfdr_pi0 must lie in (0, 1], got {self.lfdr_pi0!r}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width!r}")
        for name in ("alpha", "beta"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")

    @property
    def chunk(self) -> int:
        return min(self.boot_chunk or self.n_boot, self.n_boot)


@flax.struct.dataclass
class ARBResult:
    """Per-image ARB output; every array has a leading image axis N and a (h, w) patch grid.

    attn: (N, h, w) head-mean CLS attention (probabilities over patch keys).
    attn_heads: (N, heads, h, w) or None. z, p, lfdr: (N, h, w). z_null: (N, B, h, w) or None.
    pi0: (N,) Storey's π₀ of the p-values. mu0, sigma0: (N,) mean and std of the log null scores.
    maps: shrunk maps by method: "z", "p", "lfdr", "pi0", "soft" → (N, h, w).
    options: the ARBOptions that produced it (static).
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


def arb_statistics(attn: jax.Array, attn_null: jax.Array, opts: ARBOptions) -> dict[str, Any]:
    """Statistics and shrunk maps of one image from its observed and null maps.

    attn: (h, w) observed head-mean map; attn_null: (B, h, w) bootstrap maps. Returns a dict of
    z, p, lfdr (h, w), z_null (B, h, w), pi0, mu0, sigma0 (scalars) and maps (dict of (h, w)).
    """
    shape = attn.shape
    z, z_null, mu0, sigma0 = stats.zstat(attn.reshape(-1), attn_null.reshape(attn_null.shape[0], -1))
    zn = z_null.reshape(-1)
    p = stats.empirical_pvalues(z, zn, method=opts.pvalue)
    pi0 = stats.pi0est(p, method=opts.pi0_method).pi0
    if opts.lfdr_pi0 == "estimate":
        lfdr_pi0 = stats.pi0est(stats.empirical_pvalues(z, zn, method="attnreg"),
                                method=opts.pi0_method).pi0
    else:
        lfdr_pi0 = float(opts.lfdr_pi0)
    lfdr = stats.local_fdr(z, pi0=lfdr_pi0, null=opts.lfdr_null,
                           z_null=zn if opts.lfdr_null == "empirical" else None)
    maps = regularize.shrink_all(attn.reshape(-1), z, p, lfdr, pi0,
                                 alpha=opts.alpha, beta=opts.beta, z_th=opts.z_th)
    return {
        "z": z.reshape(shape), "p": p.reshape(shape), "lfdr": lfdr.reshape(shape),
        "z_null": z_null.reshape(attn_null.shape), "pi0": pi0, "mu0": mu0, "sigma0": sigma0,
        "maps": {k: v.reshape(shape) for k, v in maps.items()},
    }


def _one_image(apply_fn: Callable, params: Any, image: jax.Array, key: jax.Array,
               opts: ARBOptions, patch: int) -> dict[str, Any]:
    """ARB for one image (H, W, 3): observed forward, chunked null forwards, statistics."""
    heads_obs = apply_fn(params, image[None])["attn"][0]                    # (heads, h, w)
    attn = heads_obs.mean(0)
    chunk = opts.chunk
    n_chunks = math.ceil(opts.n_boot / chunk)

    def null_chunk(c):
        imgs = bootstrap.sample_range(opts.sampler, key, image, c * chunk, chunk,
                                      width=opts.width, patch=patch)
        return apply_fn(params, imgs)["attn"].mean(1)                       # (chunk, h, w)

    null = jax.lax.map(null_chunk, jnp.arange(n_chunks))
    null = null.reshape((n_chunks * chunk,) + attn.shape)[: opts.n_boot]
    out = arb_statistics(attn, null, opts)
    out["attn"] = attn
    out["attn_heads"] = heads_obs if opts.heads else None
    if not opts.return_null:
        out["z_null"] = None
    return out


_COMPILED: dict[tuple[int, ARBOptions], Callable] = {}


def _compiled(vit: Any, opts: ARBOptions) -> Callable:
    """One jitted ``(params, images (N,H,W,3), keys (N,)) -> dict`` per model function and options."""
    cache_key = (id(vit.apply), opts)
    fn = _COMPILED.get(cache_key)
    if fn is None:
        def one(params, img, k):
            return _one_image(vit.apply, params, img, k, opts, vit.config.patch)
        fn = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))
        _COMPILED[cache_key] = fn
    return fn


def image_keys(key: jax.Array, n: int) -> jax.Array:
    """(n,) per-image keys: image ``i`` gets ``fold_in(key, i)``; a batch of n keys passes through."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim == 0:
            return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        if key.shape == (n,):
            return key
    elif key.shape == (2,):  # legacy uint32 key
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    elif key.shape == (n, 2):
        return key
    raise ValueError(f"key must be one PRNG key or one per image ({n}), got shape {key.shape}")


def check_images(images: Any, image_size: tuple[int, int] | None = None) -> jax.Array:
    """Validate a batch of normalised images: (N, H, W, 3) float, finite, optional exact size."""
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images must be an array (N, H, W, 3), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, 3), got shape {tuple(images.shape)}")
    if images.shape[-1] != 3:
        raise ValueError(f"images must have 3 (RGB) channels last, got shape {tuple(images.shape)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"images must be float (ImageNet-normalised), got dtype {images.dtype}; "
            "use arb_jax.load_images / arb_jax.images.prepare"
        )
    if images.shape[0] < 1:
        raise ValueError("images is an empty batch")
    if image_size is not None and tuple(images.shape[1:3]) != tuple(image_size):
        raise ValueError(
            f"images are {images.shape[1]}x{images.shape[2]} but the model was loaded for "
            f"{image_size[0]}x{image_size[1]}; load it with image_size=({images.shape[1]}, "
            f"{images.shape[2]}) or resize the images"
        )
    if not isinstance(images, jax.core.Tracer) and not bool(jnp.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    return jnp.asarray(images)


def image_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``Mesh`` with axis ``"images"`` over ``devices`` (default: this host's devices)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return Mesh(np.array(devices), ("images",))


def _shard_batch(mesh: Mesh, *arrays: jax.Array) -> tuple[int, list[jax.Array]]:
    """Pad the leading axis to a multiple of the mesh size and place it sharded over "images"."""
    n = arrays[0].shape[0]
    size = mesh.devices.size
    pad = (-n) % size
    sharding = NamedSharding(mesh, PartitionSpec("images"))
    out = []
    for a in arrays:
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
        out.append(jax.device_put(a, sharding))
    return n, out


def regularize_attention(vit: Any, images: Any, key: jax.Array, n_boot: int = 1,
                         sampler: str = "normal", *, mesh: Mesh | None = None,
                         **options: Any) -> ARBResult:
    """Attention Regularization by the Bootstrap for a batch of images.

    vit: a loaded ``ViT`` bundle (``arb_jax.load_vit``). images: (N, H, W, 3) float32,
    ImageNet-normalised, at ``vit.image_size``. key: one PRNG key (image i uses fold_in(key, i))
    or one key per image. n_boot: bootstrap images per input (B). sampler: "normal" | "pixel" |
    "patch" | "uniform". mesh: a ``Mesh`` with an ``"images"`` axis to shard the batch over
    (default: all local devices when there are several; images are padded to a multiple of the
    mesh size and the padding dropped). Other options: see ``ARBOptions`` (width, pvalue, alpha,
    beta, lfdr_pi0, lfdr_null, pi0_method, z_th, heads, return_null, boot_chunk).
    Returns an ``ARBResult``; the same key gives a bit-identical result on any number of devices.
    """
    opts = ARBOptions(n_boot=n_boot, sampler=sampler, **options)
    x = check_images(images, tuple(vit.image_size))
    keys = image_keys(key, x.shape[0])
    if mesh is None and jax.local_device_count() > 1 and x.shape[0] > 1:
        mesh = image_mesh()
    if mesh is not None:
        n, (x, keys) = _shard_batch(mesh, x, keys)
        params = jax.device_put(vit.params, NamedSharding(mesh, PartitionSpec()))
        out = _compiled(vit, opts)(params, x, keys)
        out = jax.tree.map(lambda a: a[:n], out)
    else:
        out = _compiled(vit, opts)(vit.params, x, keys)
    return ARBResult(**out, options=opts)
