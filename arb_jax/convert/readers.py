"""Checkpoint files → python trees of numpy arrays, and trees → flat ``{dotted.key: array}``.

Two file kinds are read, told apart by their first bytes (not their extension):

* PyTorch zip checkpoints (``.pth``, ``.bin``, ``.ckpt``): through the restricted unpickler of
  :mod:`arb_jax.convert.safe_pickle` — no code from the file runs and torch is not imported;
* ``.safetensors``: through the ``safetensors`` package's numpy API;
* ONNX exports (``.onnx``): through the ``onnx`` package's protobuf parser, the graph never run
  (:mod:`arb_jax.convert.onnx_reader`);
* numpy ``.npz`` archives (big_vision / ``vision_transformer`` checkpoints, ``/``-joined names):
  ``np.load(allow_pickle=False)``, so an object array (a pickle) is refused, never loaded; a zip
  holding only ``.npy`` members is an npz, one holding ``data.pkl`` a PyTorch checkpoint.

A directory is read through the weights file it holds (``model.safetensors`` first, then
``pytorch_model.bin``), as saved by ``transformers``' ``save_pretrained``.

Everything that goes wrong raises a :class:`~arb_jax.convert.errors.CheckpointError` (see
:mod:`arb_jax.convert.errors` for the hierarchy) with one line naming the file; text from the file
is escaped (:func:`arb_jax.io.text.escape`). :func:`flatten_tree` bounds its walk: containers nested
at most ``max_depth`` deep and never containing themselves, at most ``max_entries`` entries and
``max_key_chars`` characters of dotted keys in all (a pickle whose memo references form a DAG
would otherwise expand exponentially), and no two sources for one dotted key.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy API)
import numpy as np

from arb_jax.convert.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointIntegrityError,
    CheckpointLimitError,
    CheckpointNotFoundError,
)
from arb_jax.convert.onnx_reader import looks_like_onnx, read_onnx
from arb_jax.convert.safe_pickle import DEFAULT_LIMITS, Placeholder, load_torch_zip
from arb_jax.io.files import sha256_file  # noqa: F401  (re-exported: weights_convert.sha256_file)
from arb_jax.io.text import brief, escape

__all__ = ["flatten_tree", "load_tree", "resolve_weights_file", "sha256_file", "sniff_kind"]

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic 0x1950a86a…


def resolve_weights_file(src: str | os.PathLike) -> Path:
    """The weights file behind ``src``: ``src`` itself, or the HF weights file in a directory.

    Raises
    ------
    CheckpointNotFoundError
        (A ``FileNotFoundError``.) ``src`` does not exist or the directory holds no weights file.
    CheckpointFormatError
        The directory holds a sharded checkpoint (not supported).
    """
    path = Path(src)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {escape(path)} does not exist")
    if not path.is_dir():
        return path
    for name in _HF_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    for name in _SHARD_INDEXES:
        if (path / name).is_file():
            raise CheckpointFormatError(
                f"{escape(path)}: sharded checkpoints ({name}) are not supported; a ViT-S/B fits one file"
            )
    raise CheckpointNotFoundError(f"{escape(path)} holds none of {', '.join(_HF_WEIGHT_FILES)}")


def _zip_kind(path: Path, name: str) -> str:
    """``"npz"`` for a zip of ``.npy`` members only, else ``"torch_zip"`` (its reader judges it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return "torch_zip"  # the torch reader gives the one-line error
    if members and all(m.endswith(".npy") for m in members):
        return "npz"
    return "torch_zip"


def sniff_kind(path: str | os.PathLike) -> str:
    """``"torch_zip"``, ``"npz"``, ``"safetensors"`` or ``"onnx"`` from the first bytes of the file
    (and, for a zip, the names of its members).

    Raises
    ------
    CheckpointFormatError
        Empty file, legacy (non-zip) torch file, or neither format.
    """
    name = escape(path)
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointFormatError(f"{name}: cannot read ({escape(e.strerror or e)})") from None
    if size == 0:
        raise CheckpointFormatError(f"{name}: empty file (0 bytes), not a checkpoint")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path, name)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        raise CheckpointFormatError(
            f"{name}: legacy (non-zip) PyTorch serialization (torch < 1.6 or "
            "_use_new_zipfile_serialization=False) is not supported; re-save it with a recent "
            "torch.save"
        )
    if len(head) >= 9 and head[8:9] == b"{":  # u64 little-endian header length, then JSON
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8:
            return "safetensors"
        raise CheckpointFormatError(
            f"{name}: safetensors header of {header_len} bytes does not fit in the "
            f"{size}-byte file (truncated?)"
        )
    if looks_like_onnx(head):
        return "onnx"
    if path.suffix.lower() == ".onnx":
        raise CheckpointFormatError(
            f"{name}: not an ONNX model (a .onnx file must start with an ONNX ModelProto; "
            f"starts with {escape(repr(head[:8]))})"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointFormatError(
            f"{name}: a bare pickle, not a PyTorch zip checkpoint; bare pickles are refused"
        )
    raise CheckpointFormatError(
        f"{name}: not a checkpoint: neither a PyTorch zip file nor safetensors "
        f"(starts with {escape(repr(head[:8]))})"
    )


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        out = {}
        with safe_open(os.fspath(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open is not a Mapping)
                out[key] = np.ascontiguousarray(f.get_tensor(key))
        return out
    except MemoryError:
        raise CheckpointLimitError(f"{escape(path)}: out of memory reading the safetensors file") from None
    except (SafetensorError, OSError, TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise CheckpointFormatError(
            f"{escape(path)}: corrupt or truncated safetensors file ({type(e).__name__}: "
            f"{escape(str(e), 300)})"
        ) from None


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    """Check one ``.npy`` member's header before numpy allocates anything for it: no object
    dtype (a pickle), and no more data declared than the member holds."""
    key = escape(repr(info.filename[: -len(".npy")]))
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise CheckpointFormatError(
                f"{name}: the member for {key} is not a valid .npy array ({escape(str(e), 200)})"
            ) from None
    if dtype.hasobject:
        raise CheckpointFormatError(
            f"{name}: the array {key} is a pickled object array; refused (npz files are read "
            "with allow_pickle=False, no code from the file runs)"
        )
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > info.file_size:
        raise CheckpointLimitError(
            f"{name}: the array {key} declares shape {shape} of {dtype} ({nbytes} bytes) but its "
            f"member holds {info.file_size} bytes (truncated or forged)"
        )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (``np.load(allow_pickle=False)``), within the inflate budget;
    every member's header is checked first (``_npy_header``)."""
    name = escape(path)
    size = path.stat().st_size
    budget = max(DEFAULT_LIMITS.inflate_floor, DEFAULT_LIMITS.inflate_ratio * size)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        declared = sum(info.file_size for info in infos)
        if declared > budget:
            raise CheckpointLimitError(
                f"{name}: the npz members inflate to {declared} bytes, more than the budget of "
                f"{int(budget)} bytes for a {size}-byte file (zip bomb?)"
            )
        for info in infos:
            _npy_header(archive, info, name)
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            out[key] = np.ascontiguousarray(npz[key])
    return out


def load_tree(path: str | os.PathLike) -> tuple[Any, str]:
    """Read one checkpoint file without running code from it.

    Parameters
    ----------
    path : str or os.PathLike
        A PyTorch zip checkpoint, a ``.safetensors``, ``.onnx`` or ``.npz`` file.

    Returns
    -------
    tree : object
        The saved object with tensors as numpy arrays (for ONNX, the
        :class:`~arb_jax.convert.onnx_reader.OnnxWeights` read from the graph; for an npz, the
        flat ``{name: array}`` of its members).
    kind : str
        ``"torch_zip"``, ``"safetensors"``, ``"onnx"`` or ``"npz"``.

    Raises
    ------
    CheckpointError
        Any problem with the file (a subclass; the message names the file).
    """
    path = Path(path)
    try:
        kind = sniff_kind(path)
        if kind == "safetensors":
            return _load_safetensors(path), kind
        if kind == "onnx":
            return read_onnx(path), kind
        if kind == "npz":
            return _load_npz(path), kind
        return load_torch_zip(path), kind
    except CheckpointError as e:
        raise e.with_path(path) from None
    except MemoryError:
        raise CheckpointLimitError(f"{escape(path)}: out of memory reading the checkpoint") from None
    except Exception as e:  # a hostile file: whatever fails is the file's fault, in one line
        raise CheckpointFormatError(
            f"{escape(path)}: unreadable checkpoint ({type(e).__name__}: {escape(str(e), 200)})"
        ) from None


def _key_text(key: Any) -> str:
    """A mapping key as a dotted-path segment: ``str`` keys as they are, small ints in decimal,
    anything else by a short escaped ``repr`` (a hostile key cannot recurse or be huge)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool) and -(10**30) < key < 10**30:
        return str(key)
    return brief(key, 60)


def _source(parts: tuple[Any, Any] | None) -> str:
    """``['blocks'][0]['norm1']['weight']``: where a leaf sits in the saved object (escaped).

    ``parts`` is a linked path ``(((None, 'blocks'), 0), 'norm1')…``: children share their
    parent's path, so that a wide or deep tree costs one small tuple per entry."""
    keys = []
    while parts is not None:
        parts, key = parts
        keys.append(key)
    return "".join(f"[{brief(k, 80)}]" for k in reversed(keys)) or "the top level"


def flatten_tree(
    tree: Any,
    prefix: str = "",
    *,
    max_depth: int = 100,
    max_entries: int = 2_000_000,
    max_key_chars: int = 1 << 27,
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Flatten nested mappings / lists into ``{"a.b.0.c": array}``.

    The walk is iterative and bounded, whatever the tree: a hostile pickle can build containers
    that contain themselves, nest 10⁵ deep, or share sub-containers so that the tree they stand
    for is exponentially larger than the file.

    Parameters
    ----------
    tree : object
        The loaded object (dicts, lists, tuples; numpy arrays and other values as leaves).
    prefix : str
        A dotted prefix for every key.
    max_depth : int
        The deepest nesting of containers walked.
    max_entries : int
        The most container entries visited (shared containers count every time).
    max_key_chars : int
        The most characters of dotted keys built, in all.
    path : str, os.PathLike or None
        The file the tree was read from, named in the errors.

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        Every numpy array under its dotted path.
    others : list of str
        The dotted paths of the non-array leaves (numbers, strings, :class:`Placeholder` holders
        such as DINO's ``args``).

    Raises
    ------
    CheckpointLimitError
        Beyond ``max_depth`` / ``max_entries`` / ``max_key_chars``, or a container that contains
        itself.
    CheckpointIntegrityError
        Two arrays with one dotted key (``{"a.b": x, "a": {"b": y}}``), naming both sources.
    """
    try:
        return _flatten(tree, prefix, max_depth, max_entries, max_key_chars)
    except CheckpointError as e:
        raise (e.with_path(path) if path is not None else e) from None


def _flatten(
    tree: Any, prefix: str, max_depth: int, max_entries: int, max_key_chars: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, tuple[Any, Any] | None] = {}
    others: list[str] = []
    on_path: dict[int, str] = {}  # id → key of the containers being walked
    seen: set[int] = set()
    entries = key_chars = 0
    _exit = object()
    stack: list[tuple[Any, Any, tuple[Any, Any] | None, int]] = [(tree, prefix, None, 0)]
    while stack:
        node, key, parts, depth = stack.pop()
        if node is _exit:
            on_path.pop(key, None)  # key: the id of the container left
            continue
        if isinstance(node, np.ndarray):
            if key in arrays:
                raise CheckpointIntegrityError(
                    f"two tensors for the key {escape(repr(key))}: {_source(sources[key])} and "
                    f"{_source(parts)} (one would silently shadow the other)",
                    tensors=[_source(sources[key]), _source(parts)],
                )
            arrays[key] = node
            sources[key] = parts
            continue
        if isinstance(node, Mapping) and not isinstance(node, Placeholder):
            items: Any = node.items()
        elif isinstance(node, list | tuple):
            items = enumerate(node)
        else:
            others.append(key)
            continue
        if id(node) in on_path:
            first = on_path[id(node)]
            raise CheckpointLimitError(
                f"the container at {escape(repr(first)) if first else 'the top level'} contains "
                f"itself (again at {escape(repr(key)) if key else 'the top level'})"
            )
        if depth >= max_depth:
            raise CheckpointLimitError(f"containers nested more than {max_depth} deep, at {brief(key, 200)}")
        entries += len(node)  # before anything is built for its entries
        if entries > max_entries:
            shared = (
                " (shared containers, e.g. a pickle whose memo references expand exponentially)"
                if id(node) in seen
                else ""
            )
            raise CheckpointLimitError(f"more than {max_entries} entries in the saved object{shared}")
        seen.add(id(node))
        on_path[id(node)] = key
        stack.append((_exit, id(node), None, 0))
        children = []
        for k, v in items:
            text = _key_text(k)
            child = f"{key}.{text}" if key else text
            key_chars += len(child)
            if key_chars > max_key_chars:
                raise CheckpointLimitError(
                    f"more than {max_key_chars} characters of keys in the saved object (shared "
                    "containers expanding exponentially, or huge keys)"
                )
            children.append((v, child, (parts, k), depth + 1))
        stack.extend(reversed(children))
    return arrays, others
