"""Position-embedding interpolation exactly as DINO / DINOv2 and HF ``Dinov2Model`` do it.

Two recipes resample the stored M×M grid of position embeddings to the h×w patch grid of the
input; a model's ``ViTConfig.pos_interp`` names the one it was trained or exported with:

``"dino"`` — the official DINO and DINOv2 code::

    torch.nn.functional.interpolate(grid, scale_factor=((h + 0.1) / M, (w + 0.1) / M),
                                    mode="bicubic", align_corners=False)

  Because ``scale_factor`` is given, output index ``i`` samples the source coordinate
  ``(i + 0.5) / scale_factor - 0.5`` (not ``(i + 0.5)·M/h - 0.5``).

``"size"`` — HF transformers' ``Dinov2Model.interpolate_pos_encoding`` (and an ONNX ``Resize``
  with ``sizes``, ``mode="cubic"``, ``coordinate_transformation_mode="half_pixel"``,
  ``cubic_coeff_a=-0.75``, as ``torch.onnx.export`` writes it)::

    torch.nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)

  Output index ``i`` samples ``(i + 0.5)·M/h - 0.5``.

Both use PyTorch's bicubic kernel, Keys' cubic convolution with a = -0.75, with out-of-range taps
clamped to the border, and no antialiasing. The resampling is separable, so here it is two small
matrices applied as two matmuls. ``jax.image.resize`` uses another kernel (a = -0.5,
antialiasing when downsampling) and matches neither.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # PyTorch's cubic convolution coefficient
_DINO_OFFSET = 0.1  # DINO's "+ 0.1" against floating-point error in the output size
RECIPES = ("dino", "size")  # see the module docstring


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution weights (a = -0.75) of taps -1, 0, +1, +2 at fraction t: (n, 4)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=128)
def bicubic_matrix(
    n_in: int, n_out: int, scale_factor: float | None, coord_dtype: str = "float64"
) -> np.ndarray:
    """Matrix of PyTorch's 1-D bicubic resampling (``align_corners=False``).

    Parameters
    ----------
    n_in : int
        Input length.
    n_out : int
        Output length; ``floor(n_in * scale_factor)`` when ``scale_factor`` is given.
    scale_factor : float or None
        The ``scale_factor`` passed to ``torch.nn.functional.interpolate`` (source coordinate
        ``(i + 0.5) / scale_factor - 0.5``); None for ``size=n_out`` (source coordinate
        ``(i + 0.5)·n_in/n_out - 0.5``).
    coord_dtype : {"float64", "float32"}
        Precision of the source coordinates. PyTorch computes them in the precision of its
        input, so "float32" reproduces its float32 kernel closest.

    Returns
    -------
    numpy.ndarray
        (n_out, n_in) float64 W with ``out = W @ in`` (read-only, cached).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bicubic_matrix needs positive sizes, got n_in={n_in}, n_out={n_out}")
    if scale_factor is not None and math.floor(n_in * scale_factor) != n_out:
        raise ValueError(
            f"scale_factor {scale_factor} maps {n_in} to {math.floor(n_in * scale_factor)}, not {n_out}"
        )
    if coord_dtype not in ("float32", "float64"):
        raise ValueError(f"coord_dtype must be 'float32' or 'float64', got {coord_dtype!r}")
    # Source coordinates as PyTorch computes them, in the input's dtype: scale = 1 / scale_factor
    # when a scale factor is given, else n_in / n_out.
    ct = np.dtype(coord_dtype).type
    scale = ct(1.0 / scale_factor) if scale_factor is not None else ct(n_in) / ct(n_out)
    src = scale * (np.arange(n_out, dtype=ct) + ct(0.5)) - ct(0.5)
    base = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src.astype(np.float64) - base, 0.0, 1.0)
    taps = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    matrix = np.zeros((n_out, n_in), np.float64)
    np.add.at(matrix, (np.repeat(np.arange(n_out), 4), taps.ravel()), _cubic_weights(t).ravel())
    matrix.setflags(write=False)
    return matrix


def interpolate_pos_embed(pos_embed: jax.Array, grid_hw: tuple[int, int], recipe: str = "dino") -> jax.Array:
    """Resample position embeddings from the stored M×M grid to an h×w patch grid.

    Parameters
    ----------
    pos_embed : array, (1, 1 + M·M, D) float
        The CLS position first, then the grid row-major.
    grid_hw : (int, int)
        (h, w), the patch grid of the input (rows, columns).
    recipe : {"dino", "size"}
        ``"dino"``: DINO's ``scale_factor=(h + 0.1)/M``; ``"size"``: HF ``Dinov2Model``'s
        ``size=(h, w)`` (see the module docstring).

    Returns
    -------
    array, (1, 1 + h·w, D)
        In the dtype of ``pos_embed``; the CLS position unchanged. When (h, w) == (M, M) the
        input itself is returned, as DINO and HF do. A numpy input is resampled on the host in
        float64 (then cast back: the correctly rounded result); a JAX array (or a tracer inside
        ``jit``) with two float32 matmuls at HIGHEST precision.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown position-embedding recipe {recipe!r}; known: {', '.join(RECIPES)}")
    shape = tuple(np.shape(pos_embed))
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, 1 + M*M, D), got {shape}")
    M = math.isqrt(shape[1] - 1) if shape[1] >= 1 else 0
    if M < 1 or shape[1] - 1 != M * M:
        raise ValueError(f"pos_embed has {shape[1]} tokens; expected 1 + M*M for a square M×M grid")
    if len(grid_hw) != 2 or not all(isinstance(s, int | np.integer) and s >= 1 for s in grid_hw):
        raise ValueError(f"grid_hw must be two positive ints (h, w), got {grid_hw!r}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if (h, w) == (M, M):
        return pos_embed
    dtype = np.dtype(pos_embed.dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"pos_embed must be a float array, got dtype {dtype}")
    coord = "float64" if dtype == np.float64 else "float32"
    if recipe == "dino":
        rows = bicubic_matrix(M, h, (h + _DINO_OFFSET) / M, coord)
        cols = bicubic_matrix(M, w, (w + _DINO_OFFSET) / M, coord)
    else:
        rows, cols = bicubic_matrix(M, h, None, coord), bicubic_matrix(M, w, None, coord)
    if isinstance(pos_embed, np.ndarray):  # host: float64 arithmetic, result in the input dtype
        grid = pos_embed[0, 1:].astype(np.float64).reshape(M, M, shape[2])
        grid = np.einsum("wn,hnd->hwd", cols, np.einsum("hm,mnd->hnd", rows, grid))
        out = grid.reshape(1, h * w, shape[2]).astype(dtype)
        return np.concatenate([pos_embed[:, :1], out], axis=1)
    pos_embed = jnp.asarray(pos_embed)
    hi = jax.lax.Precision.HIGHEST
    grid = pos_embed[0, 1:].reshape(M, M, shape[2])
    grid = jnp.einsum("hm,mnd->hnd", jnp.asarray(rows, dtype), grid, precision=hi)
    grid = jnp.einsum("wn,hnd->hwd", jnp.asarray(cols, dtype), grid, precision=hi)
    return jnp.concatenate([pos_embed[:, :1], grid.reshape(1, h * w, shape[2])], axis=1)
