"""HF transformers attention modules and keys under the names of each transformers version.

transformers >= 5.2x holds q/k/v/o as ``attention.q_proj`` … ``attention.o_proj`` in memory;
earlier versions (and every ``save_pretrained`` file) use ``attention.attention.query`` …
``attention.output.dense``. DINOv2 switched later than ViT (5.17: ViT new, DINOv2 old).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers as tf

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


def hf_model(kind: str, patch: int, dim: int, heads: int, size: int, regs: int = 0, layers: int = 2) -> Any:
    """A ``layers``-block (default 2) random-init HF model in eval mode: ``ViTModel``
    (``kind="vit"``, no pooler), ``Dinov2Model``, or ``Dinov2WithRegistersModel`` when ``regs`` > 0;
    eager attention."""
    common = dict(
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=size,
        patch_size=patch,
        layer_norm_eps=1e-6,
        attn_implementation="eager",
    )
    if kind == "vit":
        model = tf.ViTModel(tf.ViTConfig(intermediate_size=4 * dim, **common), add_pooling_layer=False)
    elif regs:
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(num_register_tokens=regs, **common))
    else:
        model = tf.Dinov2Model(tf.Dinov2Config(**common))
    return model.eval()


def perturb(model: Any, seed: int) -> None:
    """Add N(0, 0.2²) to every parameter in place, so that no LayerNorm scale is 1 and no bias 0
    (a fixture whose every weight matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread():
    """One torch thread for the module that imports this fixture: on a small shared CPU, torch's
    thread pool contends with XLA's, and one thread is ~10x faster for these small models.
    Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
