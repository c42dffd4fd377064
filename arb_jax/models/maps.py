"""Map functions: pure ``map_fn(params, images) -> scores`` of a ViT, one score per patch.

The contract every factory here returns (and ``check_map_output`` checks):

* ``params``: the canonical parameter tree of the model (``ViT.params``), ``pos_embed`` already on
  the images' patch grid (or on the stored grid, then resampled at trace time);
* ``images``: (n, H, W, 3) float32, ImageNet-normalised, NHWC, H and W multiples of the patch p;
* ``scores``: (n, h, w) float32 on the patch grid, h = H/p, w = W/p (a per-head variant returns
  (n, heads, h, w), as documented by its factory).

The functions are pure functions of arrays (no state, no host callbacks): they can be jitted,
vmapped, differentiated and used inside ``lax.scan``; CDAM calls ``jax.grad`` itself, so its
gradient is computed inside whatever ``jit`` holds the map.

Maps (docs/maps.md has the recipes, the references they are tested against and the measured
parity):

* ``cls_attention_map``: the CLS query's attention over the patch keys of one block (the last by
  default), head mean or per head;
* ``rollout_map``: attention rollout (Abnar & Zuidema 2020) over all blocks;
* ``cdam_map``: CDAM (Brocki & Chung 2023), the class (or concept) score's gradient with respect
  to the last block's tokens after its first LayerNorm, dotted with those tokens.

Each factory takes ``model``: a ``ViT`` bundle (its configuration and compute dtype), a
``VisionTransformer`` module, a ``ViTConfig`` or a registered configuration name (with ``dtype``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.models.bundle import ViT
from arb_jax.models.config import ViTConfig, get_config
from arb_jax.models.vit import ROLLOUT_FUSIONS, VisionTransformer, check_images
from arb_jax.registry import Registry

__all__ = ["MAPS", "SIGNED_MAPS", "MapFn", "cdam_map", "check_map_output", "cls_attention_map", "rollout_map"]

MapFn = Callable[[Any, jax.Array], jax.Array]
"""``map_fn(params, images (n, H, W, 3)) -> scores (n, h, w)`` float32."""

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _module(
    model: Any, dtype: str | None, extras: tuple[str, ...], fusion: str = "mean"
) -> VisionTransformer:
    """A ``VisionTransformer`` with ``extras`` for ``model`` (bundle, module, config or name)."""
    if isinstance(model, ViT):
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"dtype={dtype!r} given for a ViT bundle of dtype {model.dtype!r}")
        base = model.module
    elif isinstance(model, VisionTransformer):
        if dtype is not None:
            raise ValueError("dtype is taken from the VisionTransformer module; do not pass dtype")
        base = model
    elif isinstance(model, ViTConfig | str):
        config = get_config(model) if isinstance(model, str) else model
        dtype = "float32" if dtype is None else dtype
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        base = VisionTransformer(config, _DTYPES[dtype], "highest" if dtype == "float32" else None)
    else:
        raise TypeError(
            "model must be a ViT bundle, a VisionTransformer, a ViTConfig or a config name, "
            f"got {type(model).__name__}"
        )
    return VisionTransformer(base.config, base.dtype, base.precision, base.attention, extras, fusion)


def _named(fn: Callable, name: str, doc: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


def cls_attention_map(
    model: Any, *, block: int = -1, head: str | int = "mean", dtype: str | None = None
) -> MapFn:
    """The CLS query's attention over the patch keys of one block.

    Recipe: block ``block``'s softmax(q_cls·kᵀ/√d) over all T = 1 + R + h·w keys (CLS, the R
    registers, the patches), computed in float32; the CLS and register columns are dropped and
    the patch columns are not renormalised (a head's map sums to 1 minus its CLS and register
    attention); then the mean over heads (``head="mean"``), one head (``head=i``) or every head
    (``head="all"``). ``block=-1`` (the default) is the last block, the map ARB regularises
    (``ViT.cls_attention``), computed by the model's CLS-only last block; any other block forms
    its full attention explicitly.

    Parameters
    ----------
    model : ViT | VisionTransformer | ViTConfig | str
        the model (a bundle gives its configuration and compute dtype).
    block : int, default -1
        the block, 0 … L−1 or −L … −1 (Python indexing).
    head : "mean" | "all" | int, default "mean"
        head mean, every head, or head ``i`` (0 … heads−1).
    dtype : str | None, default None
        "float32" or "bfloat16" compute when ``model`` is a config or a name (default float32);
        a bundle's or module's own otherwise.

    Returns
    -------
    MapFn
        ``map_fn(params, images (n, H, W, 3)) -> (n, h, w)`` float32 (``head="all"``:
        (n, heads, h, w)), values in [0, 1].

    Raises
    ------
    ValueError
        ``block`` or ``head`` out of range, an unknown ``head`` string.
    """
    mod = _module(model, dtype, ())
    c = mod.config
    if not isinstance(block, int | np.integer) or isinstance(block, bool) or not -c.depth <= block < c.depth:
        raise ValueError(
            f"block must be an int in [-{c.depth}, {c.depth - 1}] (depth {c.depth}), got {block!r}"
        )
    block = int(block) % c.depth
    if isinstance(head, str):
        if head not in ("mean", "all"):
            raise ValueError(f"head must be 'mean', 'all' or an int in [0, {c.heads - 1}], got {head!r}")
    elif not isinstance(head, int | np.integer) or isinstance(head, bool) or not 0 <= head < c.heads:
        raise ValueError(f"head must be 'mean', 'all' or an int in [0, {c.heads - 1}], got {head!r}")
    if block != c.depth - 1:
        mod = _module(mod, None, ("block_attn",))

    def map_fn(params, images):
        h, w = check_images(images, c.patch)
        out = mod.apply({"params": params}, images)
        if block == c.depth - 1:
            attn = out["attn"]
        else:
            attn = out["block_attn"][:, block, :, 1 + c.n_registers :].reshape(-1, c.heads, h, w)
        if head == "mean":
            return jnp.mean(attn, axis=1)
        if head == "all":
            return attn
        return attn[:, int(head)]

    what = "per head" if head == "all" else "head mean" if head == "mean" else f"head {head}"
    return _named(
        map_fn,
        f"cls_attention_map(block={block}, head={head!r})",
        f"CLS attention of block {block} ({what}): (n, H, W, 3) → "
        + ("(n, heads, h, w)" if head == "all" else "(n, h, w)"),
    )


def rollout_map(model: Any, *, head_fusion: str = "mean", dtype: str | None = None) -> MapFn:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers").

    Recipe: for every block l = 1 … L, the head mean Ā_l of its attention over all
    T = 1 + R + h·w tokens (CLS, registers and patches, rows and columns), mixed with the residual
    connection, A'_l = 0.5·Ā_l + 0.5·I (the rows of Ā_l + I renormalised to sum to 1); the rollout
    is the product from the first block, R = A'_L ··· A'_2 · A'_1 (each block multiplies on the
    left); the map is the CLS row of R over the patch columns (the CLS and register columns
    dropped, not renormalised). Everything is float32. Only the CLS row of A'_L is needed, so the
    last block stays CLS-only; blocks 0 … L−2 form their full attention and the running
    (T, T) product costs L−2 matrix products of T×T per image. ``head_fusion="max"`` or
    ``"min"`` fuses the heads by their elementwise max / min instead of the mean (a common
    variant, e.g. jacobgil's ``vit-explain``); A'_l is then Ā_l + I with its rows renormalised.

    Parameters
    ----------
    model : ViT | VisionTransformer | ViTConfig | str
        the model (see ``cls_attention_map``).
    head_fusion : {"mean", "max", "min"}, default "mean"
        how each block's heads become one attention matrix.
    dtype : str | None, default None
        as ``cls_attention_map``.

    Returns
    -------
    MapFn
        ``map_fn(params, images (n, H, W, 3)) -> (n, h, w)`` float32, values in [0, 1].
    """
    if head_fusion not in ROLLOUT_FUSIONS:
        raise ValueError(f"head_fusion must be one of {ROLLOUT_FUSIONS}, got {head_fusion!r}")
    mod = _module(model, dtype, ("rollout",), head_fusion)
    c = mod.config

    def map_fn(params, images):
        h, w = check_images(images, c.patch)
        rollout = mod.apply({"params": params}, images)["rollout"]
        return rollout[:, 1 + c.n_registers :].reshape(-1, h, w)

    return _named(
        map_fn,
        f"rollout_map(head_fusion={head_fusion!r})",
        f"attention rollout over all blocks (head {head_fusion}): (n, H, W, 3) → (n, h, w)",
    )


def cdam_map(
    model: Any,
    *,
    class_index: int | None = None,
    concept: Any = None,
    dtype: str | None = None,
) -> MapFn:
    """CDAM, class-discriminative attention maps (Brocki & Chung 2023; the authors' ``get_CDAM``).

    Recipe: let z (n, T, D) be the last block's input tokens after its first LayerNorm
    (``norm1``, where the authors hook ``blocks[-1].norm1``) and s the score: the logit of class
    ``class_index`` of the model's linear head on the CLS feature (``class_index``), or the dot
    product ⟨f, c⟩ of the CLS feature f (after the final LayerNorm) with a concept vector c
    (``concept``). CDAM of patch i is ⟨z_i, ∂s/∂z_i⟩ = Σ_d z_id · ∂s/∂z_id, signed, for the patch
    tokens only (the CLS and register tokens dropped), not clipped or normalised. The gradient
    is ``jax.grad`` of s with respect to a zero offset added to z (so it flows through the last
    block's attention only, as the authors' backward hook on ``norm1``'s output), inside the
    same jit as the map.

    Parameters
    ----------
    model : ViT | VisionTransformer | ViTConfig | str
        the model (see ``cls_attention_map``); with ``class_index`` it needs a linear head
        (``config.n_classes > 0``: a fine-tuned model, or ``ViT.with_head``).
    class_index : int | None
        the class whose logit is explained, 0 … K−1.
    concept : array-like (D,) | None
        a concept vector (e.g. the mean CLS feature of images of the concept); exactly one of
        ``class_index`` and ``concept``.
    dtype : str | None, default None
        as ``cls_attention_map``.

    Returns
    -------
    MapFn
        ``map_fn(params, images (n, H, W, 3)) -> (n, h, w)`` float32, signed, in units of the
        score s.

    Raises
    ------
    ValueError
        neither or both of ``class_index`` and ``concept``; a class index out of range or a
        model without a head; a concept vector not (D,) or not finite.
    """
    mod = _module(model, dtype, ("last_normed",))
    c = mod.config
    if (class_index is None) == (concept is None):
        raise ValueError("cdam_map needs exactly one of class_index (a linear head's class) and concept")
    if class_index is not None:
        if not c.n_classes:
            raise ValueError(
                "cdam_map(class_index=...) needs a model with a linear head (config.n_classes > 0); "
                "attach one with ViT.with_head or pass concept="
            )
        ok = isinstance(class_index, int | np.integer) and not isinstance(class_index, bool)
        if not ok or not 0 <= class_index < c.n_classes:
            raise ValueError(f"class_index must be an int in [0, {c.n_classes - 1}], got {class_index!r}")
        k = int(class_index)

        def score(out):
            return out["logits"][:, k]

        what = f"class {k}"
    else:
        vec = np.asarray(concept, dtype=np.float32)
        if vec.shape != (c.dim,) or not np.isfinite(vec).all():
            raise ValueError(f"concept must be a finite vector of shape ({c.dim},), got shape {vec.shape}")
        const = jnp.asarray(vec)

        def score(out):
            return out["features"] @ const

        what = "a concept vector"
    first = 1 + c.n_registers

    def map_fn(params, images):
        h, w = check_images(images, c.patch)
        n = images.shape[0]

        def total(delta):
            out = mod.apply({"params": params}, images, delta)
            return jnp.sum(score(out)), out["last_normed"]

        delta = jnp.zeros((n, first + h * w, c.dim), jnp.float32)
        grad, normed = jax.grad(total, has_aux=True)(delta)
        cdam = jnp.sum(normed[:, first:] * grad[:, first:], axis=-1)
        return cdam.reshape(n, h, w)

    return _named(
        map_fn,
        f"cdam_map({'class_index=' + str(class_index) if class_index is not None else 'concept'})",
        f"CDAM of {what}: (n, H, W, 3) → (n, h, w)",
    )


def check_map_output(
    name: str, scores: Any, images: Any, patch: int, *, heads: int | None = None
) -> jax.Array:
    """Check a map function's output against the contract; at trace time for shapes and dtypes.

    Parameters
    ----------
    name : str
        the map function's name, for the message.
    scores : array (n, h, w) float32 (or (n, heads, h, w) when ``heads`` is given)
        what the map function returned (a tracer inside ``jit``).
    images : array (n, H, W, 3)
        the images it was given.
    patch : int
        the patch side p in pixels (h = H/p, w = W/p).
    heads : int | None, default None
        also accept the per-head shape (n, heads, h, w).

    Returns
    -------
    jax.Array
        a scalar bool, True when every score is finite (a tracer inside ``jit``: the caller
        reports it once the result is concrete).

    Raises
    ------
    ValueError
        not an array, a shape other than (n, h, w) (or (n, heads, h, w)), a dtype other than
        float32, or (outside ``jit``, values known) a non-finite score: one line naming the
        function and the shapes.
    """
    n, H, W = tuple(images.shape)[:3]
    want = [(n, H // patch, W // patch)] + ([(n, heads, H // patch, W // patch)] if heads else [])
    if not hasattr(scores, "shape") or not hasattr(scores, "dtype"):
        raise ValueError(
            f"map function {name!r} returned {type(scores).__name__}, not an array of shape "
            f"{want[0]} for images of shape {tuple(images.shape)}"
        )
    shape = tuple(scores.shape)
    if shape not in want:
        raise ValueError(
            f"map function {name!r} returned scores of shape {shape} for images of shape "
            f"{tuple(images.shape)} (patch {patch}); expected {' or '.join(map(str, want))}"
        )
    if scores.dtype != jnp.float32:
        raise ValueError(
            f"map function {name!r} returned scores of dtype {scores.dtype} (shape {shape}); expected float32"
        )
    finite = jnp.all(jnp.isfinite(scores))
    try:
        known_bad = not bool(finite)
    except jax.errors.ConcretizationTypeError:  # inside jit: the caller checks the flag
        known_bad = False
    if known_bad:
        bad = int(np.size(scores) - np.isfinite(np.asarray(scores)).sum())
        raise ValueError(
            f"map function {name!r} returned {bad} non-finite score(s) (NaN or ±inf) in scores of "
            f"shape {shape} for images of shape {tuple(images.shape)}"
        )
    return finite


MAPS: Registry = Registry("map", "(model, **options) -> map_fn(params, images (n, H, W, 3)) -> (n, h, w)")
MAPS.add(
    "cls_attention",
    cls_attention_map,
    "the CLS query's attention over the patches, head mean, of the last block or any `block` (the default)",
)
MAPS.add("rollout", rollout_map, "attention rollout over all blocks (Abnar & Zuidema 2020)")
MAPS.add(
    "cdam",
    cdam_map,
    "CDAM (Brocki & Chung 2023), signed: gradient of a class logit (`class_index`, a linear head) or of a "
    "concept similarity (`concept`) times the last block's normed tokens",
)
SIGNED_MAPS = frozenset({"cdam"})
"""Maps with signed scores: ARB on them takes ``scale="identity"``."""
