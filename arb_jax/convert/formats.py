"""Checkpoint layouts → the canonical Flax parameter tree, with the architecture read off shapes.

Containers (what wraps the state dict) are unwrapped first:

* ``state_dict``: a bare state dict (DINO hub, timm, DINOv2 hub, HF files);
* ``dino_training[teacher|student]``: DINO's ``checkpoint.pth`` (``teacher``, ``student``,
  ``optimizer``, ``args``, …); the chosen branch, its ``module.`` / ``backbone.`` prefixes stripped,
  the DINO projection head ``head.*`` dropped;
* ``lightning``: a Lightning ``.ckpt`` whose ``state_dict`` holds ``model.*`` (the backbone, any
  layout below) and ``linear.*`` (a linear classifier on the CLS feature → ``head``);
* ``model``: ``{"model": state_dict, ...}`` as many training scripts save.

Layouts (names of the tensors):

* ``dino``: DINO hub / timm names (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
  ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``; timm's linear
  ``head.weight`` of shape (K, D) → ``head``);
* ``dinov2``: the same plus ``blocks.N.ls{1,2}.gamma`` and ``register_tokens`` (``mask_token``
  dropped);
* ``hf_vit`` / ``hf_dinov2``: transformers ``ViTModel`` / ``Dinov2Model`` /
  ``Dinov2WithRegistersModel``, both under the names ``save_pretrained`` writes
  (``encoder.layer.N.attention.attention.query``, …) and under transformers 5's in-memory names
  (``layers.N.attention.q_proj`` for ViT, ``encoder.layer.N.attention.q_proj`` for DINOv2), with an
  optional ``vit.`` / ``dinov2.`` prefix; q, k, v are concatenated into ``qkv`` in q|k|v order;
  ``classifier.*`` → ``head``; ``pooler.*`` and ``embeddings.mask_token`` dropped.

The number of heads cannot be read off shapes: it is the ``heads`` argument when given, else
``num_attention_heads`` of an HF ``config.json``, else the DINO convention ``dim // 64``.

Integrity: two sources for one parameter (a flat ``blocks.0.norm1.weight`` beside a nested
``blocks`` → ``0`` → ``norm1`` → ``weight``, or a backbone key beside a head key of the same name)
and NaN / ±inf weights are a :class:`~arb_jax.convert.errors.CheckpointIntegrityError` naming the
tensors; a ``config.json`` field of the wrong type is a
:class:`~arb_jax.convert.errors.CheckpointFormatError`. Key names from the file are escaped in
every message, note and drop line (:func:`arb_jax.io.text.escape`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from arb_jax.convert.errors import (
    CheckpointArchitectureError,
    CheckpointFormatError,
    CheckpointIntegrityError,
    CheckpointKeysError,
    check_conversion,
)
from arb_jax.io.text import brief, escape
from arb_jax.models.config import CONFIGS, ViTConfig

__all__ = ["Conversion", "canonical_shapes", "flatten_params", "to_canonical", "unflatten"]

_DINO_TRAINING_BRANCHES = ("teacher", "student")


class Conversion(NamedTuple):
    """Result of :func:`to_canonical`.

    Attributes
    ----------
    config : ViTConfig
        The inferred :class:`ViTConfig`.
    params : dict
        The canonical tree (nested dicts of C-contiguous float32 numpy arrays).
    layout : str
        ``"dino"``, ``"dinov2"``, ``"hf_vit"`` or ``"hf_dinov2"``.
    container : str
        ``"state_dict"``, ``"dino_training[teacher]"``, ``"lightning"``, ``"model"``.
    dropped : list of str
        Known-but-unused tensors, ``"key (why)"`` or ``"prefix.* (n tensors, why)"``.
    notes : list of str
        Other facts worth recording (how heads were chosen, source dtypes, …).
    """

    config: ViTConfig
    params: dict[str, Any]
    layout: str
    container: str
    dropped: list[str]
    notes: list[str]


class _Entry(NamedTuple):
    path: tuple[str, ...]  # canonical path
    sources: tuple[str, ...]  # source keys, concatenated along axis 0 when several
    kind: str  # "id" | "linear" (torch (out, in) → (in, out)) | "conv" (OIHW → HWIO)


# --------------------------------------------------------------------------------------------
# Canonical tree


def canonical_shapes(config: ViTConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Shape of every leaf of the canonical tree of ``config``, keyed by its path."""
    D, H, p, M = config.dim, config.mlp_dim, config.patch, config.pos_grid
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {("cls_token",): (1, 1, D)}
    if config.n_registers:
        shapes[("reg_tokens",)] = (1, config.n_registers, D)
    shapes[("pos_embed",)] = (1, 1 + M * M, D)
    shapes[("patch_embed", "kernel")] = (p, p, 3, D)
    shapes[("patch_embed", "bias")] = (D,)
    for i in range(config.depth):
        b = f"block_{i}"
        block = {
            ("norm1", "scale"): (D,),
            ("norm1", "bias"): (D,),
            ("attn", "qkv", "kernel"): (D, 3 * D),
            ("attn", "qkv", "bias"): (3 * D,),
            ("attn", "proj", "kernel"): (D, D),
            ("attn", "proj", "bias"): (D,),
            ("norm2", "scale"): (D,),
            ("norm2", "bias"): (D,),
            ("mlp", "fc1", "kernel"): (D, H),
            ("mlp", "fc1", "bias"): (H,),
            ("mlp", "fc2", "kernel"): (H, D),
            ("mlp", "fc2", "bias"): (D,),
        }
        if config.layerscale:
            block[("ls1", "gamma")] = (D,)
            block[("ls2", "gamma")] = (D,)
        shapes.update({(b, *k): v for k, v in block.items()})
    shapes[("norm", "scale")] = (D,)
    shapes[("norm", "bias")] = (D,)
    if config.n_classes:
        shapes[("head", "kernel")] = (D, config.n_classes)
        shapes[("head", "bias")] = (config.n_classes,)
    return shapes


def flatten_params(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """``{("block_0", "attn", "qkv", "kernel"): leaf, …}`` of a nested params dict."""
    out: dict[tuple[str, ...], Any] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*path, str(k)))
        else:
            out[path] = node

    walk(params, ())
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """The nested dict of a flat {path tuple: leaf} mapping (the inverse of flattening a tree)."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return tree


# --------------------------------------------------------------------------------------------
# Containers


class _State:
    """Keys being converted, with the original key of each (for messages) and the drop log."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = dict(arrays)
        self.origin = {k: k for k in arrays}
        self.dropped: list[str] = []
        self.unexpected: list[str] = []
        self.notes: list[str] = []

    def take(self, prefix: str) -> _State:
        """A new state holding the keys under ``prefix`` (prefix stripped); removed from self."""
        sub = _State({})
        for k in [k for k in self.arrays if k.startswith(prefix)]:
            sub.arrays[k[len(prefix) :]] = self.arrays.pop(k)
            sub.origin[k[len(prefix) :]] = self.origin.pop(k)
        return sub

    def drop(self, prefix: str, why: str) -> None:
        keys = [k for k in self.arrays if k == prefix or k.startswith(prefix + ".")]
        if not keys:
            return
        for k in keys:
            self.arrays.pop(k)
        if len(keys) == 1 and keys[0] == prefix:
            self.dropped.append(f"{escape(self.origin.pop(prefix))} ({why})")
        else:
            shown = self.origin[keys[0]][: -len(keys[0])] + prefix
            for k in keys:
                self.origin.pop(k)
            self.dropped.append(f"{escape(shown)}.* ({len(keys)} tensors, {why})")

    def leftovers_unexpected(self) -> None:
        self.unexpected.extend(self.origin[k] for k in self.arrays)
        self.arrays.clear()
        self.origin.clear()


def _tops(keys) -> set[str]:
    return {k.split(".", 1)[0] for k in keys}


def _strip_common(state: _State, prefix: str) -> bool:
    if state.arrays and all(k.startswith(prefix) for k in state.arrays):
        state.arrays = {k[len(prefix) :]: v for k, v in state.arrays.items()}
        state.origin = {k[len(prefix) :]: v for k, v in state.origin.items()}
        return True
    return False


def _unwrap_model(state: _State) -> tuple[_State, _State]:
    """Split a model's state dict into (backbone, head) states; the rest is dropped/unexpected.

    ``module.`` (DDP) is stripped; under ``backbone.`` is DINO's MultiCropWrapper (its ``head.*``
    is the DINO projection head, dropped); under ``vit.`` / ``dinov2.`` is an HF task model (its
    ``classifier.*`` is a linear head).
    """
    while _strip_common(state, "module."):
        state.notes.append("stripped DDP prefix 'module.'")
    tops = _tops(state.arrays)
    head = _State({})
    if "backbone" in tops:
        backbone = state.take("backbone.")
        state.drop("head", "DINO projection head, used in training only")
    elif tops & {"vit", "dinov2"} and not tops & {"embeddings", "encoder"}:
        backbone = state.take("vit.") if "vit" in tops else state.take("dinov2.")
        head = state.take("classifier.")
    else:
        return state, head
    backbone.dropped += state.dropped
    backbone.notes += state.notes
    state.leftovers_unexpected()
    backbone.unexpected += state.unexpected
    return backbone, head


def _select(arrays: Mapping[str, np.ndarray], others: list[str], which: str) -> tuple[_State, _State, str]:
    """Unwrap the container around the model: (backbone state, head state, container name)."""
    root = _State(arrays)
    tops = _tops(arrays)
    ignored = sorted(_tops(others) - tops)
    if ignored:
        root.notes.append(f"non-tensor entries ignored: {', '.join(map(escape, ignored))}")

    def drop_rest(state: _State, why: str) -> None:
        for top in sorted(_tops(state.arrays)):
            state.drop(top, why)

    if tops & set(_DINO_TRAINING_BRANCHES):
        if which not in _DINO_TRAINING_BRANCHES:
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        if which not in tops:
            raise CheckpointKeysError(
                f"DINO training checkpoint without a {which!r} branch", missing=[f"{which}.*"]
            )
        model = root.take(which + ".")
        drop_rest(root, f"training state, not the {which}")
        container = f"dino_training[{which}]"
        backbone, head = _unwrap_model(model)
        if head.arrays:  # pragma: no cover - a DINO training branch has no classifier
            head.leftovers_unexpected()
            backbone.unexpected += head.unexpected
            head = _State({})
        if "head" in _tops(backbone.arrays):
            backbone.drop("head", "DINO projection head, used in training only")
    elif "state_dict" in tops:
        container = "lightning"
        sd = root.take("state_dict.")
        drop_rest(root, "Lightning training state")
        if "model" in _tops(sd.arrays):
            model = sd.take("model.")
            backbone, head = _unwrap_model(model)
            linear = sd.take("linear.")
            if linear.arrays:
                if head.arrays:
                    raise CheckpointKeysError(
                        "two classification heads: the backbone's and the Lightning 'linear.*'",
                        unexpected=[*head.origin.values(), *linear.origin.values()],
                    )
                head = linear
            sd.leftovers_unexpected()
            backbone.unexpected += sd.unexpected
        else:
            backbone, head = _unwrap_model(sd)
    elif "model" in tops and not tops & {"cls_token", "embeddings", "blocks", "encoder"}:
        container = "model"
        model = root.take("model.")
        drop_rest(root, "training state")
        backbone, head = _unwrap_model(model)
    else:
        container = "state_dict"
        backbone, head = _unwrap_model(root)
        root = _State({})
    backbone.dropped = root.dropped + backbone.dropped
    backbone.notes = root.notes + backbone.notes
    return backbone, head, container


# --------------------------------------------------------------------------------------------
# Layouts


_HF_ATTN = {
    "serialized": (
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
    ),
    "in_memory": ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
}
_HF_NORMS = {"hf_vit": ("layernorm_before", "layernorm_after"), "hf_dinov2": ("norm1", "norm2")}
_HF_MLP = {
    "serialized": ("intermediate.dense", "output.dense"),  # ViT as saved
    "fc": ("mlp.fc1", "mlp.fc2"),
}  # DINOv2, and ViT's transformers 5 in-memory names


class _Names(NamedTuple):
    layout: str
    naming: str
    cls: str
    reg: str
    pos: str
    patch: str  # without .weight/.bias
    block: str  # format string with {i}, ending in "."
    norm1: str
    qkv: tuple[str, ...]  # one (fused) or three (q, k, v) module names
    proj: str
    ls1: str
    norm2: str
    fc1: str
    fc2: str
    ls2: str
    norm: str
    head: str
    drops: tuple[tuple[str, str], ...]  # (key or prefix, why)


def _count(pattern: str, keys) -> int:
    rx = re.compile(pattern)
    return sum(bool(rx.match(k)) for k in keys)


def _names_for(keys: list[str]) -> _Names:
    """The naming scheme of a backbone state dict, detected from its keys."""
    if any(k.startswith(("embeddings.", "encoder.", "layers.", "layernorm.")) for k in keys):
        if _count(r"layers\.\d+\.", keys) > _count(r"encoder\.layer\.\d+\.", keys):
            block = "layers.{i}."
        else:
            block = "encoder.layer.{i}."
        attn = (
            "serialized"
            if _count(r".*\.attention\.attention\.query\.", keys) >= _count(r".*\.attention\.q_proj\.", keys)
            else "in_memory"
        )
        layout = (
            "hf_vit"
            if _count(r".*\.layernorm_before\.", keys) >= _count(r".*\.norm1\.", keys)
            else "hf_dinov2"
        )
        mlp = (
            "serialized"
            if _count(r".*\.intermediate\.dense\.", keys) > _count(r".*\.mlp\.fc1\.", keys)
            else "fc"
        )
        q, k, v, o = _HF_ATTN[attn]
        (n1, n2), (f1, f2) = _HF_NORMS[layout], _HF_MLP[mlp]
        return _Names(
            layout=layout,
            naming=(
                "HF names as written by save_pretrained"
                if attn == "serialized"
                else "transformers 5 in-memory names (q_proj/k_proj/v_proj)"
            ),
            cls="embeddings.cls_token",
            reg="embeddings.register_tokens",
            pos="embeddings.position_embeddings",
            patch="embeddings.patch_embeddings.projection",
            block=block,
            norm1=n1,
            qkv=(q, k, v),
            proj=o,
            ls1="layer_scale1.lambda1",
            norm2=n2,
            fc1=f1,
            fc2=f2,
            ls2="layer_scale2.lambda1",
            norm="layernorm",
            head="classifier",
            drops=(
                ("embeddings.mask_token", "mask token, used in training only"),
                ("pooler", "HF pooler, not part of the DINO backbone"),
            ),
        )
    dinov2 = any(re.match(r"blocks\.\d+\.ls1\.", k) for k in keys) or "register_tokens" in keys
    return _Names(
        layout="dinov2" if dinov2 else "dino",
        naming="DINO / timm names",
        cls="cls_token",
        reg="register_tokens",
        pos="pos_embed",
        patch="patch_embed.proj",
        block="blocks.{i}.",
        norm1="norm1",
        qkv=("attn.qkv",),
        proj="attn.proj",
        ls1="ls1.gamma",
        norm2="norm2",
        fc1="mlp.fc1",
        fc2="mlp.fc2",
        ls2="ls2.gamma",
        norm="norm",
        head="head",
        drops=(("mask_token", "mask token, used in training only"),),
    )


def _entries(config: ViTConfig, names: _Names) -> list[_Entry]:
    """Source keys of every canonical leaf of ``config`` under the naming scheme ``names``."""
    e = [_Entry(("cls_token",), (names.cls,), "id")]
    if config.n_registers:
        e.append(_Entry(("reg_tokens",), (names.reg,), "id"))
    e += [
        _Entry(("pos_embed",), (names.pos,), "id"),
        _Entry(("patch_embed", "kernel"), (f"{names.patch}.weight",), "conv"),
        _Entry(("patch_embed", "bias"), (f"{names.patch}.bias",), "id"),
    ]

    def linear(path, prefix, modules):
        return [
            _Entry((*path, "kernel"), tuple(f"{prefix}{m}.weight" for m in modules), "linear"),
            _Entry((*path, "bias"), tuple(f"{prefix}{m}.bias" for m in modules), "id"),
        ]

    def norm(path, src):
        return [
            _Entry((*path, "scale"), (f"{src}.weight",), "id"),
            _Entry((*path, "bias"), (f"{src}.bias",), "id"),
        ]

    for i in range(config.depth):
        b, s = f"block_{i}", names.block.format(i=i)
        e += norm((b, "norm1"), s + names.norm1)
        e += linear((b, "attn", "qkv"), s, names.qkv)
        e += linear((b, "attn", "proj"), s, (names.proj,))
        if config.layerscale:
            e.append(_Entry((b, "ls1", "gamma"), (s + names.ls1,), "id"))
        e += norm((b, "norm2"), s + names.norm2)
        e += linear((b, "mlp", "fc1"), s, (names.fc1,))
        e += linear((b, "mlp", "fc2"), s, (names.fc2,))
        if config.layerscale:
            e.append(_Entry((b, "ls2", "gamma"), (s + names.ls2,), "id"))
    e += norm(("norm",), names.norm)
    if config.n_classes:
        e += linear(("head",), "", ("head",))  # head state is renamed to head.weight/bias
    return e


def _source_shape(kind: str, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    if kind == "linear":  # canonical (in, out) ← n torch pieces (out/n, in)
        return (shape[1] // n, shape[0])
    if kind == "conv":  # canonical HWIO ← torch OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return (shape[0] // n, *shape[1:])


def _is_float(dtype: np.dtype) -> bool:
    """numpy floats and the ml_dtypes ones (bfloat16, float8_*)."""
    if dtype.kind == "c":
        return False
    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return True


def _nonfinite_counts(x: np.ndarray) -> str:
    """``"3 NaN, 1 +inf"`` for the non-finite values of a float tensor; ``""`` when all finite."""
    x = x.astype(np.float32)
    counts = [
        (int(np.isnan(x).sum()), "NaN"),
        (int(np.isposinf(x).sum()), "+inf"),
        (int(np.isneginf(x).sum()), "-inf"),
    ]
    return ", ".join(f"{n} {what}" for n, what in counts if n)


def _assemble(kind: str, pieces: list[np.ndarray]) -> np.ndarray:
    x = np.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]
    x = x.astype(np.float32)
    if kind == "linear":
        x = x.T
    elif kind == "conv":
        x = x.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------------------------
# Architecture inference


def _config_int(hf_config: Mapping[str, Any], field: str) -> int:
    """``hf_config[field]`` as a positive int (an int, or a float holding one)."""
    value = hf_config[field]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 31:
        raise CheckpointFormatError(
            f"config.json: {escape(field)} must be a positive int, got {brief(value)}"
        )
    return value


def _config_eps(hf_config: Mapping[str, Any], default: float) -> float:
    value = hf_config.get("layer_norm_eps", default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < float(value) < 1:
        raise CheckpointFormatError(
            f"config.json: layer_norm_eps must be a number in (0, 1), got {brief(value)}"
        )
    return float(value)


def _heads(dim: int, heads: int | None, hf_config: Mapping[str, Any] | None) -> tuple[int, str]:
    if heads is not None:
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"heads must be a positive int, got {heads!r}")
        return heads, "given"
    if hf_config and "num_attention_heads" in hf_config:
        return (
            _config_int(hf_config, "num_attention_heads"),
            f"{hf_config.get('_from', 'config.json')} num_attention_heads",
        )
    if dim % 64 or dim < 64:
        raise CheckpointArchitectureError(
            f"cannot infer the number of heads for dim={dim} (DINO convention dim // 64 needs a "
            "multiple of 64): pass heads="
        )
    return dim // 64, "DINO convention dim // 64"


def _shape(arrays: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...] | None:
    a = arrays.get(key)
    return tuple(a.shape) if a is not None and a.ndim == ndim else None


def _infer(
    state: _State,
    head: _State,
    names: _Names,
    heads: int | None,
    hf_config: Mapping[str, Any] | None,
    pos_interp: str | None = None,
) -> tuple[ViTConfig, list[str]]:
    a = state.arrays
    cls, patch_w = _shape(a, names.cls, 3), _shape(a, f"{names.patch}.weight", 4)
    norm_w = _shape(a, f"{names.norm}.weight", 1)
    dim = cls[-1] if cls else patch_w[0] if patch_w else norm_w[0] if norm_w else None
    if dim is None or patch_w is None:
        missing = [k for k in (names.cls, f"{names.patch}.weight") if k not in a]
        raise CheckpointKeysError(
            "no ViT backbone found (cannot read the width and patch size)",
            missing=missing or [f"{names.patch}.weight (4-D)"],
            unexpected=[state.origin[k] for k in sorted(a)],
        )
    if patch_w[1] != 3 or patch_w[2] != patch_w[3]:
        raise CheckpointKeysError(
            "patch embedding is not a square RGB convolution",
            misshaped=[f"{state.origin[names.patch + '.weight']}: expected (D, 3, p, p), got {patch_w}"],
        )
    block_rx = re.compile(re.escape(names.block).replace(r"\{i\}", r"(\d+)"))
    indices = {int(m.group(1)) for k in a if (m := block_rx.match(k))}
    if not indices:
        raise CheckpointKeysError("no transformer blocks found", missing=[names.block.format(i=0) + "*"])
    fc1 = _shape(a, names.block.format(i=0) + f"{names.fc1}.weight", 2)
    pos = _shape(a, names.pos, 3)
    pos_grid = 1
    if pos is not None:
        pos_grid = math.isqrt(max(pos[1] - 1, 0))
        if pos_grid < 1 or pos_grid * pos_grid != pos[1] - 1:
            raise CheckpointKeysError(
                "position embeddings are not a CLS position plus a square grid",
                misshaped=[f"{state.origin[names.pos]}: expected (1, 1 + M*M, {dim}), got {pos}"],
            )
    reg = _shape(a, names.reg, 3)
    head_w = _shape(head.arrays, "head.weight", 2)
    n_heads, heads_from = _heads(dim, heads, hf_config if names.layout.startswith("hf") else None)
    eps, notes = 1e-6, [f"heads={n_heads} ({heads_from})"]
    if hf_config and names.layout.startswith("hf"):
        eps = _config_eps(hf_config, eps)
        notes.append(f"eps={eps:g} ({hf_config.get('_from', 'config.json')} layer_norm_eps)")
        for field, value in (
            ("hidden_size", dim),
            ("patch_size", patch_w[2]),
            ("num_hidden_layers", max(indices) + 1),
        ):
            if field in hf_config and _config_int(hf_config, field) != value:
                raise CheckpointFormatError(
                    f"config.json says {field}={brief(hf_config[field])} but the tensors have {value}"
                )
    try:
        config = ViTConfig(
            patch=patch_w[2],
            dim=dim,
            depth=max(indices) + 1,
            heads=n_heads,
            mlp_dim=fc1[0] if fc1 else 4 * dim,
            pos_grid=pos_grid,
            n_registers=reg[1] if reg else 0,
            layerscale=any(k.endswith(names.ls1) for k in a if block_rx.match(k)),
            eps=eps,
            n_classes=head_w[0] if head_w else 0,
            pos_interp=pos_interp or "dino",
        )
    except ValueError as e:
        raise CheckpointArchitectureError(f"inferred architecture is invalid: {e}") from None
    for known in CONFIGS.values():  # the official architectures take their registry name
        if known.pos_interp == "dino" and known == ViTConfig(**{**config.to_dict(), "name": known.name}):
            config = known
            break
    return config, notes


# --------------------------------------------------------------------------------------------
# Entry point


def _head_state(head: _State, backbone: _State, names: _Names) -> _State:
    """Gather the linear head as ``head.weight`` / ``head.bias`` (from any of its sources)."""
    if names.layout in ("dino", "dinov2") and "head" in _tops(backbone.arrays):
        own = backbone.take("head.")
        if set(own.arrays) == {"weight", "bias"} and own.arrays["weight"].ndim == 2:
            if head.arrays:
                raise CheckpointKeysError(
                    "two classification heads", unexpected=[*own.origin.values(), *head.origin.values()]
                )
            head = own
            head.notes.append("timm-style linear head 'head.*' kept as the classifier")
        else:
            for k, v in own.arrays.items():  # put back and drop as the DINO projector
                backbone.arrays["head." + k] = v
                backbone.origin["head." + k] = own.origin[k]
            backbone.drop("head", "DINO projection head, used in training only")
    elif names.layout.startswith("hf") and "classifier" in _tops(backbone.arrays):
        if head.arrays:
            raise CheckpointKeysError(
                "two classification heads",
                unexpected=[o for k, o in backbone.origin.items() if k.startswith("classifier.")],
            )
        head = backbone.take("classifier.")
    out = _State({})
    for k, v in head.arrays.items():
        out.arrays["head." + k] = v
        out.origin["head." + k] = head.origin[k]
    out.notes = head.notes
    return out


def to_canonical(
    arrays: Mapping[str, np.ndarray],
    others: list[str] | None = None,
    *,
    which: str = "teacher",
    heads: int | None = None,
    hf_config: Mapping[str, Any] | None = None,
    pos_interp: str | None = None,
) -> Conversion:
    """Convert a flat checkpoint ``{dotted.key: array}`` to the canonical Flax tree.

    Parameters
    ----------
    arrays : mapping of str to numpy.ndarray
        Every tensor of the file under its dotted path (see ``readers.flatten_tree``).
    others : list of str or None
        Dotted paths of the file's non-tensor entries (only noted).
    which : {"teacher", "student"}
        The branch of a DINO training checkpoint, ``"teacher"`` (default) or ``"student"``.
    heads : int or None
        Number of attention heads; default from ``hf_config`` else ``dim // 64``.
    hf_config : mapping or None
        The HF ``config.json`` next to the file, if any (heads, LayerNorm eps, checks).
    pos_interp : {"dino", "size"} or None
        The position-embedding recipe of the source (``"dino"``, ``"size"``); default ``"dino"``.

    Returns
    -------
    Conversion
        A :class:`Conversion`; params are float32 whatever the source dtype.

    Raises
    ------
    CheckpointKeysError
        Missing, unexpected or mis-shaped keys (listed by source name).
    CheckpointIntegrityError
        Two sources for one parameter, or NaN / ±inf weights (named).
    CheckpointFormatError
        A ``config.json`` field of the wrong type, or disagreeing with the tensors.
    CheckpointArchitectureError
        (A ``ValueError``.) Heads not inferable, invalid architecture.
    ValueError
        Bad ``which`` / ``heads`` arguments.
    """
    backbone, head, container = _select(arrays, others or [], which)
    names = _names_for(list(backbone.arrays))
    for key, why in names.drops:
        backbone.drop(key, why)
    head = _head_state(head, backbone, names)
    config, notes = _infer(backbone, head, names, heads, hf_config, pos_interp)
    clash = sorted(set(backbone.arrays) & set(head.arrays))
    if clash:
        pairs = [f"{escape(backbone.origin[k])} and {escape(head.origin[k])}" for k in clash]
        raise CheckpointIntegrityError(
            f"two sources for one parameter: {'; '.join(pairs)}",
            tensors=[t for k in clash for t in (backbone.origin[k], head.origin[k])],
        )
    pool = {**backbone.arrays, **head.arrays}
    origin = {**backbone.origin, **head.origin}
    missing, misshaped, nonfinite, used = [], [], [], set()
    flat: dict[tuple[str, ...], np.ndarray] = {}
    entries = {entry.path: entry for entry in _entries(config, names)}
    for path, shape in canonical_shapes(config).items():
        entry = entries[path]
        want = _source_shape(entry.kind, shape, len(entry.sources))
        pieces = []
        for src in entry.sources:
            if src not in pool:
                missing.append(src)
                continue
            used.add(src)
            x = pool[src]
            if tuple(x.shape) != want:
                misshaped.append(f"{origin[src]}: expected {want}, got {tuple(x.shape)}")
            elif not _is_float(x.dtype):
                misshaped.append(f"{origin[src]}: expected a float tensor, got {x.dtype}")
            else:
                pieces.append(x)
        if len(pieces) == len(entry.sources):
            flat[path] = _assemble(entry.kind, pieces)
            if not np.isfinite(flat[path]).all():
                nonfinite += [
                    (origin[src], counts)
                    for src, x in zip(entry.sources, pieces, strict=True)
                    if (counts := _nonfinite_counts(x))
                ]
    unexpected = backbone.unexpected + head.unexpected + sorted(origin[k] for k in pool if k not in used)
    check_conversion(
        f"{names.layout} ViT (dim={config.dim}, depth={config.depth}, patch={config.patch})",
        missing,
        unexpected,
        misshaped,
        [name for name, _ in nonfinite],
        labels=[f"{escape(name)} ({counts})" for name, counts in nonfinite],
    )
    dtypes = sorted({str(a.dtype) for a in pool.values()})
    notes = (
        backbone.notes
        + head.notes
        + [f"tensor names: {names.naming}"]
        + notes
        + [f"source dtypes: {', '.join(dtypes)}"]
    )
    return Conversion(config, unflatten(flat), names.layout, container, backbone.dropped, notes)
