"""ONNX ViT exports → ``{dotted.torch.name: array}``, read with the ``onnx`` protobuf parser.

The graph is never executed: only its initializers (the weights) and the names, op types and
attributes of the nodes that consume them are read. What ``torch.onnx.export`` writes for an HF
``ViTModel`` / ``Dinov2Model`` (alone or inside a larger model) is mapped back to the names the
module had in PyTorch, so :mod:`weights_convert.formats` converts it like any HF state dict:

* named initializers keep their names (``backbone.encoder.layer.0.norm1.weight``, …);
* a linear layer's weight is often an unnamed initializer (``onnx::MatMul_1966``) holding the
  transposed (in, out) matrix; it is named after the node that consumes it
  (``/backbone/encoder/layer.0/attention/attention/key/MatMul`` →
  ``backbone.encoder.layer.0.attention.attention.key.weight``) and transposed back to PyTorch's
  (out, in). A weight consumed by ``Gemm`` is transposed unless ``transB=1``; one consumed through
  a ``Transpose`` node is already (out, in);
* position embeddings that the exporter split into a constant CLS part (1, 1, D) and a patch-grid
  part (1, M², D) (HF interpolates them in the traced graph) are joined again into
  ``<prefix>embeddings.position_embeddings`` (1, 1 + M², D).

Besides the weights, the graph tells what shapes cannot: the number of attention heads (the
head-split ``Reshape`` of the first block), the LayerNorm epsilon, and how the position
embeddings are resampled (a ``Resize`` with ``sizes`` is HF's ``size=(h, w)`` recipe). Tensors
outside the ViT backbone (a decoder, a task head other than ``classifier``) are left out, with a
note naming them.
"""

from __future__ import annotations

import ast
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from arb_jax.convert.errors import CheckpointFormatError, CheckpointKeysError

__all__ = ["OnnxWeights", "looks_like_onnx", "read_onnx"]

_BACKBONE_MARKERS = ("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight")
_HEADLESS_PREFIXES = ("", "vit.", "dinov2.")  # HF models whose task head formats.py reads itself


class OnnxWeights(NamedTuple):
    """What :func:`read_onnx` found in an ONNX file.

    Attributes
    ----------
    arrays : dict of str to numpy.ndarray
        The backbone's tensors under their PyTorch names (prefix before ``embeddings.`` removed),
        linear weights in PyTorch's (out, in) layout.
    heads : int or None
        Attention heads read from the graph, None when no head-split ``Reshape`` was found.
    eps : float or None
        The first LayerNorm's epsilon, None when not found.
    pos_interp : str or None
        ``"size"`` when the graph resamples position embeddings with a ``Resize`` given
        ``sizes`` (HF ``Dinov2Model``), ``"dino"`` with ``scales``, None without a ``Resize``.
    ignored : list of str
        ``"prefix.* (n tensors, why)"`` for each group of tensors left out.
    notes : list of str
        Other facts worth recording (producer, opset, prefix removed, how names were mapped).
    """

    arrays: dict[str, np.ndarray]
    heads: int | None
    eps: float | None
    pos_interp: str | None
    ignored: list[str]
    notes: list[str]


def looks_like_onnx(head: bytes) -> bool:
    """Whether the first bytes of a file look like a serialized ONNX ``ModelProto``.

    A ``ModelProto`` starts with field 1 (``ir_version``, a small varint: tag byte 0x08) and goes
    on with another field's tag; a zip (``PK``), a pickle (0x80) or safetensors (a length) do not.
    """
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 20:
        return False
    return head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x52, 0x72)


def _load_model(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(os.fspath(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointFormatError(
            f"{path}: not a readable ONNX model (truncated or corrupt protobuf: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
        ) from None
    if not model.HasField("graph") or not model.graph.initializer:
        raise CheckpointFormatError(f"{path}: an ONNX file without weights (no initializers)")
    return model


def _external_array(t: Any, path: Path) -> np.ndarray:
    """The data of an initializer stored in an external file, read with plain file I/O.

    The file must lie inside the model's folder (after resolving links), and the declared
    offset and length must fit in it and match the tensor's shape and dtype: a reference
    outside the folder, to a missing file, or past its end is refused.
    """
    from onnx import helper

    entries = {e.key: e.value for e in t.external_data}
    where = entries.get("location", "")
    folder = path.parent.resolve()
    target = (path.parent / where).resolve()
    if not where or folder not in target.parents:
        raise CheckpointFormatError(
            f"{path}: initializer {t.name!r} points to external data {where!r} outside the model "
            "folder; refused (external data must sit in the .onnx file's folder)"
        )
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        offset, length = int(entries.get("offset", 0)), entries.get("length")
    except (KeyError, TypeError, ValueError):
        raise CheckpointFormatError(
            f"{path}: initializer {t.name!r} has an unreadable external-data entry"
        ) from None
    shape = tuple(int(d) for d in t.dims)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if length is not None and int(length) != nbytes or offset < 0:
        raise CheckpointFormatError(
            f"{path}: initializer {t.name!r}: external data of {length} bytes at offset {offset} "
            f"does not hold a {dtype} tensor of shape {shape} ({nbytes} bytes)"
        )
    if not target.is_file() or target.stat().st_size < offset + nbytes:
        raise CheckpointFormatError(
            f"{path}: initializer {t.name!r}: external data file {where!r} is missing or ends "
            f"before byte {offset + nbytes}"
        )
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read(nbytes)
    return np.frombuffer(data, dtype).reshape(shape).copy()


def _scope(node: Any) -> str:
    """The module path of the PyTorch module an op came from.

    The TorchScript exporter names nodes after it (``/backbone/encoder/layer.0/attention/
    attention/key/MatMul`` → ``backbone.encoder.layer.0.attention.attention.key``); the
    ``torch.export`` exporter (``dynamo=True``) records it in the node's ``pkg.torch.onnx.
    name_scopes`` metadata (``[..., 'encoder.layer.0.attention.q_proj', 'linear']``).
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and len(scopes) >= 2 and isinstance(scopes[-2], str):
                return scopes[-2]
            return ""
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) if node.name.startswith("/") else ""


_TOP_LEVEL_PARAMS = ("cls_token", "pos_embed", "register_tokens", "mask_token")


def _is_param_name(name: str) -> bool:
    """Whether an initializer's name is a PyTorch parameter path (``encoder.layer.0.norm1.weight``)
    rather than one the exporter made up (``onnx::MatMul_1966``, ``val_30``, ``expand``)."""
    if name.startswith(("onnx::", "/")) or "::" in name:
        return False
    return "." in name or name in _TOP_LEVEL_PARAMS


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Output name → value of every ``Constant`` node (small shape and scalar constants)."""
    from onnx import numpy_helper

    out = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _read_heads(
    graph: Any, consts: dict[str, np.ndarray], arrays: dict[str, np.ndarray], dim: int
) -> int | None:
    """Heads from the first head-split ``Reshape`` of a q/k/v output: a shape ending (heads,
    head_dim) with heads·head_dim = dim, or (-1, head_dim)."""
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "Reshape" or "attention" not in (_scope(node) or node.name) or len(node.input) < 2:
            continue
        shape_src = node.input[1]
        values: list[int] = []
        if shape_src in consts or shape_src in arrays:
            values = [int(v) for v in np.ravel(consts.get(shape_src, arrays.get(shape_src)))]
        elif shape_src in producers and producers[shape_src].op_type == "Concat":
            for i in producers[shape_src].input:
                values.append(int(np.ravel(consts[i])[0]) if i in consts and consts[i].size == 1 else -1)
        if len(values) != 4 or values[3] <= 0 or dim % values[3]:
            continue
        if values[2] * values[3] == dim:  # (batch, tokens, heads, head_dim)
            return values[2]
        if values[2] == -1:  # (batch, tokens, -1, head_dim), as transformers 5 writes it
            return dim // values[3]
    return None


def _read_eps(graph: Any, consts: dict[str, np.ndarray]) -> float | None:
    """Epsilon of the first LayerNorm: ``LayerNormalization``'s attribute, or the constant added
    to the variance in a decomposed LayerNorm (``ReduceMean → Add(eps) → Sqrt``)."""
    consumers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            return _shortest(_attr(node, "epsilon", 1e-5))
        if node.op_type == "Add" and any(c.op_type == "Sqrt" for c in consumers[node.output[0]]):
            for i in node.input:
                if i in consts and consts[i].size == 1:
                    return _shortest(consts[i].ravel()[0])
    return None


def _shortest(value: Any) -> float:
    """The shortest decimal that rounds to the same float32 (9.99999997e-07 → 1e-06)."""
    return float(np.format_float_scientific(np.float32(value), unique=True))


def _read_pos_interp(graph: Any) -> str | None:
    """``"size"`` or ``"dino"`` from the graph's position-embedding ``Resize``; without one (an
    export at the native size), ``"size"`` for an HF ``Dinov2Model`` (the recipe its code runs),
    else None."""
    for node in graph.node:
        if node.op_type == "Resize" and "embeddings" in (_scope(node) or node.name):
            if len(node.input) >= 4 and node.input[3]:
                return "size"
            return "dino"
    for node in graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.class_hierarchy" and "modeling_dinov2" in prop.value:
                return "size"
    return None


def read_onnx(path: str | os.PathLike) -> OnnxWeights:
    """Read the ViT weights of an ONNX file without executing its graph.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.onnx`` file; tensors stored as external data (as ``torch.onnx.export(...,
        dynamo=True)`` writes them) are read from files in the same folder, never elsewhere.

    Returns
    -------
    OnnxWeights
        The backbone tensors under PyTorch names, and what the graph says of heads, LayerNorm
        epsilon and position-embedding resampling.

    Raises
    ------
    CheckpointFormatError
        Truncated or non-ONNX file, external data outside the model's folder (or missing, or
        shorter than declared), no ViT backbone in the graph.
    CheckpointKeysError
        Float weights that cannot be given a PyTorch name (listed).
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = _load_model(path)
    graph = model.graph
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for i in node.input:
            consumers[i].append(node)
    external = 0
    raw = {}
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raw[t.name] = _external_array(t, path)
            external += 1
        else:
            raw[t.name] = numpy_helper.to_array(t)

    arrays: dict[str, np.ndarray] = {}
    notes_extra: list[str] = []
    unnamed_pos: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    unmapped: list[str] = []
    mapped_by_node = 0

    def linear_weight(name: str, x: np.ndarray, users: list[Any]) -> np.ndarray:
        op = users[0].op_type if users else ""
        if op == "MatMul":
            return np.ascontiguousarray(x.T)
        if op == "Gemm":
            return x if _attr(users[0], "transB", 0) else np.ascontiguousarray(x.T)
        return x  # through a Transpose (or another op): PyTorch's (out, in) already

    # The exporter stores equal tensors once (e.g. the zero biases of an untrained model) and
    # gives the copy its other names through Identity nodes.
    aliases = folded = 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in raw and node.output[0] not in raw:
            raw[node.output[0]] = raw[node.input[0]]
            consumers[node.output[0]] = consumers.get(node.output[0], [])
            aliases += 1
    for name, x in raw.items():
        users = consumers.get(name, [])
        is_float = np.issubdtype(x.dtype, np.floating)
        named = _is_param_name(name)
        linear_users = [u for u in users if u.op_type in ("MatMul", "Gemm") and _scope(u)]
        if named:
            leaf = name.rsplit(".", 1)[-1]
            if x.ndim == 2 and leaf == "weight" and linear_users:
                x = linear_weight(name, x, linear_users)
            arrays[name] = x
            continue
        if not is_float or x.size <= 1:
            continue  # shape constants, scalars
        scope = _scope(users[0]) if users else ""
        if linear_users and x.ndim == 2:
            for user in linear_users:
                key = _scope(user) + ".weight"
                if key in arrays:
                    raise CheckpointKeysError(f"{path}: two ONNX weights map to {key}", unexpected=[name])
                arrays[key] = linear_weight(name, x, [user])
                mapped_by_node += 1
        elif x.ndim == 3 and scope.endswith("embeddings"):
            unnamed_pos[scope].append((name, x))
        elif np.all(x == x.flat[0]):
            folded += 1  # a constant the exporter folded (an all-zero attention mask): no weight
        else:
            unmapped.append(f"{name} {tuple(x.shape)} (used by {users[0].name if users else 'no node'})")

    for scope, parts in unnamed_pos.items():
        key = scope + ".position_embeddings"
        cls_key = scope + ".cls_token"
        if key in arrays:  # the named position embeddings: a (1, 1, D) part is the CLS token
            if len(parts) == 1 and parts[0][1].shape[1] == 1 and cls_key not in arrays:
                arrays[cls_key] = parts[0][1]  # expanded to the traced batch of 1 and folded
                notes_extra.append(
                    f"{parts[0][0]} {tuple(parts[0][1].shape)} (a folded Expand "
                    f"of the CLS token) taken as {cls_key}"
                )
            else:
                unmapped.extend(f"{n} {tuple(x.shape)}" for n, x in parts)
            continue
        cls = [x for _, x in parts if x.shape[1] == 1]
        grid = [x for _, x in parts if math.isqrt(x.shape[1]) ** 2 == x.shape[1] and x.shape[1] > 1]
        full = [x for _, x in parts if x.shape[1] > 1 and math.isqrt(x.shape[1] - 1) ** 2 == x.shape[1] - 1]
        if len(parts) == 2 and len(cls) == 1 and len(grid) == 1:
            arrays[key] = np.concatenate([cls[0], grid[0]], axis=1)
        elif len(parts) == 1 and len(full) == 1:
            arrays[key] = full[0]
        else:
            unmapped.extend(f"{n} {tuple(x.shape)} (in {scope})" for n, x in parts)

    prefix = next((k[: -len(m)] for k in arrays for m in _BACKBONE_MARKERS if k.endswith(m)), None)
    if prefix is None:
        raise CheckpointFormatError(
            f"{path}: no ViT backbone in this ONNX graph (no initializer named like "
            f"'embeddings.patch_embeddings.projection.weight' or 'patch_embed.proj.weight')"
        )
    ignored: list[str] = []
    notes = [
        f"ONNX graph from {model.producer_name or 'unknown producer'} {model.producer_version}".rstrip()
        + ", opset "
        + ", ".join(str(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
        f"{mapped_by_node} unnamed linear weights named after the MatMul/Gemm node using them",
    ]
    notes += notes_extra
    if external:
        notes.append(f"{external} tensors read from external data files beside the model")
    if folded:
        notes.append(f"{folded} constant-valued tensors folded by the exporter (no weights) ignored")
    if aliases:
        notes.append(
            f"{aliases} tensors shared by several modules in the graph (equal values "
            "stored once by the exporter) named by Identity nodes"
        )
    if prefix not in _HEADLESS_PREFIXES:
        kept = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        groups: dict[str, int] = defaultdict(int)
        for k in arrays:
            if not k.startswith(prefix):
                groups[k.split(".", 1)[0]] += 1
        ignored = [f"{g}.* ({n} tensors, not part of the ViT backbone)" for g, n in sorted(groups.items())]
        notes.append(f"backbone under '{prefix}' in the graph; prefix removed")
        arrays = kept
    if unmapped:
        raise CheckpointKeysError(
            f"{path}: ONNX weights that could not be given a PyTorch name", unexpected=unmapped
        )
    dim_key = next((k for k in arrays if re.search(r"(cls_token)$", k)), None)
    dim = int(arrays[dim_key].shape[-1]) if dim_key else 0
    consts = _constants(graph)
    return OnnxWeights(
        arrays=arrays,
        heads=_read_heads(graph, consts, raw, dim) if dim else None,
        eps=_read_eps(graph, consts),
        pos_interp=_read_pos_interp(graph),
        ignored=ignored,
        notes=notes,
    )
