"""Hostile and careless checkpoints (issue 17): bounded memory, one clear line, the right error.

Every file is built here, small: genuine ``torch.save`` files where torch can write the case
(a stride-0 ``expand``, many views of one storage), otherwise zip archives around pickles written
with :mod:`pickle` (torch's own rebuild globals, fake storages) or opcode by opcode. The memory
cases run the reader in a subprocess under ``RLIMIT_AS`` (3 GiB, JAX not imported), so that a
regression fails there instead of exhausting the machine; each must also stay under 2 GB of peak
RSS and raise the documented error with one line naming the file and the problem.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import arb_jax.convert as wc
from arb_jax.convert import read_checkpoint
from arb_jax.convert.errors import (
    CheckpointArchitectureError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointIntegrityError,
    CheckpointKeysError,
    CheckpointLimitError,
    CheckpointNotFoundError,
)

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30
CAP = 3 * GiB  # address space of the capped reader
RSS_MAX = 2 * 10**9  # the promise: peak RSS under 2 GB for any input under 10 MB


# --------------------------------------------------------------------------------------------
# Writing crafted torch zips


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch's own ``_rebuild_tensor_v2(storage, offset, size, stride, …)``."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def tensor_pickle(obj) -> bytes:
    """``obj`` pickled as ``torch.save`` does (protocol 2, storages as persistent ids)."""
    import io

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_zip(
    path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, compression: int = zipfile.ZIP_STORED
) -> Path:
    """A zip laid out as ``torch.save`` lays it out: ``archive/data.pkl``, ``archive/data/K``."""
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


def patch_member_header(
    path: Path, name: str, *, flags: int | None = None, method: int | None = None
) -> None:
    """Rewrite the general-purpose flags or the compression method of member ``name`` in both
    its local header and its central-directory entry."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for sig, flag_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            start = i + 4
            if data[i + name_at : i + name_at + len(encoded)] != encoded:
                continue
            if flags is not None:
                data[i + flag_at : i + flag_at + 2] = struct.pack("<H", flags)
            if method is not None:
                data[i + method_at : i + method_at + 2] = struct.pack("<H", method)
    path.write_bytes(bytes(data))


def deflated_zeros(
    z: zipfile.ZipFile, name: str, nbytes: int, head: bytes = b"", tail: bytes = b"", fill: bytes = b"\x00"
) -> None:
    """Stream a deflated member of ``head + nbytes × fill + tail`` (never held in memory)."""
    chunk = fill * (1 << 22)
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with z.open(info, "w", force_zip64=True) as f:
        f.write(head)
        for _ in range(nbytes // len(chunk)):
            f.write(chunk)
        f.write(fill * (nbytes % len(chunk)))
        f.write(tail)


# --------------------------------------------------------------------------------------------
# The hostile files of the memory cases


def case_stride0_expand(d: Path) -> Path:
    """torch.expand saved as is: 4 bytes of storage standing for a 40000 x 40000 float32."""
    torch.save({"w": torch.zeros(1).expand(40000, 40000)}, d / "expand.pth")
    return d / "expand.pth"


def case_many_views(d: Path) -> Path:
    """3000 views of one 1 MiB storage, each copied by the reader: 3 GB."""
    base = torch.zeros(1 << 18)
    torch.save({f"v{i}": base.view(512, 512) for i in range(3000)}, d / "views.pth")
    return d / "views.pth"


def case_crafted_stride0(d: Path) -> Path:
    storage = _Storage("0", 1)
    pkl = tensor_pickle({"w": _Tensor(storage, 0, (1 << 20, 1 << 20), (0, 0))})
    return torch_zip(d / "stride0.pth", pkl, {"0": bytes(4)})


def case_memo_dag(d: Path) -> Path:
    """Memo references forming a DAG: 60 levels of [a, a], a tree of 2**60 leaves."""
    a: object = "leaf"
    for _ in range(60):
        a = [a, a]
    return torch_zip(d / "dag.pth", pickle.dumps({"x": a}, protocol=2))


def case_deep_nesting(d: Path) -> Path:
    """10**5 nested lists, written opcode by opcode (pickle itself would recurse)."""
    n = 100_000
    pkl = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    return torch_zip(d / "deep.pth", pkl)


def case_self_reference(d: Path) -> Path:
    a: list = []
    a.append(a)
    return torch_zip(d / "selfref.pth", pickle.dumps({"x": a}, protocol=2))


def case_memo_index(d: Path) -> Path:
    """LONG_BINPUT 2**31: the C unpickler would grow its memo to 2**32 slots (32 GB)."""
    return torch_zip(d / "memo.pth", b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 31) + b".")


def case_inflated_storage(d: Path) -> Path:
    """A deflated storage member of 300 MB of zeros (300 KB in the file)."""
    path = d / "inflated.pth"
    numel = 75_000_000
    pkl = tensor_pickle({"w": _Tensor(_Storage("0", numel), 0, (numel,), (1,))})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        deflated_zeros(z, "archive/data/0", 4 * numel)
    return path


def case_inflated_pickle(d: Path) -> Path:
    """A deflated data.pkl of 200 MB: one BINBYTES8 of zeros."""
    path = d / "inflated_pkl.pth"
    n = 200_000_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        deflated_zeros(z, "archive/data.pkl", n, head=b"\x80\x04\x8e" + struct.pack("<Q", n), tail=b".")
    return path


def case_object_flood(d: Path) -> Path:
    """60 MB of EMPTY_SET opcodes, deflated (within the inflation budget): 14 GB of sets."""
    path = d / "sets.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        deflated_zeros(z, "archive/data.pkl", 60_000_000, head=b"\x80\x04", tail=b".", fill=b"\x8f")
    return path


def case_set_flood(d: Path) -> Path:
    """5 MB of EMPTY_SET opcodes, stored: under the opcode count, over the budget (1.2 GB)."""
    return torch_zip(d / "fewsets.pth", b"\x80\x04" + b"\x8f" * 5_000_000 + b".")


def case_huge_numel(d: Path) -> Path:
    pkl = tensor_pickle({"w": _Tensor(_Storage("0", 1 << 62), 0, (2,), (1,))})
    return torch_zip(d / "numel.pth", pkl, {"0": bytes(8)})


MEMORY_CASES = {
    # name: (builder, error class, what the message must say)
    "stride0_expand": (
        case_stride0_expand,
        CheckpointLimitError,
        r"size \(40000, 40000\) \(stride \(0, 0\)\).* would take 6400000000 bytes",
    ),
    "crafted_stride0": (case_crafted_stride0, CheckpointLimitError, r"would take \d+ bytes"),
    "many_views": (
        case_many_views,
        CheckpointLimitError,
        r"would take 1048576 bytes; the tensors of this file may take",
    ),
    "memo_dag": (case_memo_dag, CheckpointLimitError, r"shared containers"),
    "deep_nesting": (case_deep_nesting, CheckpointLimitError, r"nested more than 100 deep"),
    "self_reference": (
        case_self_reference,
        CheckpointLimitError,
        r"the container at 'x' contains itself \(again at 'x\.0'\)",
    ),
    "memo_index": (case_memo_index, CheckpointLimitError, r"memo index 2147483648"),
    "inflated_storage": (
        case_inflated_storage,
        CheckpointLimitError,
        r"'archive/data/0' inflates to 300000000 bytes, beyond the budget",
    ),
    "inflated_pickle": (
        case_inflated_pickle,
        CheckpointLimitError,
        r"'archive/data.pkl' inflates to 200000012 bytes, beyond the budget",
    ),
    "object_flood": (
        case_object_flood,
        CheckpointLimitError,
        r"would build more than 536870912 bytes of objects \(over 5368709 opcodes\)",
    ),
    "set_flood": (
        case_set_flood,
        CheckpointLimitError,
        r"would build about 1\d{9} bytes of objects \(5000002 opcodes, 5000000 sets\)",
    ),
    "huge_numel": (
        case_huge_numel,
        CheckpointFormatError,
        r"'archive/data/0' has 8 bytes, needs 18446744073709551616",
    ),
}

_CAPPED_READER = r"""
import json, resource, sys, types
cap, root, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
# The packages' __init__ import the converter and the model, which import JAX: load the reader
# modules alone.
for name, folder in (("arb_jax.convert", "/arb_jax/convert"), ("arb_jax.io", "/arb_jax/io")):
    package = types.ModuleType(name)
    package.__path__ = [root + folder]
    sys.modules[name] = package
from arb_jax.convert.errors import CheckpointError
from arb_jax.convert.readers import flatten_tree, load_tree
out = {}
try:
    tree, kind = load_tree(path)
    arrays, others = flatten_tree(tree, path=path)
    out["result"] = f"{len(arrays)} arrays, {len(others)} other leaves"
except CheckpointError as e:
    out.update(error=type(e).__name__, message=str(e))
out["jax"] = "jax" in sys.modules
# VmHWM: the peak RSS of this process image (ru_maxrss would include the forking parent's)
with open("/proc/self/status") as f:
    out["maxrss"] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps(out))
"""


def read_capped(path: Path, cap: int = CAP) -> dict:
    """``load_tree`` + ``flatten_tree`` of ``path`` in a subprocess under ``RLIMIT_AS = cap``."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CAPPED_READER, str(cap), str(ROOT), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(MEMORY_CASES))
def test_small_hostile_file_is_refused_within_bounded_memory(tmp_path, name):
    build, error, pattern = MEMORY_CASES[name]
    path = build(tmp_path)
    assert path.stat().st_size < 10 * 10**6, "the hostile file must be small"
    out = read_capped(path)
    assert not out["jax"]
    assert out.get("error") == error.__name__, out
    message = out["message"]
    assert "\n" not in message and message.startswith(str(path)), message
    assert re.search(pattern, message), message
    assert "out of memory" not in message, message  # refused by a check, not by the cap
    assert out["maxrss"] < RSS_MAX, f"peak RSS {out['maxrss'] / 1e9:.2f} GB"


def test_the_capped_reader_still_reads_a_genuine_checkpoint(tmp_path):
    # The cap and the checks leave honest files alone, views of one storage and expands
    # included while they stay within the budget.
    base = torch.arange(12.0)
    sd = {
        "a": base.view(3, 4),
        "b": base[2:6],
        "t": base.view(3, 4).t(),
        "e": torch.ones(1).expand(16, 16),
        "empty": torch.zeros(0, 5),
        "w": torch.randn(256, 256),
    }
    torch.save(sd, tmp_path / "ok.pth")
    out = read_capped(tmp_path / "ok.pth")
    assert out.get("result") == "6 arrays, 0 other leaves", out
    tree = wc.load_tree(tmp_path / "ok.pth")[0]
    for k, v in sd.items():
        np.testing.assert_array_equal(tree[k], v.numpy(), err_msg=k)


def case_every_budget_nearly_full(d: Path) -> Path:
    """A 7 MB file just inside every budget: 55 MB of deflated storage (with data.pkl, 62 of the
    67 MB of inflation allowed), three copied views of it (165 of 177 MB of tensors), and 1.2
    million distinct containers (about 270 of the 512 MiB of pickle objects)."""
    path = d / "full.pth"
    numel = 55_000_000 // 4
    storage = _Storage("0", numel)
    tree = {f"w{i}": _Tensor(storage, 0, (numel,), (1,)) for i in range(3)}
    tree["x"] = [{} for _ in range(1_200_000)]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", tensor_pickle(tree))
        deflated_zeros(z, "archive/data/0", 4 * numel)
    return path


def test_a_file_inside_every_budget_is_read_in_bounded_memory(tmp_path):
    path = case_every_budget_nearly_full(tmp_path)
    assert path.stat().st_size < 10 * 10**6
    out = read_capped(path)
    assert out.get("result") == "3 arrays, 0 other leaves", out  # the containers are empty
    assert out["maxrss"] < RSS_MAX, f"peak RSS {out['maxrss'] / 1e9:.2f} GB"


def test_limits_are_the_stated_budget(tmp_path):
    # 64 MiB + 2 x storage bytes: exactly at the budget loads, one element more is refused.
    limits = wc.safe_pickle.ReadLimits(tensor_floor=1000, tensor_ratio=2.0)
    storage = _Storage("0", 100)  # 400 bytes -> a budget of 1000 + 800 bytes
    ok = {"a": _Tensor(storage, 0, (450,), (0,))}  # 1800 bytes
    torch_zip(tmp_path / "ok.pth", tensor_pickle(ok), {"0": bytes(400)})
    assert wc.load_torch_zip(tmp_path / "ok.pth", limits=limits)["a"].shape == (450,)
    over = {"a": _Tensor(storage, 0, (450,), (0,)), "b": _Tensor(storage, 0, (1,), (1,))}
    torch_zip(tmp_path / "over.pth", tensor_pickle(over), {"0": bytes(400)})
    with pytest.raises(CheckpointLimitError, match=r"may take 1800 bytes in all .* 1800 are taken"):
        wc.load_torch_zip(tmp_path / "over.pth", limits=limits)


def test_a_many_tensor_checkpoint_opens_in_linear_time(tmp_path):
    # Storages were looked up in a list: 60k tensors took 13x the time of 15k (19.5 s); 32k take
    # 11x the time of 8k. CPU time of this process, best of two, so that a loaded machine does
    # not decide the ratio.
    times = {}
    for n in (8_000, 32_000):
        torch.save({f"t{i}": torch.zeros(2) for i in range(n)}, tmp_path / f"{n}.pth")
        runs = []
        for _ in range(2):
            t0 = time.process_time()
            arrays, _ = wc.flatten_tree(wc.load_tree(tmp_path / f"{n}.pth")[0])
            runs.append(time.process_time() - t0)
        assert len(arrays) == n
        times[n] = min(runs)
    assert times[32_000] < 7 * times[8_000], times  # 4x the tensors; quadratic gives ~11x


# --------------------------------------------------------------------------------------------
# The documented exception hierarchy: no RecursionError, OverflowError, RuntimeError,
# NotImplementedError, TypeError escapes read_checkpoint


def _one_line_naming(exc: BaseException, path: Path, *words: str) -> str:
    text = str(exc)
    assert "\n" not in text and "\x1b" not in text, text
    assert str(path) in text, text
    for w in words:
        assert w in text, text
    return text


def test_stride_beyond_2_to_the_64_is_a_format_error(tmp_path):
    storage = _Storage("0", 2)
    path = torch_zip(
        tmp_path / "stride.pth", tensor_pickle({"w": _Tensor(storage, 0, (2,), (1 << 64,))}), {"0": bytes(8)}
    )
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(path)
    _one_line_naming(info.value, path, "reads element 18446744073709551616")
    path = torch_zip(
        tmp_path / "offset.pth", tensor_pickle({"w": _Tensor(storage, 1 << 64, (2,), (1,))}), {"0": bytes(8)}
    )
    with pytest.raises(CheckpointFormatError, match="reads element 18446744073709551617"):
        read_checkpoint(path)
    # a huge stride along a dimension of size 1 is never used: read, not an OverflowError
    path = torch_zip(
        tmp_path / "unused.pth",
        tensor_pickle({"w": _Tensor(storage, 0, (1, 2), (1 << 64, 1))}),
        {"0": struct.pack("<2f", 1.5, 2.5)},
    )
    np.testing.assert_array_equal(wc.load_torch_zip(path)["w"], [[1.5, 2.5]])


@pytest.mark.parametrize("case", ["deep_nesting", "self_reference", "memo_dag"])
def test_recursive_containers_are_limit_errors_not_recursion_errors(tmp_path, case):
    path = MEMORY_CASES[case][0](tmp_path)
    with pytest.raises(CheckpointLimitError) as info:
        read_checkpoint(path)
    assert isinstance(info.value, CheckpointFormatError)
    _one_line_naming(info.value, path)


def test_encrypted_and_unknown_compression_members(tmp_path):
    pkl = pickle.dumps({"x": 1}, protocol=2)
    enc = torch_zip(tmp_path / "encrypted.pth", pkl)
    patch_member_header(enc, "archive/data.pkl", flags=0x1)
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(enc)
    _one_line_naming(info.value, enc, "'archive/data.pkl' is encrypted")
    for method in (99, zipfile.ZIP_BZIP2):
        odd = torch_zip(tmp_path / f"method{method}.pth", pkl)
        patch_member_header(odd, "archive/data.pkl", method=method)
        with pytest.raises(CheckpointFormatError) as info:
            read_checkpoint(odd)
        _one_line_naming(info.value, odd, f"compression method {method}")


def test_deflated_members_within_the_budget_are_read(tmp_path):
    sd = {"w": _Tensor(_Storage("0", 4), 0, (2, 2), (2, 1))}
    path = torch_zip(
        tmp_path / "deflated.pth",
        tensor_pickle(sd),
        {"0": struct.pack("<4f", 1, 2, 3, 4)},
        compression=zipfile.ZIP_DEFLATED,
    )
    np.testing.assert_array_equal(wc.load_torch_zip(path)["w"], [[1, 2], [3, 4]])


def test_corrupt_pickles_are_format_errors(tmp_path):
    cases = {
        "unknown_opcode": b"\x80\x02\xfe.",
        "lying_length": b"\x80\x02X\xff\xff\xff\x7fabc.",
        "frame_past_end": b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",
        "no_stop": b"\x80\x02N",
        "int_too_long": b"\x80\x02L" + b"9" * 5000 + b"L\n.",
        "bad_memo_get": b"\x80\x02h\x05.",
    }
    for name, pkl in cases.items():
        path = torch_zip(tmp_path / f"{name}.pth", pkl)
        with pytest.raises(CheckpointFormatError) as info:
            read_checkpoint(path)
        _one_line_naming(info.value, path)


def _safetensors(path: Path, header: bytes, data: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(
    "header, problem",
    [
        (b'{"w": {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [0, 4]}}', "offset for tensor"),
        (
            b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            b'"b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            "offset for tensor",
        ),
        (
            b'{"w": {"dtype": "F32", "shape": [18446744073709551617], "data_offsets": [0, 4]}}',
            "Error while deserializing header",
        ),
        (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "Error while deserializing header"),
    ],
)
def test_hostile_safetensors_headers_are_one_line_format_errors(tmp_path, header, problem):
    path = _safetensors(tmp_path / "hostile.safetensors", header, bytes(4))
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(path)
    _one_line_naming(info.value, path, "corrupt or truncated safetensors file", problem)


def test_missing_checkpoint_is_a_checkpoint_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as info:
        read_checkpoint(tmp_path / "nothere.pth")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)


# --------------------------------------------------------------------------------------------
# Integrity at conversion


def small_vit(dim=64, depth=1, patch=8, grid=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        for name, shape in (
            ("norm1.weight", (dim,)),
            ("norm1.bias", (dim,)),
            ("attn.qkv.weight", (3 * dim, dim)),
            ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)),
            ("attn.proj.bias", (dim,)),
            ("norm2.weight", (dim,)),
            ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (4 * dim, dim)),
            ("mlp.fc1.bias", (4 * dim,)),
            ("mlp.fc2.weight", (dim, 4 * dim)),
            ("mlp.fc2.bias", (dim,)),
        ):
            sd[b + name] = r(*shape)
    sd["norm.weight"], sd["norm.bias"] = r(dim), r(dim)
    return sd


def test_the_small_vit_fixture_converts(tmp_path):
    torch.save(small_vit(), tmp_path / "ok.pth")
    config, params, _ = read_checkpoint(tmp_path / "ok.pth")
    assert config.dim == 64 and config.depth == 1
    np.testing.assert_array_equal(params["norm"]["scale"], small_vit()["norm.weight"].numpy())


def test_a_parameter_with_two_sources_is_an_error_naming_both(tmp_path):
    sd = small_vit()
    sd["blocks"] = {"0": {"norm1": {"weight": torch.full((64,), 1000.0)}}}  # the shadow
    torch.save(sd, tmp_path / "shadow.pth")
    with pytest.raises(CheckpointIntegrityError) as info:
        read_checkpoint(tmp_path / "shadow.pth")
    text = _one_line_naming(
        info.value,
        tmp_path / "shadow.pth",
        "'blocks.0.norm1.weight'",
        "['blocks.0.norm1.weight']",
        "['blocks']['0']['norm1']['weight']",
    )
    assert "shadow" in text
    assert info.value.tensors == ["['blocks.0.norm1.weight']", "['blocks']['0']['norm1']['weight']"]
    assert isinstance(info.value, CheckpointKeysError)


def test_backbone_and_head_sources_for_one_parameter_are_an_error(tmp_path):
    # An HF task model: vit.* holds a stray head.weight beside classifier.* (renamed head.*).
    sd = {f"vit.{k}": v for k, v in small_vit().items()}
    sd["vit.head.weight"], sd["vit.head.bias"] = torch.zeros(5, 64), torch.zeros(5)
    sd["classifier.weight"], sd["classifier.bias"] = torch.ones(5, 64), torch.ones(5)
    arrays = {k: v.numpy() for k, v in sd.items()}
    # the DINO-named layout keeps the backbone's own head.*: it clashes with classifier.*
    with pytest.raises(CheckpointKeysError, match="two classification heads|two sources"):
        wc.to_canonical(arrays)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_an_error_naming_the_tensors(tmp_path, bad):
    sd = small_vit()
    sd["blocks.0.attn.qkv.weight"][3, :2] = bad
    sd["norm.bias"][0] = bad
    torch.save({k: v.half() if k == "norm.bias" else v for k, v in sd.items()}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointIntegrityError) as info:
        read_checkpoint(tmp_path / "nan.pth")
    what = {"nan": "NaN", "inf": "+inf", "-inf": "-inf"}[str(bad)]
    text = _one_line_naming(
        info.value,
        tmp_path / "nan.pth",
        "non-finite weights",
        f"blocks.0.attn.qkv.weight (2 {what})",
        f"norm.bias (1 {what})",
    )
    assert "in 2 tensor(s)" in text
    assert sorted(info.value.tensors) == ["blocks.0.attn.qkv.weight", "norm.bias"]


# --------------------------------------------------------------------------------------------
# Text from files escaped


HOSTILE = "evil\x1b]0;pwned\x07\x1b[31m\nforged line\u202e"


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\n" not in text and "\u202e" not in text
    assert "\\x1b]0;pwned\\x07\\x1b[31m\\nforged line\\u202e" in text, text


def test_key_names_from_the_file_are_escaped_in_errors(tmp_path):
    sd = small_vit()
    sd[HOSTILE] = torch.zeros(2)
    torch.save(sd, tmp_path / "keys.pth")
    with pytest.raises(CheckpointKeysError) as info:
        read_checkpoint(tmp_path / "keys.pth")
    _assert_escaped(str(info.value))


def test_key_names_are_escaped_in_notes_and_dropped_lines(tmp_path):
    sd = {
        "teacher": small_vit(),
        "student": small_vit(seed=1),
        HOSTILE: "a note",
        "optimizer": {HOSTILE: torch.zeros(3)},
    }
    torch.save(sd, tmp_path / "dino.pth")
    _, _, meta = read_checkpoint(tmp_path / "dino.pth")
    notes = [n for n in meta["notes"] if "non-tensor entries ignored" in n]
    assert len(notes) == 1
    _assert_escaped(notes[0])
    dropped = [d for d in meta["dropped"] if "optimizer" in d]
    assert dropped and all("\x1b" not in d and "\n" not in d for d in meta["dropped"]), dropped


def test_file_names_with_control_characters_stay_one_line(tmp_path):
    path = tmp_path / f"{HOSTILE}.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(path)
    _assert_escaped(str(info.value))
    with pytest.raises(CheckpointNotFoundError) as info:
        read_checkpoint(tmp_path / f"{HOSTILE}-missing.pth")
    _assert_escaped(str(info.value))


# --------------------------------------------------------------------------------------------
# python -m weights_convert: one line, status 1, no traceback (--debug shows it)


def _convert_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "weights_convert", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_m_weights_convert_prints_one_escaped_line(tmp_path):
    bad = case_deep_nesting(tmp_path)
    named = tmp_path / f"{HOSTILE}.pth"
    bad.rename(named)
    proc = _convert_cli(str(named), str(tmp_path / "out"))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("arb convert: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "nested more than 100 deep" in lines[0]
    _assert_escaped(lines[0])
    proc = _convert_cli(str(named), str(tmp_path / "out"), "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "CheckpointLimitError" in proc.stderr


def test_inflation_and_tensor_budgets_documented_match_the_defaults():
    limits = wc.safe_pickle.DEFAULT_LIMITS
    doc = wc.safe_pickle.__doc__
    assert limits.inflate_floor == 64 << 20 and limits.inflate_ratio == 8
    assert "max(64 MiB, 8 × the file's size)" in doc
    assert limits.tensor_floor == 64 << 20 and limits.tensor_ratio == 2
    assert "64 MiB + 2 × the bytes of the storages read" in doc
    assert limits.pickle_objects == 512 << 20 and "at no more than 512 MiB" in doc
    assert math.isclose(limits.tensor_ratio, 2.0)


def test_the_whole_hierarchy_is_documented():
    doc = wc.errors.__doc__
    for cls in (
        CheckpointError,
        CheckpointFormatError,
        CheckpointLimitError,
        CheckpointKeysError,
        CheckpointIntegrityError,
        CheckpointArchitectureError,
        CheckpointNotFoundError,
        wc.UnsafeCheckpointError,
    ):
        assert cls.__name__ in doc
        assert issubclass(cls, CheckpointError)
    assert issubclass(CheckpointArchitectureError, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_crc_of_deflate_helper_roundtrips(tmp_path):
    # the helper that writes the bomb cases writes valid zip members
    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as z:
        deflated_zeros(z, "m", 5 << 20, head=b"ab", tail=b"cd")
    with zipfile.ZipFile(tmp_path / "z.zip") as z:
        data = z.read("m")
    assert data[:2] == b"ab" and data[-2:] == b"cd" and len(data) == (5 << 20) + 4
    assert zlib.crc32(data) == z.getinfo("m").CRC
