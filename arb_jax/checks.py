"""Argument checks shared across modules: one wording for a bad count or size."""

from __future__ import annotations

import operator
from typing import Any, Literal, overload


@overload
def as_int(value: Any, name: str, minimum: int = 1, *, allow_none: Literal[False] = False) -> int: ...


@overload
def as_int(value: Any, name: str, minimum: int = 1, *, allow_none: bool) -> int | None: ...


def as_int(value: Any, name: str, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` as a Python int >= ``minimum`` (None passes when ``allow_none``).

    TypeError for what is not an integer (bool, float, a traced value: counts set array shapes);
    ValueError for an integer below ``minimum``. Numpy integers are accepted.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        if hasattr(value, "aval"):  # a JAX tracer: the count is not known while tracing
            raise TypeError(
                f"{name} must be a static Python int (it sets an array shape; mark "
                "it static under jit), got a traced value"
            ) from None
        raise TypeError(
            f"{name} must be an integer{' or None' if allow_none else ''}, got "
            f"{type(value).__name__} {value!r}"
        ) from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def one_key(key: Any) -> Any:
    """``key`` as one JAX PRNG key: typed (``jax.random.key``, shape ()) or raw uint32 (1-D,
    ``jax.random.PRNGKey``). TypeError for anything else, ValueError for a batch of keys."""
    import jax
    import jax.numpy as jnp

    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(
            f"key must be a JAX PRNG key (jax.random.key or jax.random.PRNGKey), got {type(key).__name__}"
        )
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise ValueError(
                f"key must be a single PRNG key (shape ()), got a key array of shape {key.shape}"
            )
    elif key.dtype != jnp.uint32 or key.ndim != 1:
        raise TypeError(
            "key must be a JAX PRNG key (jax.random.key, or a raw uint32 "
            f"jax.random.PRNGKey), got dtype {key.dtype} shape {key.shape}"
        )
    return key


def one_image(image: Any, min_pixels: int = 1) -> Any:
    """``image`` as one (H, W, C) float JAX array with at least ``min_pixels`` pixels.

    TypeError unless it is an array of floats; ValueError for another rank or too few pixels.
    """
    import jax.numpy as jnp

    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise TypeError(f"image must be an array (H, W, C), got {type(image).__name__}")
    image = jnp.asarray(image)
    if image.ndim != 3:
        raise ValueError(
            f"image must have shape (H, W, C) (one image, channels last), got shape {image.shape}"
        )
    if not jnp.issubdtype(image.dtype, jnp.floating):
        raise TypeError(f"image must be a float array (normalised pixels), got dtype {image.dtype}")
    need = max(1, min_pixels)
    if image.shape[2] < 1 or image.shape[0] * image.shape[1] < need:
        raise ValueError(f"image must have at least {need} pixel(s) and a channel, got shape {image.shape}")
    return image
