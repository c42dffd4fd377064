"""arb-jax: Attention Regularization by the Bootstrap (ARB) for vision transformers in JAX/Flax.

Folders, from the bottom up (``docs/architecture.md``): ``models`` (the ViT), ``io`` (images,
files, figures), ``core`` (bootstrap → statistics → shrunk maps → ``regularize_attention``),
``convert`` (foreign checkpoints → canonical params), ``checkpoints`` (named models, downloads,
``load_vit``), ``study`` (the paper's simulation study), ``demo`` (the shipped demo ViT's
training) and ``cli`` (the ``arb`` command) at the edge. The public names below are imported
lazily, so ``arb --version`` does not start JAX; ``arb.stats``, ``arb.pipeline``… and the old
module paths (``import arb_jax.stats``) still reach the moved modules.
"""

from __future__ import annotations

import importlib
from typing import Any

from arb_jax import _moved

__version__ = "0.1.0"

_EXPORTS = {
    "ARBOptions": "arb_jax.core.pipeline",
    "ARBResult": "arb_jax.core.pipeline",
    "PRESETS": "arb_jax.core.options",
    "regularize_attention": "arb_jax.core.pipeline",
    "image_mesh": "arb_jax.core.pipeline",
    "null_images": "arb_jax.core.pipeline",
    "ViT": "arb_jax.models",
    "ViTConfig": "arb_jax.models",
    "build_vit": "arb_jax.models",
    "load_vit": "arb_jax.checkpoints.loading",
    "known_models": "arb_jax.checkpoints.loading",
    "load_images": "arb_jax.io.images",
    "plot_batch": "arb_jax.io.plotting",
    "plot_result": "arb_jax.io.plotting",
}

_SUBMODULES = {old.rpartition(".")[2]: new for old, new in _moved.MOVED.items()}
_SUBMODULES.update(
    {
        name: f"arb_jax.{name}"
        for name in ("checkpoints", "checks", "cli", "convert", "core", "demo", "io", "models", "study")
    }
)

__all__ = sorted(_EXPORTS)

_moved.install(_moved.MOVED)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'arb_jax' has no attribute {name!r}")
