"""Read a PyTorch zip checkpoint without torch and without running code from the file.

``torch.save`` writes a zip archive::

    <root>/data.pkl        the pickled object (dicts of tensors, training metadata, …)
    <root>/data/<key>      one raw storage (a flat buffer of one dtype) per key
    <root>/byteorder       "little" or "big" (absent in old files: little)

A pickle can name any global (``os.system``) and call it while it loads. The
:class:`RestrictedUnpickler` here resolves only an allow-list:

* tensor rebuilding: ``torch._utils._rebuild_tensor_v2`` / ``_v3``, ``_rebuild_parameter``
  (``_with_state``), the storage types (``torch.FloatStorage``, ``torch.BFloat16Storage``, …,
  ``torch.storage.UntypedStorage``) and dtypes (``torch.float32``, …) of the typed-storage path;
* plain containers: ``collections.OrderedDict``;
* inert data holders, replaced by :class:`Placeholder` (they keep their arguments and state but
  run nothing): ``argparse.Namespace`` (DINO's ``args``), numpy scalars, dtypes and arrays,
  Lightning's ``AttributeDict``; and ``_codecs.encode`` restricted to latin-1 (how protocol 2
  stores ``bytes``).

Any other global raises :class:`~arb_jax.convert.errors.UnsafeCheckpointError` naming it
(``"posix.system"``) before it is called. Tensors come back as numpy arrays (C-contiguous copies
built with ``as_strided`` from the storage, honouring offset, size and stride; bfloat16 and float8
via ``ml_dtypes``).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from arb_jax.convert.errors import CheckpointFormatError, UnsafeCheckpointError

__all__ = ["Placeholder", "RestrictedUnpickler", "load_torch_zip"]

# Legacy ``<Name>Storage`` classes of the typed-storage path → element dtype.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),  # bytes; the tensor's dtype comes with _rebuild_v3
}
_QUANTIZED_STORAGES = frozenset(
    {"QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage"})

# ``torch.<dtype>`` globals (passed to ``_rebuild_tensor_v3``) → numpy dtype.
_TORCH_DTYPES: dict[str, np.dtype] = {
    **{n: np.dtype(np.float32) for n in ("float32", "float")},
    **{n: np.dtype(np.float64) for n in ("float64", "double")},
    **{n: np.dtype(np.float16) for n in ("float16", "half")},
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    **{n: np.dtype(np.int64) for n in ("int64", "long")},
    **{n: np.dtype(np.int32) for n in ("int32", "int")},
    **{n: np.dtype(np.int16) for n in ("int16", "short")},
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
}

# Harmless data holders: resolved to a Placeholder subclass carrying the global's name.
_INERT_GLOBALS = frozenset({
    "argparse.Namespace",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
})


class _Frozen:
    """Immutable object: pickle's BUILD opcode cannot set attributes on it (no ``__dict__``)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointFormatError(f"checkpoint pickle tried to set {name!r} on {self!r}")


class _Callable(_Frozen):
    """An allowed function, wrapped so that the pickle cannot mutate the real one."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"_Callable({getattr(self.fn, '__name__', self.fn)})"


class _DtypeHolder(_Frozen):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageType(_DtypeHolder):
    """What ``torch.<Name>Storage`` resolves to: only its element dtype matters."""

    __slots__ = ()


class _TorchDtype(_DtypeHolder):
    """What ``torch.float32`` etc. resolve to."""

    __slots__ = ()


class _Storage(_Frozen):
    """One storage: a flat numpy buffer of ``numel`` elements of its dtype (read-only view)."""

    __slots__ = ("buffer", "key")

    def __init__(self, buffer: np.ndarray, key: str):
        object.__setattr__(self, "buffer", buffer)
        object.__setattr__(self, "key", key)

    def __repr__(self) -> str:
        return f"_Storage({self.key})"


class Placeholder(dict):
    """Inert stand-in for an allowed data holder (``argparse.Namespace``, numpy scalars, …).

    It records the global it replaces (``global_name``), the arguments it was called with
    (``args``) and any pickled state (``state``); dict-like holders also keep their items. It never
    calls the real class.
    """

    global_name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce__(self):  # pragma: no cover - placeholders are never re-pickled
        raise TypeError(f"a Placeholder for {self.global_name} cannot be pickled")

    def __repr__(self) -> str:
        return f"Placeholder({self.global_name})"


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for ``bytes``: ``(str, "latin1")`` only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("_codecs.encode (with arguments other than (str, 'latin1'))")
    return text.encode("latin-1")


def _check_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CheckpointFormatError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _tensor_from_storage(storage: Any, offset: Any, size: Any, stride: Any,
                         dtype: np.dtype | None = None) -> np.ndarray:
    """A C-contiguous copy of the strided view ``storage[offset + Σ i_k·stride_k]``."""
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor storage is {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise CheckpointFormatError(f"tensor storage offset must be an int >= 0, got {offset!r}")
    size = _check_int_tuple(size, "size")
    stride = _check_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointFormatError(f"tensor size {size} and stride {stride} differ in length")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointFormatError(f"negative tensor size {size} or stride {stride}")
    buffer = storage.buffer
    if dtype is not None and dtype != buffer.dtype:  # untyped (byte) storage + v3 dtype
        if buffer.nbytes % dtype.itemsize:
            raise CheckpointFormatError(
                f"storage {storage.key}: {buffer.nbytes} bytes is not a whole number of "
                f"{dtype} elements")
        buffer = buffer.view(dtype)
    if math.prod(size) == 0:
        return np.zeros(size, dtype=buffer.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= buffer.size:
        raise CheckpointFormatError(
            f"tensor of size {size}, stride {stride}, offset {offset} reads element {last} of "
            f"storage {storage.key}, which holds {buffer.size} (truncated or corrupt file?)")
    item = buffer.itemsize
    view = np.lib.stride_tricks.as_strided(
        buffer[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, order="C", copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _TorchDtype):
        raise CheckpointFormatError(f"_rebuild_tensor_v3 got dtype {dtype!r}, not a torch dtype")
    return _tensor_from_storage(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


_REBUILDERS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the allow-list of this module.

    Args:
      file: binary file holding the pickle (``data.pkl``).
      load_storage: ``(key, dtype, numel) -> 1-D numpy array`` for the persistent ids
        ``("storage", <StorageType>, key, location, numel)`` of a torch checkpoint.
      path: file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase,
                 load_storage: Callable[[str, np.dtype, int], np.ndarray],
                 path: str | None = None):
        super().__init__(file)
        self._load_storage = load_storage
        self._path = path
        self._storages: dict[str, _Storage] = {}
        self._placeholders: dict[str, type[Placeholder]] = {}  # fresh per load

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names written by protocols < 3 (``__builtin__``, ``commands``, …), mapped as
        # pickle itself maps them, so that the allow-list and the error see Python 3 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full in _REBUILDERS:
            return _Callable(_REBUILDERS[full])
        if full == "torch.storage.UntypedStorage":  # how _rebuild_tensor_v3 storages are named
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch":
            if name in _STORAGE_DTYPES:
                return _StorageType(name, _STORAGE_DTYPES[name])
            if name in _QUANTIZED_STORAGES:
                raise CheckpointFormatError(
                    f"{self._path}: quantized tensors (torch.{name}) are not supported")
            if name in _TORCH_DTYPES:
                return _TorchDtype(name, _TORCH_DTYPES[name])
        if full in _INERT_GLOBALS:
            if full not in self._placeholders:
                self._placeholders[full] = type(
                    "Placeholder", (Placeholder,), {"global_name": full})
            return self._placeholders[full]
        raise UnsafeCheckpointError(full, self._path)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise CheckpointFormatError(f"{self._path}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self._path}: storage type {storage_type!r} unknown")
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"{self._path}: bad storage record {pid!r}")
        if key not in self._storages:
            buffer = self._load_storage(key, storage_type.dtype, numel)
            self._storages[key] = _Storage(buffer, key)
        return self._storages[key]


def _find_root(names: list[str], path: str) -> str:
    roots = [n[: -len("/data.pkl")] for n in names
             if n.endswith("/data.pkl") and n.count("/") == 1]
    if not roots:
        raise CheckpointFormatError(
            f"{path}: zip archive without '<root>/data.pkl': not a PyTorch checkpoint")
    if len(roots) > 1:
        raise CheckpointFormatError(f"{path}: zip archive holds several pickles {roots}")
    return roots[0]


def _native(buffer: np.ndarray, big_endian: bool) -> np.ndarray:
    """Reinterpret a little- or big-endian buffer in native (little-endian) order."""
    if not big_endian or buffer.dtype.itemsize == 1:
        return buffer
    if buffer.dtype.kind == "c":
        part = np.dtype(f"f{buffer.dtype.itemsize // 2}")
        return buffer.view(part).byteswap().view(buffer.dtype)
    uint = np.dtype(f"u{buffer.dtype.itemsize}")
    return buffer.view(uint).byteswap().view(buffer.dtype)


def load_torch_zip(path: str | os.PathLike) -> Any:
    """Unpickle a zip-format ``torch.save`` file with no code execution and no torch import.

    Args:
      path: the ``.pth`` / ``.bin`` / ``.ckpt`` file.

    Returns:
      The saved object with every tensor replaced by a numpy array (C-contiguous, the tensor's
      dtype; bfloat16/float8 as ``ml_dtypes``), allowed data holders by :class:`Placeholder`.

    Raises:
      UnsafeCheckpointError: the pickle names a global outside the allow-list.
      CheckpointFormatError: not a zip, truncated or corrupt archive, missing storage, legacy
        (non-zip) torch serialization.
    """
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointFormatError(f"{path}: not a valid zip archive ({e})") from None
    with archive:
        names = archive.namelist()
        root = _find_root(names, path)
        big_endian = False
        if f"{root}/byteorder" in names:
            order = archive.read(f"{root}/byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byteorder {order!r}")
            big_endian = order == "big"

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            member = f"{root}/data/{key}"
            if member not in names:
                raise CheckpointFormatError(f"{path}: storage {member!r} missing from the archive")
            raw = archive.read(member)
            need = numel * dtype.itemsize
            if len(raw) < need:
                raise CheckpointFormatError(
                    f"{path}: storage {member!r} has {len(raw)} bytes, needs {need} "
                    "(truncated file?)")
            return _native(np.frombuffer(raw, dtype=dtype, count=numel), big_endian)

        try:
            data = archive.read(f"{root}/data.pkl")
            return RestrictedUnpickler(io.BytesIO(data), load_storage, path).load()
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zipfile.LargeZipFile,
                ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as e:
            raise CheckpointFormatError(
                f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {e})") from None
