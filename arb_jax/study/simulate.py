"""Noise injection for the simulation study (docs/method.md §5; paper §3.2 and Appendices B, G).

A region of interest (ROI) of an image is replaced by Gaussian noise whose per-channel mean and
standard deviation match the image; a regulariser should then shrink the attention the ViT pays to
the ROI. Two ROI shapes:

- `square_noise`: a ``size`` x ``size`` square fully inside the image (the paper's main study,
  ``size = 100`` px at 488 x 488);
- `diffuse_noise`: the ``size**2`` largest values of a smooth random field (Appendix G), i.e.
  several small clusters of the same total area.

The attention maps live on the patch grid; `roi_patch_weights` turns a pixel ROI into the fraction
of each patch it covers, which is what `mean_z_in_roi` (the Appendix B filter) and `arb_jax.study.metrics`
use to compute pixel-level quantities exactly on the patch grid.

All functions are pure and key-driven; ``size``, ``patch`` and ``at`` must be Python integers when
the function is wrapped in `jax.jit` from outside (mark them static), or may be left as they are:
the public functions already jit their array work.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from arb_jax.checks import as_int, one_image, one_key

__all__ = [
    "square_noise",
    "diffuse_noise",
    "smooth_field",
    "roi_patch_weights",
    "mean_z_in_roi",
    "passes_z_filter",
]


# --------------------------------------------------------------------------- validation helpers


def _channel_noise(key: jax.Array, image: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """iid N(mean_c, std_c**2) per channel c of ``image`` (std ddof=1), shape ``shape + (C,)``."""
    mean = jnp.mean(image, axis=(0, 1))
    std = jnp.std(image, axis=(0, 1), ddof=1)
    eps = jax.random.normal(key, (*shape, image.shape[-1]), dtype=image.dtype)
    return mean + std * eps


# --------------------------------------------------------------------------- square noise


@functools.partial(jax.jit, static_argnames=("size",))
def _square_noise(key, image, size, at):
    height, width, channels = image.shape
    key_pos, key_noise = jax.random.split(key)
    if at is None:
        key_row, key_col = jax.random.split(key_pos)
        row = jax.random.randint(key_row, (), 0, height - size + 1)
        col = jax.random.randint(key_col, (), 0, width - size + 1)
    else:
        row, col = (jnp.asarray(a, jnp.int32) for a in at)
    noise = _channel_noise(key_noise, image, (size, size))
    out = jax.lax.dynamic_update_slice(image, noise, (row, col, jnp.int32(0)))
    roi = jax.lax.dynamic_update_slice(
        jnp.zeros((height, width), bool), jnp.ones((size, size), bool), (row, col)
    )
    return out, roi


def square_noise(
    key: ArrayLike,
    image: ArrayLike,
    size: int,
    at: tuple[ArrayLike, ArrayLike] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Replaces a ``size`` x ``size`` square of ``image`` by per-channel Gaussian noise.

    The square's top-left corner is uniform over all positions that keep it fully inside the
    image (row in ``[0, H - size]``, col in ``[0, W - size]``), or fixed by ``at``. Its pixels are
    iid N(mean_c, std_c**2) for each channel c, with mean_c and std_c (ddof=1, as the reference
    code's ``torch.std``) of that channel of the whole input image.

    Randomness: ``key`` is split in two, the first key places the square, the second draws the
    noise; so ``at`` set to the corner the random call chose gives the same image.

    Parameters
    ----------
    key : ArrayLike
        a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
    image : ArrayLike
        (H, W, C) float array, normalised (e.g. ImageNet mean/std).
    size : int
        side of the square in pixels, 1 <= size <= min(H, W).
    at : tuple[ArrayLike, ArrayLike] | None, default None
        optional fixed top-left corner ``(row, col)`` in pixels. Python ints are checked to keep
        the square inside; traced values are clamped into range (``lax.dynamic_update_slice``).

    Returns
    -------
    tuple[jax.Array, jax.Array]
        ``(noisy, roi)``: the (H, W, C) image, same dtype, and the (H, W) bool ROI mask (the square).
    """
    key = one_key(key)
    image = one_image(image, min_pixels=2)  # a std with ddof=1
    size = as_int(size, "size")
    height, width, _ = image.shape
    if size > min(height, width):
        raise ValueError(f"square of size {size} does not fit in an image of {height}x{width}")
    if at is not None:
        if len(at) != 2:
            raise ValueError(f"at must be a (row, col) pair, got {at!r}")
        for value, name, extent in ((at[0], "row", height), (at[1], "col", width)):
            if isinstance(value, jax.core.Tracer):
                continue
            if isinstance(value, float) or not jnp.issubdtype(jnp.asarray(value).dtype, jnp.integer):
                raise TypeError(f"at {name} must be an integer, got {value!r}")
            if not 0 <= int(value) <= extent - size:
                raise ValueError(
                    f"at {name}={int(value)} puts the square of size {size} outside the image "
                    f"(valid: 0..{extent - size})"
                )
        at = tuple(at)
    return _square_noise(key, image, size, at)


# --------------------------------------------------------------------------- diffuse noise


@jax.jit
def _smooth_field(field, cluster_scale):
    height, width = field.shape
    fy = jnp.fft.fftfreq(height)[:, None]
    fx = jnp.fft.fftfreq(width)[None, :]
    gain = jnp.exp(-(fx**2 + fy**2) * cluster_scale**2)
    smooth = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(field) * gain)).astype(field.dtype)
    smooth = smooth - jnp.min(smooth)
    return smooth / jnp.max(smooth)


def smooth_field(field: ArrayLike, cluster_scale: float = 20.0) -> jax.Array:
    """Low-pass filters a 2-D field in Fourier space and min-max normalises it to [0, 1].

    The filter is ``exp(-(fx**2 + fy**2) * cluster_scale**2)`` with fx, fy the `numpy.fft.fftfreq`
    frequencies (cycles per pixel) of the columns and rows: a periodic Gaussian blur of standard
    deviation ``cluster_scale / (pi * sqrt(2))`` pixels (about 4.5 px for the default 20).

    Parameters
    ----------
    field : ArrayLike
        (H, W) float array, e.g. iid N(0, 1).
    cluster_scale : float, default 20.0
        c >= 0, in pixels; larger c gives larger clusters.

    Returns
    -------
    jax.Array
        (H, W) array of the input's dtype, min 0 and max 1 (NaN if the smoothed field is constant).
    """
    field = jnp.asarray(field)
    if field.ndim != 2:
        raise ValueError(f"field must have shape (H, W), got shape {field.shape}")
    if not jnp.issubdtype(field.dtype, jnp.floating):
        raise TypeError(f"field must be a floating array, got dtype {field.dtype}")
    if not isinstance(cluster_scale, jax.core.Tracer) and not float(cluster_scale) >= 0:
        raise ValueError(f"cluster_scale must be >= 0, got {cluster_scale!r}")
    return _smooth_field(field, jnp.asarray(cluster_scale, field.dtype))


@functools.partial(jax.jit, static_argnames=("size",))
def _diffuse_noise(key, image, size, cluster_scale):
    height, width, _ = image.shape
    key_field, key_noise = jax.random.split(key)
    white = jax.random.normal(key_field, (height, width), dtype=image.dtype)
    field = _smooth_field(white, cluster_scale)
    _, top = jax.lax.top_k(field.reshape(-1), size * size)
    roi = jnp.zeros(height * width, bool).at[top].set(True).reshape(height, width)
    noise = _channel_noise(key_noise, image, (height, width))
    return jnp.where(roi[..., None], noise, image), roi


def diffuse_noise(
    key: ArrayLike,
    image: ArrayLike,
    size: int,
    cluster_scale: float = 20.0,
) -> tuple[jax.Array, jax.Array]:
    """Replaces ``size**2`` clustered pixels of ``image`` by per-channel Gaussian noise (App. G).

    A field of iid N(0, 1) values of the image's size is smoothed by `smooth_field`; the
    ``size**2`` pixels with the largest values (exactly that many, ties broken by position) form
    the ROI, which gets the same noise as `square_noise`: iid N(mean_c, std_c**2) per channel c,
    mean and std (ddof=1) of that channel of the input image. So the ROI has the area of a
    ``size`` x ``size`` square, spread over several smooth blobs.

    Randomness: ``key`` is split in two, the first key draws the field, the second the noise.

    Parameters
    ----------
    key : ArrayLike
        a PRNG key.
    image : ArrayLike
        (H, W, C) float array, normalised.
    size : int
        the ROI has ``size**2`` pixels; 1 <= size**2 <= H * W.
    cluster_scale : float, default 20.0
        Fourier smoothing scale c in pixels (reference: 20).

    Returns
    -------
    tuple[jax.Array, jax.Array]
        ``(noisy, roi)``: the (H, W, C) image, same dtype, and the (H, W) bool ROI mask.
    """
    key = one_key(key)
    image = one_image(image, min_pixels=2)  # a std with ddof=1
    size = as_int(size, "size")
    height, width, _ = image.shape
    if size * size > height * width:
        raise ValueError(f"size**2 = {size * size} exceeds the {height}x{width} image's pixels")
    if not isinstance(cluster_scale, jax.core.Tracer) and not float(cluster_scale) >= 0:
        raise ValueError(f"cluster_scale must be >= 0, got {cluster_scale!r}")
    return _diffuse_noise(key, image, size, jnp.asarray(cluster_scale, image.dtype))


# --------------------------------------------------------------------------- ROI on the patch grid


def roi_patch_weights(roi_mask: ArrayLike, patch: int) -> jax.Array:
    """Fraction of each p x p patch's pixels that lie in the ROI.

    Parameters
    ----------
    roi_mask : ArrayLike
        (H, W) bool (or 0/1) pixel mask; H and W multiples of ``patch``.
    patch : int
        the ViT patch size p in pixels.

    Returns
    -------
    jax.Array
        (H/p, W/p) float32 in [0, 1]: (number of ROI pixels in the patch) / p**2.
    """
    roi_mask = jnp.asarray(roi_mask)
    patch = as_int(patch, "patch")
    if roi_mask.ndim != 2:
        raise ValueError(f"roi_mask must have shape (H, W), got shape {roi_mask.shape}")
    height, width = roi_mask.shape
    if height % patch or width % patch:
        raise ValueError(f"roi_mask shape {roi_mask.shape} is not a multiple of patch {patch}")
    blocks = roi_mask.astype(jnp.float32).reshape(height // patch, patch, width // patch, patch)
    return jnp.mean(blocks, axis=(1, 3))


def _check_grid_pair(a: jax.Array, weights: jax.Array, name: str) -> None:
    if a.ndim < 2 or a.shape[-2:] != weights.shape or weights.ndim != 2:
        raise ValueError(
            f"{name} must have shape (..., h, w) matching roi weights (h, w); "
            f"got {name} {a.shape} and weights {weights.shape}"
        )


def mean_z_in_roi(z: ArrayLike, weights: ArrayLike) -> jax.Array:
    """Mean of the (nearest-upsampled) z map over the ROI pixels (Appendix B filter statistic).

    Equals the mean of z over the ROI pixels of the pixel map, since each patch holds
    ``weights * p**2`` ROI pixels: sum(weights * z) / sum(weights).

    Parameters
    ----------
    z : ArrayLike
        (..., h, w) z-scores on the patch grid.
    weights : ArrayLike
        (h, w) ROI fraction per patch (`roi_patch_weights`).

    Returns
    -------
    jax.Array
        (...) float mean z in the ROI (NaN if the ROI is empty).
    """
    z = jnp.asarray(z)
    weights = jnp.asarray(weights)
    _check_grid_pair(z, weights, "z")
    return jnp.sum(z * weights, axis=(-2, -1)) / jnp.sum(weights)


def passes_z_filter(mean_z: ArrayLike, bound: float | None = 1.0) -> jax.Array:
    """Appendix B filter: keeps perturbed images with ``|mean z in ROI| <= bound``.

    Parameters
    ----------
    mean_z : ArrayLike
        (...) mean z in the ROI (`mean_z_in_roi`).
    bound : float | None, default 1.0
        the bound (reference: 1.0); None switches the filter off (Appendix D).

    Returns
    -------
    jax.Array
        (...) bool, True where the image is kept (NaN never passes an active filter).
    """
    mean_z = jnp.asarray(mean_z)
    if bound is None:
        return jnp.ones(mean_z.shape, bool)
    if not isinstance(bound, jax.core.Tracer) and not (math.isfinite(float(bound)) and float(bound) >= 0):
        raise ValueError(f"bound must be a finite number >= 0 or None, got {bound!r}")
    return jnp.abs(mean_z) <= bound
