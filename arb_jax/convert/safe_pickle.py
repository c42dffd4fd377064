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

Memory is bounded by the file's actual bytes and a stated budget (:class:`ReadLimits`), checked
before anything is allocated:

* zip members: only stored and deflated members, not encrypted, are read, and all the bytes read
  (``data.pkl`` and storages) inflate to at most ``max(64 MiB, 8 × the file's size)``;
* storages: a storage's declared element count must fit in its zip member;
* tensors: every tensor is a copy, so the bytes of all tensors built (a stride-0 ``expand``, many
  views of one storage) are at most ``64 MiB + 2 × the bytes of the storages read``; offsets,
  sizes and strides must stay inside their storage (Python ints: no overflow);
* the pickle is scanned before it is run: memo indices must grow with the pickle (a crafted
  ``LONG_BINPUT 2**31`` would make the unpickler allocate gigabytes), frames and arguments must fit
  in it, and the objects it builds are estimated (100 bytes an opcode, 240 a set, 4 a byte of
  text) at no more than 512 MiB (a pickle of 60 million one-byte ``EMPTY_SET`` opcodes would build
  14 GB).

Whatever goes wrong raises a :class:`~arb_jax.convert.errors.CheckpointError` (a
:class:`~arb_jax.convert.errors.CheckpointLimitError` for the budget); no other exception type
(``RecursionError``, ``OverflowError``, ``MemoryError``, zip ``RuntimeError`` …) escapes
:func:`load_torch_zip`. Text from the file is escaped in every message
(:func:`arb_jax.io.text.escape`).
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from arb_jax.convert.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointLimitError,
    UnsafeCheckpointError,
)
from arb_jax.io.text import brief, escape

__all__ = ["DEFAULT_LIMITS", "Placeholder", "ReadLimits", "RestrictedUnpickler", "load_torch_zip"]

_MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """The memory budget of one :func:`load_torch_zip`, relative to the file's actual bytes.

    Attributes
    ----------
    inflate_ratio : float
        With ``inflate_floor``: all the zip members read inflate to at most
        ``max(inflate_floor, inflate_ratio × file size)`` bytes (``torch.save`` stores members
        uncompressed: ratio 1).
    inflate_floor : int
        Bytes; see ``inflate_ratio``.
    tensor_ratio : float
        With ``tensor_floor``: the tensors built (each a copy) take at most
        ``tensor_floor + tensor_ratio × bytes of the storages read``.
    tensor_floor : int
        Bytes; see ``tensor_ratio``.
    max_ndim : int
        The most dimensions a tensor may have.
    memo_slack : int
        A memo index may exceed twice the number of memo writes so far by this much.
    pickle_objects : int
        The most bytes of Python objects the pickle may build, as estimated from its opcodes
        before it runs.
    """

    inflate_ratio: float = 8.0
    inflate_floor: int = 64 * _MiB
    tensor_ratio: float = 2.0
    tensor_floor: int = 64 * _MiB
    max_ndim: int = 32
    memo_slack: int = 1024
    pickle_objects: int = 512 * _MiB


DEFAULT_LIMITS = ReadLimits()


class _Budget:
    """Bytes inflated from the archive and bytes of tensors built so far, against the limits."""

    def __init__(self, limits: ReadLimits, file_size: int, path: str):
        self.limits = limits
        self.path = path
        self.file_size = file_size
        self.inflate_max = max(limits.inflate_floor, int(limits.inflate_ratio * file_size))
        self.inflated = 0
        self.storage_bytes = 0
        self.tensor_bytes = 0

    def inflate(self, nbytes: int, member: str) -> None:
        if self.inflated + nbytes > self.inflate_max:
            raise CheckpointLimitError(
                f"{self.path}: zip member {escape(repr(member))} inflates to {nbytes} bytes, "
                f"beyond the budget of {self.inflate_max} bytes for all members of this "
                f"{self.file_size}-byte file (max({self.limits.inflate_floor}, "
                f"{self.limits.inflate_ratio:g} x file size); {self.inflated} used; zip bomb?)"
            )
        self.inflated += nbytes

    def tensor_max(self) -> int:
        return self.limits.tensor_floor + int(self.limits.tensor_ratio * self.storage_bytes)

    def tensor(self, nbytes: int, extent: int, what: Callable[[], str]) -> None:
        """Spend ``nbytes`` on a tensor; ``extent`` (its bytes with 0-sized dims counted as 1)
        must fit as well, so that numpy never sees an impossible shape. ``what()`` describes the
        tensor (only called for the message)."""
        limit = self.tensor_max()
        if self.tensor_bytes + nbytes > limit or extent > limit:
            raise CheckpointLimitError(
                f"{self.path}: {what()} would take {max(nbytes, extent)} bytes; the tensors of "
                f"this file may take {limit} bytes in all ({self.limits.tensor_floor} + "
                f"{self.limits.tensor_ratio:g} x its {self.storage_bytes} bytes of storages), "
                f"{self.tensor_bytes} are taken (stride-0 or overlapping views?)"
            )
        self.tensor_bytes += nbytes


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
    {"QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage"}
)

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
_INERT_GLOBALS = frozenset(
    {
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
    }
)


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
    """One storage: a flat numpy buffer of ``numel`` elements of its dtype (read-only view), and
    the budget of the load it belongs to (tensors built from it are charged to it)."""

    __slots__ = ("buffer", "key", "budget")

    def __init__(self, buffer: np.ndarray, key: str, budget: _Budget | None = None):
        object.__setattr__(self, "buffer", buffer)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "budget", budget)

    def __repr__(self) -> str:
        return f"_Storage({escape(self.key)})"


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
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise CheckpointFormatError(f"tensor {what} must be a tuple of ints, got {brief(value)}")
    return tuple(value)


def _tensor_from_storage(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None = None
) -> np.ndarray:
    """A C-contiguous copy of the strided view ``storage[offset + Σ i_k·stride_k]``.

    Every check is done on Python ints before numpy sees the numbers (no overflow), and the
    copy's bytes are charged to the storage's budget before it is allocated.
    """
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor storage is {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise CheckpointFormatError(f"tensor storage offset must be an int >= 0, got {brief(offset)}")
    size = _check_int_tuple(size, "size")
    stride = _check_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointFormatError(f"tensor size {brief(size)} and stride {brief(stride)} differ in length")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointFormatError(f"negative tensor size {brief(size)} or stride {brief(stride)}")
    budget = storage.budget
    max_ndim = budget.limits.max_ndim if budget is not None else DEFAULT_LIMITS.max_ndim
    if len(size) > max_ndim:
        raise CheckpointLimitError(f"tensor of {len(size)} dimensions (at most {max_ndim})")
    buffer = storage.buffer
    key = storage.key
    if dtype is not None and dtype != buffer.dtype:  # untyped (byte) storage + v3 dtype
        if buffer.nbytes % dtype.itemsize:
            raise CheckpointFormatError(
                f"storage {escape(repr(key))}: {buffer.nbytes} bytes is not a whole number of "
                f"{dtype} elements"
            )
        buffer = buffer.view(dtype)
    item = buffer.itemsize
    numel = math.prod(size)

    def what() -> str:
        return f"a tensor of size {brief(size)} (stride {brief(stride)}) of storage {escape(repr(key))}"

    if numel == 0:
        if budget is not None:
            budget.tensor(0, math.prod(max(n, 1) for n in size) * item, what)
        return np.zeros(size, dtype=buffer.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= buffer.size:
        raise CheckpointFormatError(
            f"tensor of size {brief(size)}, stride {brief(stride)}, offset {brief(offset)} reads "
            f"element {brief(last)} of storage {escape(repr(key))}, which holds {buffer.size} "
            "(truncated or corrupt file?)"
        )
    if budget is not None:
        budget.tensor(numel * item, numel * item, what)
    # A stride along a dimension of size 1 is never used: 0 keeps huge ones out of numpy.
    strides = tuple(s * item if n > 1 else 0 for n, s in zip(size, stride, strict=True))
    view = np.lib.stride_tricks.as_strided(buffer[offset:], shape=size, strides=strides, writeable=False)
    return np.array(view, order="C", copy=True)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
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

    Parameters
    ----------
    file : io.BufferedIOBase
        Binary file holding the pickle (``data.pkl``).
    load_storage : callable
        ``(key, dtype, numel) -> 1-D numpy array`` for the persistent ids
        ``("storage", <StorageType>, key, location, numel)`` of a torch checkpoint.
    path : str or None
        File name used in error messages.
    budget : _Budget or None
        The memory budget tensors are charged to (None: not checked).
    """

    def __init__(
        self,
        file: io.BufferedIOBase,
        load_storage: Callable[[str, np.dtype, int], np.ndarray],
        path: str | None = None,
        budget: _Budget | None = None,
    ):
        super().__init__(file)
        self._load_storage = load_storage
        self._path = escape(path) if path is not None else None
        self._budget = budget
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
                    f"{self._path}: quantized tensors (torch.{name}) are not supported"
                )
            if name in _TORCH_DTYPES:
                return _TorchDtype(name, _TORCH_DTYPES[name])
        if full in _INERT_GLOBALS:
            if full not in self._placeholders:
                self._placeholders[full] = type("Placeholder", (Placeholder,), {"global_name": full})
            return self._placeholders[full]
        raise UnsafeCheckpointError(full, self._path)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise CheckpointFormatError(f"{self._path}: unknown persistent id {brief(pid)}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self._path}: storage type {brief(storage_type)} unknown")
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(key, str) or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise CheckpointFormatError(f"{self._path}: bad storage record {brief(pid)}")
        if key not in self._storages:
            buffer = self._load_storage(key, storage_type.dtype, numel)
            if self._budget is not None:
                self._budget.storage_bytes += buffer.nbytes
            self._storages[key] = _Storage(buffer, key, self._budget)
        return self._storages[key]


def _opcode_table() -> dict[int, int]:
    """Opcode byte → how its argument is laid out: a fixed byte count (>= 0), or one of the
    ``pickletools`` markers for a newline-terminated or length-prefixed argument (< 0)."""
    table = {}
    for op in pickletools.opcodes:
        table[op.code.encode("latin-1")[0]] = 0 if op.arg is None else op.arg.n
    return table


_OPCODE_ARGS = _opcode_table()
_TWO_LINES = frozenset(b"ci")  # GLOBAL, INST: "module\nname\n"
_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_PUT, _BINPUT, _LONG_BINPUT, _MEMOIZE, _FRAME, _STOP = b"pqr\x94\x95."
_OP_COST, _SET_COST, _TEXT_COST = 100, 240, 4  # bytes of objects: an opcode, a set, a text byte
_SETS = frozenset(b"\x8f\x91")  # EMPTY_SET, FROZENSET


def _scan_pickle(data: bytes, path: str, limits: ReadLimits) -> None:
    """Walk the opcodes of ``data`` (nothing is built) and refuse what would make the C
    unpickler allocate beyond the pickle's size: a memo index far beyond the memo writes so far
    (the unpickler grows its memo array to the index), a frame or an argument longer than what
    is left of the pickle, an unknown opcode, more objects than ``limits.pickle_objects`` bytes
    (estimated: ``_OP_COST`` an opcode, ``_SET_COST`` a set, ``_TEXT_COST`` a byte of argument)."""
    puts, i, end, ops, sets = 0, 0, len(data), 0, 0
    args, prefix, two_lines, set_codes = _OPCODE_ARGS, _PREFIX, _TWO_LINES, _SETS
    max_ops = limits.pickle_objects // _OP_COST
    while i < end:
        code, pos = data[i], i
        i += 1
        ops += 1
        if ops > max_ops:  # stop early: the scan itself takes time
            raise CheckpointLimitError(
                f"{path}: the pickle would build more than {limits.pickle_objects} bytes of objects "
                f"(over {max_ops} opcodes), beyond the budget"
            )
        if code in set_codes:
            sets += 1
        n = args.get(code)
        if n is None:
            raise CheckpointFormatError(f"{path}: corrupt pickle: unknown opcode {code:#04x} at byte {pos}")
        if n >= 0:
            arg_at, i = i, i + n
        elif n == pickletools.UP_TO_NEWLINE:
            arg_at = i
            for _ in range(2 if code in two_lines else 1):
                newline = data.find(b"\n", i)
                if newline < 0:
                    raise CheckpointFormatError(f"{path}: corrupt pickle: truncated at byte {pos}")
                i = newline + 1
        else:
            width, signed = prefix[n]
            length = int.from_bytes(data[i : i + width], "little", signed=signed)
            if length < 0:
                raise CheckpointFormatError(f"{path}: corrupt pickle: negative length at byte {pos}")
            arg_at, i = i + width, i + width + length
        if i > end:
            raise CheckpointFormatError(
                f"{path}: corrupt pickle: the argument at byte {pos} runs past its end "
                f"({end} bytes; truncated, or a declared length that lies)"
            )
        if code in (_BINPUT, _LONG_BINPUT, _PUT):
            if code == _PUT:
                text = data[arg_at : i - 1]
                index = int(text) if text.isdigit() and len(text) < 20 else -1
            else:
                index = int.from_bytes(data[arg_at:i], "little")
            if not 0 <= index <= 2 * puts + limits.memo_slack:
                raise CheckpointLimitError(
                    f"{path}: pickle memo index {index} at byte {pos} after {puts} memo writes "
                    "(the unpickler would allocate a memo of that size)"
                )
            puts += 1
        elif code == _MEMOIZE:
            puts += 1
        elif code == _FRAME and int.from_bytes(data[arg_at:i], "little") > end - i:
            raise CheckpointFormatError(
                f"{path}: pickle frame at byte {pos} runs past the end of the {end}-byte pickle"
            )
        elif code == _STOP:
            break
    else:
        raise CheckpointFormatError(f"{path}: corrupt pickle: no STOP opcode (truncated?)")
    estimate = _OP_COST * ops + (_SET_COST - _OP_COST) * sets + _TEXT_COST * i
    if estimate > limits.pickle_objects:
        raise CheckpointLimitError(
            f"{path}: the pickle would build about {estimate} bytes of objects ({ops} opcodes, "
            f"{sets} sets), beyond the budget of {limits.pickle_objects}"
        )


def _find_root(names: list[str], path: str) -> str:
    roots = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not roots:
        raise CheckpointFormatError(
            f"{path}: zip archive without '<root>/data.pkl': not a PyTorch checkpoint"
        )
    if len(roots) > 1:
        raise CheckpointFormatError(f"{path}: zip archive holds several pickles {brief(roots)}")
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


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, budget: _Budget) -> bytes:
    """The bytes of one zip member, checked against the archive and the budget before reading."""
    name = escape(repr(info.filename))
    if info.flag_bits & 0x1:
        raise CheckpointFormatError(f"{path}: zip member {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointFormatError(
            f"{path}: zip member {name} uses compression method {info.compress_type}; only "
            "stored (0) and deflated (8) members are read, as torch itself does"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise CheckpointFormatError(
            f"{path}: stored zip member {name} declares {info.file_size} bytes but holds "
            f"{info.compress_size} (corrupt archive)"
        )
    if info.header_offset + info.compress_size > budget.file_size:
        raise CheckpointFormatError(
            f"{path}: zip member {name} of {info.compress_size} bytes at offset "
            f"{info.header_offset} runs past the end of the {budget.file_size}-byte file "
            "(truncated?)"
        )
    budget.inflate(info.file_size, info.filename)
    data = archive.read(info)
    if len(data) != info.file_size:  # pragma: no cover - zipfile checks the size and CRC itself
        raise CheckpointFormatError(f"{path}: zip member {name} is truncated")
    return data


def load_torch_zip(path: str | os.PathLike, *, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """Unpickle a zip-format ``torch.save`` file with no code execution and no torch import.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pth`` / ``.bin`` / ``.ckpt`` file.
    limits : ReadLimits
        The memory budget (see :class:`ReadLimits`; the default suits any real checkpoint).

    Returns
    -------
    object
        The saved object with every tensor replaced by a numpy array (C-contiguous, the tensor's
        dtype; bfloat16/float8 as ``ml_dtypes``), allowed data holders by :class:`Placeholder`.

    Raises
    ------
    UnsafeCheckpointError
        The pickle names a global outside the allow-list.
    CheckpointLimitError
        Declared sizes, strides, views, memo indices or zip inflation beyond the file's bytes and
        the budget (checked before allocating).
    CheckpointFormatError
        Not a zip, truncated or corrupt archive, missing storage, encrypted or unsupported zip
        members, legacy (non-zip) torch serialization; any other failure of the reader (a
        ``RecursionError``, ``OverflowError``, ``MemoryError`` …) is reported as this too.
    """
    raw_path = os.fspath(path)
    path = escape(raw_path)
    try:
        return _load_torch_zip(raw_path, path, limits)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointLimitError(f"{path}: out of memory while reading the checkpoint") from None
    except Exception as e:  # a hostile file: whatever fails is the file's fault, in one line
        raise CheckpointFormatError(
            f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {escape(str(e), 200)})"
        ) from None


def _load_torch_zip(raw_path: str, path: str, limits: ReadLimits) -> Any:
    try:
        archive = zipfile.ZipFile(raw_path)
    except zipfile.BadZipFile as e:
        raise CheckpointFormatError(f"{path}: not a valid zip archive ({escape(e)})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}  # a dict: O(1) per storage
        root = _find_root(list(infos), path)
        budget = _Budget(limits, os.path.getsize(raw_path), path)
        big_endian = False
        if (order_info := infos.get(f"{root}/byteorder")) is not None:
            if order_info.file_size > 64:
                raise CheckpointFormatError(
                    f"{path}: byteorder member of {order_info.file_size} bytes (corrupt archive)"
                )
            order = _read_member(archive, order_info, path, budget).decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byteorder {brief(order)}")
            big_endian = order == "big"

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            member = f"{root}/data/{key}"
            info = infos.get(member)
            if info is None:
                raise CheckpointFormatError(
                    f"{path}: storage {escape(repr(member))} missing from the archive"
                )
            need = numel * dtype.itemsize
            if need > info.file_size:  # before reading: the member's size is in the directory
                raise CheckpointFormatError(
                    f"{path}: storage {escape(repr(member))} has {info.file_size} bytes, needs "
                    f"{need} (truncated file?)"
                )
            raw = _read_member(archive, info, path, budget)
            return _native(np.frombuffer(raw, dtype=dtype, count=numel), big_endian)

        pkl = infos[f"{root}/data.pkl"]
        data = _read_member(archive, pkl, path, budget)
        _scan_pickle(data, path, limits)
        try:
            return RestrictedUnpickler(io.BytesIO(data), load_storage, raw_path, budget).load()
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except (
            zipfile.BadZipFile,
            EOFError,
            pickle.UnpicklingError,
            zipfile.LargeZipFile,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            OSError,
        ) as e:
            raise CheckpointFormatError(
                f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {escape(str(e), 200)})"
            ) from None
