"""arb-jax: Attention Regularization by the Bootstrap (ARB) for vision transformers in JAX/Flax.

Flow: image → ``bootstrap`` (null images) → ``models`` (CLS attention) → ``stats`` (z, p, lfdr, π₀)
→ ``regularize`` (shrunk maps) → ``simulate``/``metrics`` (evaluation) → ``cli``/``plotting``.
The public names below are imported lazily, so ``arb --version`` does not start JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ARBOptions": "arb_jax.pipeline",
    "ARBResult": "arb_jax.pipeline",
    "regularize_attention": "arb_jax.pipeline",
    "image_mesh": "arb_jax.pipeline",
    "null_images": "arb_jax.pipeline",
    "ViT": "arb_jax.models",
    "ViTConfig": "arb_jax.models",
    "build_vit": "arb_jax.models",
    "load_vit": "arb_jax.loading",
    "known_models": "arb_jax.loading",
    "load_images": "arb_jax.images",
    "plot_result": "arb_jax.plotting",
}

_SUBMODULES = ("bootstrap", "finetune", "hub", "images", "loading", "metrics", "models", "pipeline",
               "plotting", "regularize", "report", "simulate", "stats", "sweep")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"arb_jax.{name}")
    raise AttributeError(f"module 'arb_jax' has no attribute {name!r}")
