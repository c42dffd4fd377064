"""Bootstrap (null) images for ARB — Algorithm 1, step 2 (docs/method.md §2).

Every sampler maps one normalised image ``(H, W, C)`` float to ``n`` null images
``(n, H, W, C)`` of the same dtype:

- ``normal`` (parametric, the paper's default): channel c iid N(mean_c, (width·std_c)²), mean and
  std (ddof=1, as the reference code) of channel c of the image.
- ``pixel`` (non-parametric, Appendix F): the H·W pixels drawn with replacement, the C values of a
  pixel kept together.
- ``patch``: the p×p patches of the image shuffled (a permutation, no replacement).
- ``uniform``: channel c iid U(min_c, max_c) of the image.

The samplers are registered in ``SAMPLERS`` (`arb_jax.registry.Registry`) as one-sample
functions ``(key, image, *, width, patch) -> null image``; wherever a sampler name is accepted, a
function ``(key, image (H, W, C)) -> null image (H, W, C)`` of the user's is accepted too.

Bootstrap sample ``b`` is drawn with the key ``jax.random.fold_in(key, b)`` and depends on nothing
else, so ``sample_range`` can draw samples ``start .. start+count-1`` in chunks (``start`` may be
traced) and get exactly the images of the full draw. All samplers are pure functions of arrays:
they jit (``n`` static) and vmap over the image and the key.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from arb_jax.checks import as_int, one_image, one_key
from arb_jax.registry import Registry

__all__ = [
    "SAMPLERS",
    "check_sampler_output",
    "get_sampler",
    "normal",
    "patch",
    "pixel",
    "sample",
    "sample_range",
    "uniform",
]


# ----------------------------------------------------------------------------- validation


def _check_start(start: Any) -> Any:
    if isinstance(start, jax.core.Tracer):
        if not jnp.issubdtype(start.dtype, jnp.integer) or start.ndim != 0:
            raise TypeError(f"start must be an integer scalar, got {start.dtype}{start.shape}")
        return start
    if isinstance(start, bool):
        raise TypeError("start must be an int, got bool")
    try:
        start = operator.index(start)
    except TypeError:
        if (
            hasattr(start, "dtype")
            and getattr(start, "ndim", 1) == 0
            and jnp.issubdtype(start.dtype, jnp.integer)
        ):
            start = int(start)
        else:
            raise TypeError(f"start must be an int scalar, got {type(start).__name__}") from None
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    return start


def _check_width(width: Any) -> Any:
    if isinstance(width, int | float) and not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return width


def _check_patch(image: jax.Array, patch: Any) -> int:
    if patch is None:
        raise ValueError("the 'patch' sampler needs patch=<side of a patch in pixels>")
    patch = as_int(patch, "patch")
    H, W = image.shape[:2]
    if H % patch or W % patch:
        raise ValueError(f"image sides {H}x{W} must be multiples of patch={patch}")
    return patch


# ----------------------------------------------------------------------------- one sample


SAMPLERS: Registry = Registry("sampler", "(key, image (H, W, C)) -> null image (H, W, C)")


@SAMPLERS.register(
    "normal", "each pixel of channel c iid N(mean_c, (width·std_c)^2) of the image (the paper's)"
)
def _normal_one(key: jax.Array, image: jax.Array, *, width: Any = 1.0, patch: int | None = None) -> jax.Array:
    mean = image.mean(axis=(0, 1))
    std = image.std(axis=(0, 1), ddof=1)
    noise = jax.random.normal(key, image.shape, image.dtype)
    return mean + (width * std).astype(image.dtype) * noise


@SAMPLERS.register("pixel", "the image's pixels drawn with replacement, the channels of a pixel together")
def _pixel_one(key: jax.Array, image: jax.Array, *, width: Any = 1.0, patch: int | None = None) -> jax.Array:
    H, W, C = image.shape
    idx = jax.random.randint(key, (H * W,), 0, H * W)
    return image.reshape(H * W, C)[idx].reshape(H, W, C)


@SAMPLERS.register("patch", "the image's patches shuffled (a permutation)")
def _patch_one(key: jax.Array, image: jax.Array, *, width: Any = 1.0, patch: int | None = None) -> jax.Array:
    H, W, C = image.shape
    assert patch is not None  # checked by sample_range
    nh, nw = H // patch, W // patch
    tiles = image.reshape(nh, patch, nw, patch, C).transpose(0, 2, 1, 3, 4)
    tiles = tiles.reshape(nh * nw, patch, patch, C)
    tiles = tiles[jax.random.permutation(key, nh * nw)]
    return tiles.reshape(nh, nw, patch, patch, C).transpose(0, 2, 1, 3, 4).reshape(H, W, C)


@SAMPLERS.register("uniform", "each pixel of channel c iid U(min_c, max_c) of the image")
def _uniform_one(
    key: jax.Array, image: jax.Array, *, width: Any = 1.0, patch: int | None = None
) -> jax.Array:
    lo = image.min(axis=(0, 1))
    hi = image.max(axis=(0, 1))
    u = jax.random.uniform(key, image.shape, image.dtype)
    return jnp.minimum(lo + (hi - lo) * u, hi)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def check_sampler_output(sampler: Callable, key: jax.Array, image: jax.Array) -> None:
    """Raise one ValueError naming a user's sampler whose null image is not ``image``'s shape
    and dtype (at trace time: only shapes are looked at)."""
    out = jax.eval_shape(sampler, key, image)
    if getattr(out, "shape", None) != image.shape or getattr(out, "dtype", None) != image.dtype:
        got = f"{getattr(out, 'dtype', type(out).__name__)}{tuple(getattr(out, 'shape', ()))}"
        raise ValueError(
            f"sampler {_name(sampler)} returned {got} for an image of {image.dtype}{tuple(image.shape)}: "
            "a sampler maps (key, image (H, W, C)) to one null image of the same shape and dtype"
        )


def _one_fn(name: str | Callable, image: jax.Array, width: Any, patch: int | None) -> Callable:
    if isinstance(name, str):
        fn = SAMPLERS[name]
        return lambda k: fn(k, image, width=width, patch=patch)
    return lambda k: name(k, image)


@functools.partial(jax.jit, static_argnames=("name", "count", "patch"))
def _draw(
    name: str, key: jax.Array, image: jax.Array, start: Any, count: int, width: Any, patch: int | None
) -> jax.Array:
    """Samples start..start+count-1, sample b drawn with the key ``fold_in(key, b)``.

    Always compiled (inlined when the caller is jitted), so that eager and jitted calls run the
    same fused arithmetic (XLA contracts a·b + c to a fused multiply-add under jit) and agree
    bit for bit.
    """
    one = _one_fn(name, image, width, patch)
    index = start + jnp.arange(count, dtype=jnp.int32)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    return jax.vmap(one)(keys)


# ----------------------------------------------------------------------------- public API


def sample_range(
    name: str,
    key: jax.Array,
    image: jax.Array,
    start: int | jax.Array,
    count: int,
    *,
    width: float | jax.Array = 1.0,
    patch: int | None = None,
) -> jax.Array:
    """Bootstrap samples ``start .. start+count-1`` of the sampler ``name``.

    Equal, bit for bit, to ``sample(name, key, image, n)[start:start+count]`` for any n covering
    them: sample b uses only ``jax.random.fold_in(key, b)``.

    Parameters
    ----------
    name : str or callable
        "normal" | "pixel" | "patch" | "uniform" (``SAMPLERS``), or a function
        ``(key, image (H, W, C)) -> null image (H, W, C)``.
    key : jax.Array
        one PRNG key (``jax.random.key`` or raw ``PRNGKey``).
    image : jax.Array
        (H, W, C) float, normalised pixels.
    start : int | jax.Array
        index of the first sample, int >= 0 (may be a traced int32 scalar).
    count : int
        number of samples, static int >= 1.
    width : float | jax.Array, default 1.0
        ``normal`` only, multiplier of each channel's std (> 0).
    patch : int | None, default None
        ``patch`` only, side in pixels of the shuffled patches; must divide H and W.
    Returns
    -------
    jax.Array
        (count, H, W, C), the image's dtype.
    """
    SAMPLERS.check(name)
    key = one_key(key)
    image = one_image(image)
    count = as_int(count, "count")
    start = _check_start(start)
    if callable(name):
        check_sampler_output(name, key, image)
    if name == "normal":
        width = _check_width(width)
        if image.shape[0] * image.shape[1] < 2:
            raise ValueError("the 'normal' sampler needs at least 2 pixels (std with ddof=1)")
    patch = _check_patch(image, patch) if name == "patch" else None
    return _draw(name, key, image, start, count, width, patch)


def normal(key: jax.Array, image: jax.Array, n: int, width: float = 1.0) -> jax.Array:
    """Parametric bootstrap: (n, H, W, C), channel c iid N(mean_c, (width·std_c)²).

    mean_c and std_c (ddof=1) are those of channel c of ``image`` (H, W, C) float; ``width``
    (> 0, default 1) widens or narrows the null (paper, Appendix E).
    """
    return sample_range("normal", key, image, 0, n, width=width)


def pixel(key: jax.Array, image: jax.Array, n: int) -> jax.Array:
    """Non-parametric pixel bootstrap: (n, H, W, C), H·W pixels of ``image`` drawn with replacement.

    The C values of a pixel stay together (paper, Appendix F).
    """
    return sample_range("pixel", key, image, 0, n)


def patch(key: jax.Array, image: jax.Array, n: int, patch: int) -> jax.Array:
    """Patch shuffle: (n, H, W, C), the ``patch``×``patch`` tiles of ``image`` permuted.

    A permutation (no replacement) of the (H/patch)·(W/patch) tiles; H and W must be multiples
    of ``patch``.
    """
    return sample_range("patch", key, image, 0, n, patch=patch)


def uniform(key: jax.Array, image: jax.Array, n: int) -> jax.Array:
    """Uniform bootstrap: (n, H, W, C), channel c iid U(min_c, max_c) of channel c of ``image``."""
    return sample_range("uniform", key, image, 0, n)


_N_SAMPLE: dict[str, Callable[..., jax.Array]] = {
    "normal": normal,
    "pixel": pixel,
    "patch": patch,
    "uniform": uniform,
}


def get_sampler(name: str) -> Callable[..., jax.Array]:
    """The n-sample function of the sampler ``name`` (``normal(key, image, n, width)``, ...)."""
    SAMPLERS.check(name)
    if not isinstance(name, str):
        raise ValueError(SAMPLERS.unknown(name))
    return _N_SAMPLE[name]


def sample(
    name: str, key: jax.Array, image: jax.Array, n: int, *, width: float = 1.0, patch: int | None = None
) -> jax.Array:
    """(n, H, W, C) bootstrap images of ``image`` (H, W, C) by the sampler ``name``.

    ``width`` is used by ``normal`` only and ``patch`` by ``patch`` only (required there); each
    sampler ignores the other's option, so a pipeline may pass both.
    """
    return sample_range(name, key, image, 0, n, width=width, patch=patch)
