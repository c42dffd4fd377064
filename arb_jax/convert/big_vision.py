"""big_vision's ViT layout (``big_vision.models.vit``, its ``.npz`` checkpoints) → the canonical tree.

A big_vision checkpoint is an ``np.savez`` of the parameter tree with ``/``-joined names
(``utils.save_checkpoint`` / ``load_checkpoint_np``; also the ``vision_transformer`` repository's
AugReg files)::

    embedding/kernel (p, p, 3, D), embedding/bias (D,)          → patch_embed (HWIO as is)
    cls (1, 1, D)                                               → cls_token
    pos_embedding (1, M², D)                                    → pos_embed, a zero CLS row first
    Transformer/encoderblock_N/LayerNorm_0/{scale,bias}         → block_N/norm1
    Transformer/encoderblock_N/MultiHeadDotProductAttention_0/
        {query,key,value}/kernel (D, heads, d), bias (heads, d) → block_N/attn/qkv (D, 3D), q|k|v
        out/kernel (heads, d, D), out/bias (D,)                 → block_N/attn/proj (D, D)
    Transformer/encoderblock_N/LayerNorm_1                      → block_N/norm2
    Transformer/encoderblock_N/MlpBlock_0/Dense_0, Dense_1      → block_N/mlp/fc1, fc2
    Transformer/encoder_norm                                    → norm
    head/kernel (D, K), head/bias (K,)                          → head

big_vision adds the position embedding to the patches before it prepends ``cls``, so the CLS
position is zero; a pre-2022 file whose ``pos_embedding`` has 1 + M² rows (CLS position first,
also under ``Transformer/posembed_input``) is used as it is. A scanned checkpoint
(``Transformer/encoderblock/…`` with a leading depth axis) is split into blocks. The whole tree
may sit under ``params/`` (a training checkpoint: everything else, the optimizer state, is
dropped) or ``img/`` (a two-tower model's image tower; ``txt/`` dropped).

The heads are read off the query kernel's shape. big_vision's MLP uses Flax's ``nn.gelu``, the
tanh approximation (``ViTConfig.gelu = "tanh"``); its LayerNorms have epsilon 1e-6. Only the
CLS-token ViTs (``pool_type="tok"``) carry the CLS attention ARB needs: a checkpoint without
``cls`` (``pool_type`` "gap", "map" or "0") is refused, as are learned-free ``sincos2d``
position embeddings (nothing stored) and a ``pre_logits`` layer under the head (dropped together
with the head, noted). At other input sizes the position embeddings are resampled with DINO's
bicubic recipe (``pos_interp="dino"``), not big_vision's bilinear ``resample_posemb``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from arb_jax.convert.errors import (
    CheckpointArchitectureError,
    CheckpointKeysError,
    check_conversion,
)
from arb_jax.convert.formats import Conversion, canonical_shapes, unflatten
from arb_jax.io.text import escape
from arb_jax.models.config import ViTConfig

__all__ = ["big_vision_to_canonical", "looks_like_big_vision"]

_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/")
_ATTN = "MultiHeadDotProductAttention_0"


def looks_like_big_vision(keys: Any) -> bool:
    """Whether ``keys`` (flat names) are a big_vision / ``vision_transformer`` ViT's."""
    return any(
        k.startswith(("Transformer/", "params/Transformer/", "img/Transformer/")) for k in keys
    ) or any(k in ("embedding/kernel", "params/embedding/kernel") for k in keys)


def _unwrap(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str, list[str]]:
    """Strip a ``params/`` or ``img/`` level: (arrays, container, dropped)."""
    tops = {k.split("/", 1)[0] for k in arrays}
    for prefix, container, why in (
        ("params", "training_checkpoint", "training state, not the parameters"),
        ("img", "two_tower[img]", "the other tower of a two-tower model"),
    ):
        if prefix in tops and "Transformer" not in tops:
            inner = {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
            dropped = [
                f"{escape(t)}/* ({sum(k.startswith(t + '/') or k == t for k in arrays)} tensors, {why})"
                for t in sorted(tops - {prefix})
            ]
            return inner, container, dropped
    return dict(arrays), "npz", []


def _split_scan(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """``Transformer/encoderblock/…`` (depth, …) → ``Transformer/encoderblock_N/…``."""
    scan = "Transformer/encoderblock/"
    if not any(k.startswith(scan) for k in arrays):
        return arrays, []
    out = {k: v for k, v in arrays.items() if not k.startswith(scan)}
    depths = {v.shape[0] if v.ndim else 0 for k, v in arrays.items() if k.startswith(scan)}
    if len(depths) != 1 or 0 in depths:
        raise CheckpointKeysError(
            "scanned encoder block (Transformer/encoderblock/*) without one common leading depth axis",
            misshaped=[f"{k}: {v.shape}" for k, v in arrays.items() if k.startswith(scan)][:5],
        )
    for k, v in arrays.items():
        if k.startswith(scan):
            for i in range(v.shape[0]):
                out[f"Transformer/encoderblock_{i}/{k[len(scan) :]}"] = v[i]
    return out, [f"scanned encoder (lax.scan layout) split into {depths.pop()} blocks"]


def big_vision_to_canonical(arrays: Mapping[str, np.ndarray], *, heads: int | None = None) -> Conversion:
    """Convert a big_vision ViT checkpoint ``{"/"-joined name: array}`` to the canonical tree.

    Parameters
    ----------
    arrays : mapping of str to numpy.ndarray
        The npz's arrays under their names (``Transformer/encoderblock_0/LayerNorm_0/scale``, …).
    heads : int or None
        Attention heads; read off the query kernel (D, heads, d) when None, else checked
        against it.

    Returns
    -------
    Conversion
        ``layout="big_vision"``; params float32, ``config.gelu="tanh"``.

    Raises
    ------
    CheckpointArchitectureError
        (A ``ValueError``.) No ``cls`` token (a pooled ViT, ``pool_type`` "gap" / "map" / "0"), no
        stored position embeddings (``sincos2d``), a non-square grid, heads disagreeing with the
        shapes, an invalid architecture.
    CheckpointKeysError
        Missing, unexpected or mis-shaped tensors (by their names in the file).
    CheckpointIntegrityError
        NaN / ±inf weights.
    """
    a, container, dropped = _unwrap(arrays)
    a, notes = _split_scan(a)
    keys = set(a)
    if "embedding/kernel" not in keys or not any(_BLOCK.match(k) for k in keys):
        raise CheckpointKeysError(
            "no big_vision ViT found (no embedding/kernel or Transformer/encoderblock_N)",
            missing=[
                k for k in ("embedding/kernel", "Transformer/encoderblock_0/*") if k.split("*")[0] not in keys
            ],
        )
    if "cls" not in keys:
        pooled = "map" if any(k.startswith("MAPHead_0/") for k in keys) else "gap or 0"
        raise CheckpointArchitectureError(
            f"a big_vision ViT without a CLS token (pool_type {pooled!r}, not 'tok'): ARB needs the "
            "CLS query's attention, which this model does not have"
        )
    emb = a["embedding/kernel"]
    if emb.ndim != 4 or emb.shape[2] != 3 or emb.shape[0] != emb.shape[1]:
        raise CheckpointKeysError(
            "patch embedding is not a square RGB convolution",
            misshaped=[f"embedding/kernel: expected (p, p, 3, D), got {emb.shape}"],
        )
    p, D = int(emb.shape[0]), int(emb.shape[3])
    pos_key = next(
        (k for k in ("pos_embedding", "Transformer/posembed_input/pos_embedding") if k in keys), None
    )
    if pos_key is None:
        raise CheckpointArchitectureError(
            "no pos_embedding: sincos2d (computed, not stored) position embeddings are not supported"
        )
    pos = a[pos_key]
    rows = pos.shape[1] if pos.ndim == 3 else -1
    grid = math.isqrt(max(rows, 0))
    with_cls = grid * grid != rows
    if with_cls:
        grid = math.isqrt(max(rows - 1, 0))
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != D or grid < 1 or grid * grid + with_cls != rows:
        raise CheckpointArchitectureError(
            f"{pos_key} of shape {pos.shape} is not a square grid of positions (1, M*M, {D}) "
            f"(or (1, 1 + M*M, {D}) with the CLS position first)"
        )
    depth = 1 + max(int(m.group(1)) for k in keys if (m := _BLOCK.match(k)))
    q = a.get(f"Transformer/encoderblock_0/{_ATTN}/query/kernel")
    if q is None or q.ndim != 3 or q.shape[0] != D or q.shape[1] * q.shape[2] != D:
        raise CheckpointKeysError(
            "cannot read the heads off the query kernel",
            missing=[] if q is not None else [f"Transformer/encoderblock_0/{_ATTN}/query/kernel"],
            misshaped=[] if q is None else [f"Transformer/encoderblock_0/{_ATTN}/query/kernel: {q.shape}"],
        )
    n_heads = int(q.shape[1])
    if heads is not None and heads != n_heads:
        raise CheckpointArchitectureError(f"heads={heads} given but the query kernels have {n_heads} heads")
    fc1 = a.get("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")
    head = a.get("head/kernel")
    if "pre_logits/kernel" in keys:
        for k in sorted(k for k in keys if k.startswith(("pre_logits/", "head/"))):
            dropped.append(f"{k} (a pre_logits representation layer: the head cannot be kept)")
            keys.discard(k)
        head = None
    elif head is not None and (head.ndim != 2 or head.shape[0] != D):
        raise CheckpointKeysError("head kernel is not (D, K)", misshaped=[f"head/kernel: {head.shape}"])
    try:
        config = ViTConfig(
            patch=p,
            dim=D,
            depth=depth,
            heads=n_heads,
            mlp_dim=int(fc1.shape[-1]) if fc1 is not None and fc1.ndim == 2 else 4 * D,
            pos_grid=grid,
            n_classes=int(head.shape[1]) if head is not None else 0,
            gelu="tanh",
        )
    except ValueError as e:
        raise CheckpointArchitectureError(f"inferred architecture is invalid: {e}") from None

    d = D // n_heads
    used: set[str] = set()
    missing, misshaped, nonfinite = [], [], []
    flat: dict[tuple[str, ...], np.ndarray] = {}

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if key not in keys:
            missing.append(key)
            return None
        used.add(key)
        x = a[key]
        if tuple(x.shape) != shape:
            misshaped.append(f"{key}: expected {shape}, got {tuple(x.shape)}")
            return None
        if x.dtype.kind != "f" and not str(x.dtype).startswith(("bfloat16", "float")):
            misshaped.append(f"{key}: expected a float tensor, got {x.dtype}")
            return None
        x = np.asarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            nonfinite.append(key)
        return x

    def put(path: tuple[str, ...], x: np.ndarray | None, shape: tuple[int, ...] | None = None) -> None:
        if x is not None:
            flat[path] = np.ascontiguousarray(x.reshape(shape) if shape else x)

    put(("cls_token",), take("cls", (1, 1, D)))
    pe = take(pos_key, tuple(pos.shape))
    if pe is not None and not with_cls:
        pe = np.concatenate([np.zeros((1, 1, D), np.float32), pe], axis=1)
    put(("pos_embed",), pe)
    put(("patch_embed", "kernel"), take("embedding/kernel", (p, p, 3, D)))
    put(("patch_embed", "bias"), take("embedding/bias", (D,)))
    H = config.mlp_dim
    for i in range(depth):
        s, b = f"Transformer/encoderblock_{i}/", f"block_{i}"
        for src, dst in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            put((b, dst, "scale"), take(f"{s}{src}/scale", (D,)))
            put((b, dst, "bias"), take(f"{s}{src}/bias", (D,)))
        kernels = [take(f"{s}{_ATTN}/{n}/kernel", (D, n_heads, d)) for n in ("query", "key", "value")]
        biases = [take(f"{s}{_ATTN}/{n}/bias", (n_heads, d)) for n in ("query", "key", "value")]
        if all(k is not None for k in kernels):
            put((b, "attn", "qkv", "kernel"), np.concatenate([k.reshape(D, D) for k in kernels], axis=1))
        if all(x is not None for x in biases):
            put((b, "attn", "qkv", "bias"), np.concatenate([x.reshape(D) for x in biases]))
        put((b, "attn", "proj", "kernel"), take(f"{s}{_ATTN}/out/kernel", (n_heads, d, D)), (D, D))
        put((b, "attn", "proj", "bias"), take(f"{s}{_ATTN}/out/bias", (D,)))
        for src, dst, shape in (("Dense_0", "fc1", (D, H)), ("Dense_1", "fc2", (H, D))):
            put((b, "mlp", dst, "kernel"), take(f"{s}MlpBlock_0/{src}/kernel", shape))
            put((b, "mlp", dst, "bias"), take(f"{s}MlpBlock_0/{src}/bias", shape[1:]))
    put(("norm", "scale"), take("Transformer/encoder_norm/scale", (D,)))
    put(("norm", "bias"), take("Transformer/encoder_norm/bias", (D,)))
    if config.n_classes:
        put(("head", "kernel"), take("head/kernel", (D, config.n_classes)))
        put(("head", "bias"), take("head/bias", (config.n_classes,)))
    unexpected = sorted(keys - used)
    check_conversion(
        f"big_vision ViT (dim={D}, depth={depth}, patch={p})", missing, unexpected, misshaped, nonfinite
    )
    assert set(flat) == set(canonical_shapes(config)), "big_vision mapping incomplete"
    tree = unflatten(flat)
    dtypes = sorted({str(a[k].dtype) for k in used})
    notes += [
        f"heads={n_heads} (the query kernels' shape)",
        "GELU: tanh approximation (Flax nn.gelu, as big_vision)",
        "CLS position embedding: "
        + (
            "stored (pre-2022 layout)"
            if with_cls
            else "zero (big_vision adds pos_embedding before prepending cls)"
        ),
        "other input sizes: position embeddings resampled with DINO's bicubic recipe "
        "(not big_vision's bilinear)",
        f"source dtypes: {', '.join(dtypes)}",
    ]
    return Conversion(config, tree, "big_vision", container, dropped, notes)
