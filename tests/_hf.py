"""HF transformers attention modules and keys under the names of each transformers version.

transformers >= 5.2x holds q/k/v/o as ``attention.q_proj`` … ``attention.o_proj`` in memory;
earlier versions (and every ``save_pretrained`` file) use ``attention.attention.query`` …
``attention.output.dense``. DINOv2 switched later than ViT (5.17: ViT new, DINOv2 old).
"""

from __future__ import annotations

from typing import Any

NEW = ("q_proj", "k_proj", "v_proj", "o_proj")
OLD = ("attention.query", "attention.key", "attention.value", "output.dense")


def attention_linears(attention: Any) -> tuple[Any, Any, Any, Any]:
    """(q, k, v, o) ``nn.Linear`` modules of an HF ViT/DINOv2 layer's ``attention`` module."""
    names = NEW if hasattr(attention, "q_proj") else OLD
    return tuple(attention.get_submodule(name) for name in names)


def attention_keys(sd: dict[str, Any], prefix: str) -> tuple[str, str, str, str]:
    """(q, k, v, o) key prefixes (without ``.weight``) under ``prefix`` (``….attention.``) in sd."""
    names = NEW if prefix + "q_proj.weight" in sd else OLD
    return tuple(prefix + name for name in names)
