"""Save and load converted checkpoints: Orbax params plus a JSON record of where they came from.

Layout of a converted checkpoint directory ``dst``::

    dst/params/          Orbax (``StandardCheckpointer``) checkpoint of the canonical tree
    dst/arb_model.json   {"format_version", "config", "source", "sha256", "format", "dropped", …}

The JSON is written last, so its presence marks a complete conversion.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from arb_jax.convert.errors import CheckpointFormatError, CheckpointKeysError
from arb_jax.convert.formats import canonical_shapes, flatten_params
from arb_jax.io.files import write_text_atomic
from arb_jax.models.config import ViTConfig

__all__ = ["META_FILE", "PARAMS_DIR", "load_converted", "restore_params", "save_params", "write_converted"]

PARAMS_DIR = "params"
META_FILE = "arb_model.json"
FORMAT_VERSION = 1


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_params(path: str | os.PathLike, params: dict[str, Any]) -> None:
    """Write a params tree (nested dicts of arrays) as an Orbax checkpoint at ``path`` (new dir)."""
    ckptr = _checkpointer()
    try:
        ckptr.save(Path(path).absolute(), params)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()


def restore_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read an Orbax params checkpoint back as nested dicts of float32 numpy arrays."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no Orbax checkpoint at {path}")
    ckptr = _checkpointer()
    try:
        tree = ckptr.restore(path)
    finally:
        ckptr.close()

    def to_numpy(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: to_numpy(v) for k, v in node.items()}
        return np.asarray(node, dtype=np.float32)

    return to_numpy(tree)


def write_converted(
    dst: str | os.PathLike,
    config: ViTConfig,
    params: dict[str, Any],
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``dst/params`` (Orbax) and ``dst/arb_model.json`` (``config`` + ``meta``).

    Raises
    ------
    FileExistsError
        ``dst`` already holds a converted checkpoint and ``overwrite`` is False.
    """
    dst = Path(dst).absolute()
    params_dir, meta_file = dst / PARAMS_DIR, dst / META_FILE
    if params_dir.exists() or meta_file.exists():
        if not overwrite:
            raise FileExistsError(
                f"{dst} already holds a converted checkpoint (pass overwrite=True to replace it)"
            )
        meta_file.unlink(missing_ok=True)
        shutil.rmtree(params_dir, ignore_errors=True)
    dst.mkdir(parents=True, exist_ok=True)
    save_params(params_dir, params)
    record = {"format_version": FORMAT_VERSION, "config": config.to_dict(), **meta}
    write_text_atomic(meta_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return dst


def load_converted(dst: str | os.PathLike) -> tuple[ViTConfig, dict[str, Any], dict[str, Any]]:
    """Load a directory written by :func:`arb_jax.convert.convert`.

    Returns
    -------
    tuple[ViTConfig, dict[str, Any], dict[str, Any]]
        ``(config, params, meta)``: the :class:`ViTConfig`, the canonical tree (float32 numpy)
        and the JSON record (source, sha256, format, dropped keys, notes).

    Raises
    ------
    FileNotFoundError
        ``dst`` has no ``arb_model.json`` or ``params``.
    CheckpointFormatError
        the JSON is unreadable or of another format version.
    CheckpointKeysError
        the params do not match the recorded config.
    """
    dst = Path(dst).absolute()
    meta_file = dst / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{dst} is not a converted checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
        version = meta.get("format_version")
        config = ViTConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointFormatError(f"{meta_file}: unreadable ({type(e).__name__}: {e})") from None
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{meta_file}: format_version {version!r}, this reader knows {FORMAT_VERSION}"
        )
    params = restore_params(dst / PARAMS_DIR)
    want = canonical_shapes(config)
    got = {path: tuple(leaf.shape) for path, leaf in flatten_params(params).items()}
    if got != want:
        raise CheckpointKeysError(
            f"{dst / PARAMS_DIR} does not match the config in {META_FILE}",
            missing=["/".join(p) for p in want if p not in got],
            unexpected=["/".join(p) for p in got if p not in want],
            misshaped=[
                f"{'/'.join(p)}: expected {want[p]}, got {got[p]}"
                for p in want
                if p in got and got[p] != want[p]
            ],
        )
    return config, params, meta
