"""DINO / DINOv2 vision transformers in Flax: configurations, the model, ready-to-run bundles, maps."""

from arb_jax.models.bundle import ViT, build_vit, random_params
from arb_jax.models.config import CONFIGS, ViTConfig, get_config
from arb_jax.models.maps import (
    MAPS,
    SIGNED_MAPS,
    MapFn,
    cdam_map,
    check_map_output,
    cls_attention_map,
    rollout_map,
)
from arb_jax.models.posembed import bicubic_matrix, interpolate_pos_embed
from arb_jax.models.vit import VisionTransformer, check_images

__all__ = [
    "CONFIGS",
    "MAPS",
    "SIGNED_MAPS",
    "MapFn",
    "ViT",
    "ViTConfig",
    "VisionTransformer",
    "bicubic_matrix",
    "build_vit",
    "cdam_map",
    "check_images",
    "check_map_output",
    "cls_attention_map",
    "get_config",
    "interpolate_pos_embed",
    "random_params",
    "rollout_map",
]
