"""Safe conversion of PyTorch / safetensors / ONNX / big_vision npz ViT checkpoints to canonical
Flax params (Orbax).

    config, params = convert("dino_deitsmall8_pretrain.pth", "ckpt/dino_vits8")
    config, params, meta = load_converted("ckpt/dino_vits8")
    config, params, meta = read_checkpoint("facebook-dinov2-small/")   # in memory

PyTorch pickles are read by a restricted unpickler: no code from the file runs, torch is not
imported; a pickle that names anything but tensor rebuilding, plain containers and inert data
holders raises :class:`UnsafeCheckpointError`. Every problem with a file raises a
:class:`CheckpointError` (the hierarchy is in :mod:`arb_jax.convert.errors`), within a memory
budget stated by :class:`ReadLimits`.
"""

from arb_jax.convert.big_vision import big_vision_to_canonical
from arb_jax.convert.convert import convert, main, read_checkpoint
from arb_jax.convert.errors import (
    CheckpointArchitectureError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointIntegrityError,
    CheckpointKeysError,
    CheckpointLimitError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)
from arb_jax.convert.formats import canonical_shapes, to_canonical
from arb_jax.convert.onnx_reader import OnnxWeights, read_onnx
from arb_jax.convert.orbax_io import load_converted, restore_params, save_params
from arb_jax.convert.readers import flatten_tree, load_tree, sha256_file
from arb_jax.convert.safe_pickle import DEFAULT_LIMITS, Placeholder, ReadLimits, load_torch_zip

__all__ = [
    "DEFAULT_LIMITS",
    "CheckpointArchitectureError",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointIntegrityError",
    "CheckpointKeysError",
    "CheckpointLimitError",
    "CheckpointNotFoundError",
    "Placeholder",
    "ReadLimits",
    "UnsafeCheckpointError",
    "big_vision_to_canonical",
    "canonical_shapes",
    "convert",
    "flatten_tree",
    "load_converted",
    "load_torch_zip",
    "load_tree",
    "OnnxWeights",
    "read_onnx",
    "main",
    "read_checkpoint",
    "restore_params",
    "save_params",
    "sha256_file",
    "to_canonical",
]
