"""Checkpoint files → python trees of numpy arrays, and trees → flat ``{dotted.key: array}``.

Two file kinds are read, told apart by their first bytes (not their extension):

* PyTorch zip checkpoints (``.pth``, ``.bin``, ``.ckpt``): through the restricted unpickler of
  :mod:`arb_jax.convert.safe_pickle` — no code from the file runs and torch is not imported;
* ``.safetensors``: through the ``safetensors`` package's numpy API.

A directory is read through the weights file it holds (``model.safetensors`` first, then
``pytorch_model.bin``), as saved by ``transformers``' ``save_pretrained``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy API)
import numpy as np

from arb_jax.convert.errors import CheckpointFormatError
from arb_jax.convert.safe_pickle import Placeholder, load_torch_zip
from arb_jax.io.files import sha256_file  # noqa: F401  (re-exported: weights_convert.sha256_file)

__all__ = ["flatten_tree", "load_tree", "resolve_weights_file", "sha256_file", "sniff_kind"]

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic 0x1950a86a…


def resolve_weights_file(src: str | os.PathLike) -> Path:
    """The weights file behind ``src``: ``src`` itself, or the HF weights file in a directory.

    Raises:
      FileNotFoundError: ``src`` does not exist or the directory holds no weights file.
      CheckpointFormatError: the directory holds a sharded checkpoint (not supported).
    """
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        return path
    for name in _HF_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    for name in _SHARD_INDEXES:
        if (path / name).is_file():
            raise CheckpointFormatError(
                f"{path}: sharded checkpoints ({name}) are not supported; a ViT-S/B fits one file")
    raise FileNotFoundError(f"{path} holds none of {', '.join(_HF_WEIGHT_FILES)}")


def sniff_kind(path: str | os.PathLike) -> str:
    """``"torch_zip"`` or ``"safetensors"`` from the first bytes of the file.

    Raises:
      CheckpointFormatError: empty file, legacy (non-zip) torch file, or neither format.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFormatError(f"{path}: empty file (0 bytes), not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch_zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        raise CheckpointFormatError(
            f"{path}: legacy (non-zip) PyTorch serialization (torch < 1.6 or "
            "_use_new_zipfile_serialization=False) is not supported; re-save it with a recent "
            "torch.save")
    if len(head) >= 9 and head[8:9] == b"{":  # u64 little-endian header length, then JSON
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8:
            return "safetensors"
        raise CheckpointFormatError(
            f"{path}: safetensors header of {header_len} bytes does not fit in the "
            f"{size}-byte file (truncated?)")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointFormatError(
            f"{path}: a bare pickle, not a PyTorch zip checkpoint; bare pickles are refused")
    raise CheckpointFormatError(
        f"{path}: not a checkpoint: neither a PyTorch zip file nor safetensors "
        f"(starts with {head[:8]!r})")


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        out = {}
        with safe_open(os.fspath(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open is not a Mapping)
                out[key] = np.ascontiguousarray(f.get_tensor(key))
        return out
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise CheckpointFormatError(
            f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None


def load_tree(path: str | os.PathLike) -> tuple[Any, str]:
    """Read one checkpoint file without running code from it.

    Args:
      path: a PyTorch zip checkpoint or a ``.safetensors`` file.

    Returns:
      ``(tree, kind)``: the saved object with tensors as numpy arrays, and ``kind``
      (``"torch_zip"`` or ``"safetensors"``).
    """
    path = Path(path)
    kind = sniff_kind(path)
    if kind == "safetensors":
        return _load_safetensors(path), kind
    return load_torch_zip(path), kind


def flatten_tree(tree: Any, prefix: str = "") -> tuple[dict[str, np.ndarray], list[str]]:
    """Flatten nested mappings / lists into ``{"a.b.0.c": array}``.

    Returns:
      ``(arrays, others)``: every numpy array under its dotted path, and the dotted paths of the
      non-array leaves (numbers, strings, :class:`Placeholder` holders such as DINO's ``args``).
    """
    arrays: dict[str, np.ndarray] = {}
    others: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, np.ndarray):
            arrays[key] = node
        elif isinstance(node, Mapping) and not isinstance(node, Placeholder):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}" if key else str(i))
        else:
            others.append(key)

    walk(tree, prefix)
    return arrays, others
