"""``convert(src, dst)``: a PyTorch / safetensors / ONNX / big_vision npz ViT checkpoint → canonical
Flax params → Orbax.

The file is read without running code from it (see :mod:`arb_jax.convert.safe_pickle`), its layout
and architecture are detected from the tensor names and shapes (see :mod:`arb_jax.convert.formats`),
and the result is written with :mod:`arb_jax.convert.orbax_io`. ``arb convert SRC DST`` is
:func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arb_jax.convert.big_vision import big_vision_to_canonical, looks_like_big_vision
from arb_jax.convert.errors import CheckpointError, CheckpointFormatError, CheckpointLimitError
from arb_jax.convert.formats import to_canonical
from arb_jax.convert.onnx_reader import OnnxWeights
from arb_jax.convert.orbax_io import write_converted
from arb_jax.convert.readers import flatten_tree, load_tree, resolve_weights_file, sha256_file
from arb_jax.io.options import count
from arb_jax.io.text import escape
from arb_jax.models.config import ViTConfig

__all__ = ["convert", "main", "read_checkpoint"]


def _hf_config(weights: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = weights.parent / "config.json"
    if not path.is_file():
        return None, None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        return None, f"{escape(path)} ignored: not valid JSON ({escape(str(e), 200)})"
    if not isinstance(config, dict):
        return None, f"{escape(path)} ignored: not a JSON object"
    return config, None


def read_checkpoint(
    src: str | os.PathLike, *, heads: int | None = None, which: str = "teacher"
) -> tuple[ViTConfig, dict[str, Any], dict[str, Any]]:
    """Read and convert a checkpoint in memory (nothing written).

    Parameters
    ----------
    src : str | os.PathLike
        a ``.pth`` / ``.bin`` / ``.ckpt`` (zip-format ``torch.save``), ``.safetensors``,
        ``.onnx`` or big_vision ``.npz`` file (see :mod:`arb_jax.convert.big_vision`), or an HF
        model directory (``model.safetensors`` or ``pytorch_model.bin``).
    heads : int | None, default None
        number of attention heads (not derivable from shapes); default: what an ONNX graph's
        head-split Reshape says (a big_vision query kernel's shape), else
        ``num_attention_heads`` of an HF ``config.json`` beside the file, else the DINO
        convention ``dim // 64``.
    which : str, default 'teacher'
        branch of a DINO training checkpoint: ``"teacher"`` (default) or ``"student"``.

    Returns
    -------
    tuple[ViTConfig, dict[str, Any], dict[str, Any]]
        ``(config, params, meta)``: the inferred :class:`ViTConfig`, the canonical tree
        (float32 numpy) and ``meta`` (source name and path, sha256, file kind, detected format,
        dropped keys, notes).

    Raises
    ------
    CheckpointError
        anything wrong with the file, one line naming it (a subclass, see
        :mod:`arb_jax.convert.errors`: UnsafeCheckpointError, CheckpointFormatError,
        CheckpointLimitError, CheckpointKeysError, CheckpointIntegrityError,
        CheckpointArchitectureError, CheckpointNotFoundError — the last two also a ValueError /
        FileNotFoundError).
    ValueError
        bad ``heads`` / ``which`` arguments.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    weights = resolve_weights_file(src)
    try:
        tree, kind = load_tree(weights)
        extra_notes: list[str] = []
        dropped: list[str] = []
        pos_interp = None
        if isinstance(tree, OnnxWeights):
            arrays, others = tree.arrays, []
            hf_config = {
                k: v
                for k, v in (("num_attention_heads", tree.heads), ("layer_norm_eps", tree.eps))
                if v is not None
            }
            hf_config["_from"] = "the ONNX graph's"
            note = None
            extra_notes, dropped, pos_interp = tree.notes, tree.ignored, tree.pos_interp
            if pos_interp:
                extra_notes = [
                    *extra_notes,
                    f"position embeddings resampled with the {pos_interp!r} recipe (read off the ONNX graph)",
                ]
        else:
            arrays, others = flatten_tree(tree, path=weights)
            hf_config, note = _hf_config(weights)
        del tree
        if kind == "npz" and looks_like_big_vision(arrays):
            result = big_vision_to_canonical(arrays, heads=heads)
        else:
            result = to_canonical(
                arrays, others, which=which, heads=heads, hf_config=hf_config, pos_interp=pos_interp
            )
    except CheckpointError as e:
        raise e.with_path(weights) from None
    except MemoryError:
        raise CheckpointLimitError(f"{escape(weights)}: out of memory converting the checkpoint") from None
    except (
        RecursionError,
        OverflowError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        SystemError,
    ) as e:  # a hostile file the checks above missed: still one line
        raise CheckpointFormatError(
            f"{escape(weights)}: cannot convert ({type(e).__name__}: {escape(str(e), 200)})"
        ) from None
    meta = {
        "source": weights.name,
        "source_path": str(weights.absolute()),
        "sha256": sha256_file(weights),
        "file_kind": kind,
        "format": f"{result.container}/{result.layout}",
        "dropped": dropped + result.dropped,
        "notes": extra_notes + result.notes + ([note] if note else []),
    }
    return result.config, result.params, meta


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    heads: int | None = None,
    which: str = "teacher",
    overwrite: bool = False,
) -> tuple[ViTConfig, dict[str, Any]]:
    """Convert ``src`` and write ``dst/params`` (Orbax) and ``dst/arb_model.json``.

    Parameters
    ----------
    src, heads, which
        As :func:`read_checkpoint`.
    dst : str | os.PathLike
        The output folder (created).
    overwrite : bool, default False
        Replace an earlier conversion there.

    Returns
    -------
    tuple[ViTConfig, dict[str, Any]]
        ``(config, params)`` as written; read them back with ``load_converted(dst)``.
    """
    config, params, meta = read_checkpoint(src, heads=heads, which=which)
    write_converted(dst, config, params, meta, overwrite=overwrite)
    return config, params


DESCRIPTION = (
    "Convert a DINO / DINOv2 / timm / HF / big_vision ViT checkpoint (.pth, .bin, .ckpt, "
    ".safetensors, .onnx, .npz or an HF directory) to canonical Flax params saved with Orbax. The file is "
    "read without running code from it (an ONNX graph is never executed)."
)
EPILOG = """examples:
  arb convert dino_deitsmall8_pretrain.pth vits8/
  arb convert dino_checkpoint.pth vits8_student/ --which student
  arb convert hf_model/ vit/ --heads 6
  arb convert vit_s_focus.onnx imgfocus/     # an HF ViTModel / Dinov2Model ONNX export
  arb convert vit_s16_i1k.npz vits16_bv/     # a big_vision ViT (pool_type 'tok')
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``arb convert`` (shared by ``arb`` and ``python -m arb_jax.convert``)."""
    parser.add_argument("src", help="checkpoint file or HF model directory")
    parser.add_argument("dst", help="output directory (params/ and arb_model.json)")
    parser.add_argument(
        "--heads",
        type=count("--heads", 1, 1024),
        default=None,
        help="attention heads, 1 … 1024 (default: the ONNX graph or config.json, else dim // 64)",
    )
    parser.add_argument(
        "--which",
        choices=("teacher", "student"),
        default="teacher",
        help="branch of a DINO training checkpoint (default: teacher)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion")


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst`` and print what was done; errors propagate."""
    config, _ = convert(args.src, args.dst, heads=args.heads, which=args.which, overwrite=args.overwrite)
    meta = json.loads((Path(args.dst) / "arb_model.json").read_text())
    print(f"{args.src} → {args.dst}: {meta['format']}, {config}")
    for line in meta["dropped"]:
        print(f"  dropped {line}")
    for line in meta["notes"]:
        print(f"  note: {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m arb_jax.convert SRC DST [--heads N] [--which teacher|student] [--overwrite]
    [--debug]``: 0 when converted; on any error one escaped line ``arb convert: error: …`` on
    stderr and 1 (``--debug``: the traceback instead)."""
    parser = argparse.ArgumentParser(
        prog="arb convert",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as e:  # one clear line unless --debug
        if args.debug:
            raise
        print(f"arb convert: error: {escape(str(e) or type(e).__name__)}", file=sys.stderr)
        return 1
