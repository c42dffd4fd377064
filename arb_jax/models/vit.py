"""DINO / DINOv2 vision transformer in Flax linen, returning the last block's CLS attention.

Small modules that read like the architecture: ``PatchEmbed`` → [CLS, registers…, patches…] →
``Block`` × (L − 1) → ``ClsBlock`` (the last block, CLS query only) → final LayerNorm.
Parameter names follow the canonical tree of ``arb_jax.models`` (timm/DINO names).

Precision: with ``dtype=jnp.float32`` everything is float32 (pass ``precision="highest"`` to
keep float32 matmuls exact on GPUs/TPUs, which otherwise may use TF32/bf16 passes). With
``dtype=jnp.bfloat16`` the matmuls (the patch embedding included) take bfloat16 inputs and
accumulate in float32; parameters, the residual stream, LayerNorm and softmax stay float32.

Attention of the blocks before the last (``attention``): "blocked" on a CPU, XLA's
``jax.nn.dot_product_attention`` elsewhere, and its cuDNN (flash) kernel on a GPU in bfloat16.
"blocked" loops over (image, head) pairs and blocks of ``ATTENTION_BLOCK`` queries, so each
block's (queries × keys) scores stay in cache between the softmax and the product with the
values; XLA on a CPU otherwise writes and re-reads all N² scores of every head several times
(2–3× slower per block at 3722 tokens, see ``bench/README.md``). ``ARB_ATTENTION`` in the
environment (``xla`` | ``blocked`` | ``cudnn``) overrides the automatic choice at trace time.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arb_jax.models.config import ViTConfig
from arb_jax.models.posembed import interpolate_pos_embed

Dtype = Any
F32 = jnp.float32


def _matmul(x, kernel, dtype: Dtype):
    """x @ kernel with inputs cast to ``dtype`` and float32 accumulation and result."""
    return jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=F32)


def _layerscale(config: ViTConfig, name: str):
    return LayerScale(name=name) if config.layerscale else (lambda y: y)


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """The ViT's LayerNorm: float32, two-pass variance, as ``torch.nn.LayerNorm``.

    DINO's residual stream has large channels, where the one-pass variance loses digits.

    Parameters
    ----------
    eps : float
        The epsilon added to the variance.
    name : str
        The parameter scope's name.

    Returns
    -------
    flax.linen.LayerNorm
    """
    return nn.LayerNorm(epsilon=eps, dtype=F32, param_dtype=F32, use_fast_variance=False, name=name)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens: (N, H, W, 3) → (N, H/p · W/p, D) float32.

    A stride-p convolution with kernel (p, p, 3, D) (HWIO), written as one matmul.
    """

    patch: int
    dim: int
    dtype: Dtype = F32

    @nn.compact
    def __call__(self, x):
        p, (N, H, W, C) = self.patch, x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, C, self.dim), F32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.dim,), F32)
        x = x.reshape(N, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(N, (H // p) * (W // p), p * p * C)
        return _matmul(x, kernel.reshape(-1, self.dim), self.dtype) + bias


class Dense(nn.Module):
    """Linear layer (kernel (Din, features), bias): (..., Din) → (..., features) float32."""

    features: int
    dtype: Dtype = F32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), F32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), F32)
        return _matmul(x, kernel, self.dtype) + bias


class QKV(nn.Module):
    """Fused q|k|v projection (kernel (D, 3D), bias (3D,)), split into heads.

    ``cls_only=True`` projects the query of token 0 only (keys and values of all tokens).
    Returns q (N, Tq, heads, d), k and v (N, T, heads, d), in ``dtype``.
    """

    heads: int
    dtype: Dtype = F32

    @nn.compact
    def __call__(self, x, cls_only: bool = False):
        D = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (D, 3 * D), F32)
        bias = self.param("bias", nn.initializers.zeros_init(), (3 * D,), F32)

        def project(tokens, cols):
            y = _matmul(tokens, kernel[:, cols], self.dtype) + bias[cols]
            return y.reshape(*y.shape[:2], -1, D // self.heads).astype(self.dtype)

        q = project(x[:, :1] if cls_only else x, slice(0, D))
        k, v = jnp.split(project(x, slice(D, 3 * D)), 2, axis=2)
        return q, k, v


ATTENTION_IMPLS = ("auto", "xla", "blocked", "cudnn")
ATTENTION_BLOCK = 256  # queries per block of the "blocked" attention


def attention_impl(impl: str = "auto", dtype: Dtype = F32) -> str:
    """The attention implementation ``impl`` resolves to for ``dtype`` on the default backend.

    "auto" (or the ``ARB_ATTENTION`` environment variable, when set): "blocked" on a CPU,
    "cudnn" on a GPU for bfloat16/float16 inputs, else "xla".
    """
    if impl == "auto":
        impl = os.environ.get("ARB_ATTENTION", "auto") or "auto"
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"unknown attention implementation {impl!r}; choose one of {ATTENTION_IMPLS} "
            "(also for the ARB_ATTENTION environment variable)"
        )
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "cpu":
        return "blocked"
    if backend in ("gpu", "cuda", "rocm") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def blocked_attention(q, k, v, block: int):
    """softmax(q·kᵀ/√d)·v, one (image, head) and ``block`` queries at a time.

    q: (N, T, heads, d), k, v: (N, S, heads, d). Scores and softmax in float32; the
    unnormalised exp(s − max) multiplies v and the (block, d) result is divided by the row sums.
    """
    N, T, H, d = q.shape
    bs = min(block, T)
    nb = -(-T // bs)
    qh = jnp.pad(q, ((0, 0), (0, nb * bs - T), (0, 0), (0, 0)))
    qh = qh.transpose(0, 2, 1, 3).reshape(N * H, nb, bs, d)
    kh, vh = (a.transpose(0, 2, 1, 3).reshape(N * H, -1, d) for a in (k, v))
    scale = d**-0.5

    def one_head(args):
        qq, kk, vv = args

        def one_block(qb):
            s = jnp.dot(qb, kk.T, preferred_element_type=F32) * scale  # (bs, S)
            e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
            y = jnp.dot(e.astype(vv.dtype), vv, preferred_element_type=F32)  # (bs, d)
            return (y / jnp.sum(e, axis=-1, keepdims=True)).astype(q.dtype)

        return jax.lax.map(one_block, qq)

    y = jax.lax.map(one_head, (qh, kh, vh))  # (N·H, nb, bs, d)
    return y.reshape(N, H, nb * bs, d)[:, :, :T].transpose(0, 2, 1, 3)


def attention(q, k, v, impl: str = "auto"):
    """Multi-head softmax attention: q (N, T, heads, d), k, v (N, S, heads, d) → (N, T, heads, d).

    Scores and softmax in float32 for every ``impl`` (see ``attention_impl``); the result has
    q's dtype.
    """
    impl = attention_impl(impl, q.dtype)
    if impl == "blocked":
        return blocked_attention(q, k, v, ATTENTION_BLOCK)
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (NotImplementedError, RuntimeError, ValueError):  # no usable cuDNN kernel
            pass
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


class Attention(nn.Module):
    """Multi-head self-attention of all tokens: (N, T, D) → (N, T, D). See ``attention``."""

    heads: int
    dtype: Dtype = F32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        q, k, v = QKV(self.heads, self.dtype, name="qkv")(x)
        y = attention(q, k, v, self.impl)  # softmax in float32
        return Dense(x.shape[-1], self.dtype, name="proj")(y.reshape(x.shape))


class ClsAttention(nn.Module):
    """Attention of the CLS query only: (N, T, D) → CLS output (N, D), probabilities (N, heads, T).

    The probabilities are softmax(q_cls·kᵀ/√d) over all T keys, computed in float32.
    """

    heads: int
    dtype: Dtype = F32

    @nn.compact
    def __call__(self, x):
        q, k, v = QKV(self.heads, self.dtype, name="qkv")(x, cls_only=True)
        logits = jnp.einsum("nhd,nthd->nht", q[:, 0], k, preferred_element_type=F32)
        probs = jax.nn.softmax(logits * q.shape[-1] ** -0.5, axis=-1)
        y = jnp.einsum("nht,nthd->nhd", probs.astype(self.dtype), v, preferred_element_type=F32)
        return Dense(x.shape[-1], self.dtype, name="proj")(y.reshape(x.shape[0], -1)), probs


class Mlp(nn.Module):
    """fc1 → exact (erf) GELU → fc2: (..., D) → (..., D)."""

    hidden: int
    dtype: Dtype = F32

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(Dense(self.hidden, self.dtype, name="fc1")(x), approximate=False)
        return Dense(x.shape[-1], self.dtype, name="fc2")(y)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (DINOv2): (..., D) → (..., D)."""

    @nn.compact
    def __call__(self, x):
        return x * self.param("gamma", nn.initializers.ones_init(), (x.shape[-1],), F32)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); (N, T, D)."""

    config: ViTConfig
    dtype: Dtype = F32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x):
        c = self.config
        y = Attention(c.heads, self.dtype, self.attention, name="attn")(layer_norm(c.eps, "norm1")(x))
        x = x + _layerscale(c, "ls1")(y)
        y = Mlp(c.mlp_dim, self.dtype, name="mlp")(layer_norm(c.eps, "norm2")(x))
        return x + _layerscale(c, "ls2")(y)


class ClsBlock(nn.Module):
    """The last block for the CLS token only: (N, T, D) → CLS (N, D), attention (N, heads, T).

    Same parameters and result (for the CLS token) as ``Block``; the other query rows and
    their MLP are never computed.
    """

    config: ViTConfig
    dtype: Dtype = F32

    @nn.compact
    def __call__(self, x):
        c = self.config
        y, probs = ClsAttention(c.heads, self.dtype, name="attn")(layer_norm(c.eps, "norm1")(x))
        cls = x[:, 0] + _layerscale(c, "ls1")(y)
        y = Mlp(c.mlp_dim, self.dtype, name="mlp")(layer_norm(c.eps, "norm2")(cls))
        return cls + _layerscale(c, "ls2")(y), probs


def check_images(images: Any, patch: int, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Validate an image batch by its shape and dtype (tracers too); returns the patch grid (h, w).

    TypeError unless ``images`` is an array of floats; ValueError unless it is (N, H, W, 3) with
    N >= 1 and H, W positive multiples of ``patch``, equal to ``image_size`` when given.
    """
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images must be an array (N, H, W, 3), got {type(images).__name__}")
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"images must have shape (N, H, W, 3) (NHWC), got shape {shape}")
    if shape[-1] != 3:
        raise ValueError(f"images must have 3 (RGB) channels last (NHWC), got {shape[-1]} in shape {shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"images must be float (ImageNet-normalised), got dtype {images.dtype}; "
            "use arb_jax.load_images / arb_jax.images.prepare"
        )
    if shape[0] < 1:
        raise ValueError("images is an empty batch")
    H, W = shape[1:3]
    if H % patch or W % patch or H == 0 or W == 0:
        raise ValueError(
            f"image height {H} and width {W} must be positive multiples of the patch size {patch}"
        )
    if image_size is not None and tuple(image_size) != (H, W):
        raise ValueError(
            f"images are {H}x{W} but the model was loaded for {image_size[0]}x"
            f"{image_size[1]}; load it with image_size=({H}, {W}) (or use "
            "vit.at_size) or resize the images"
        )
    return H // patch, W // patch


class VisionTransformer(nn.Module):
    """DINO / DINOv2 ViT returning the last block's CLS attention and the CLS feature.

    Input: (N, H, W, 3) float, ImageNet-normalised, NHWC; H, W multiples of the patch.
    ``__call__`` returns a dict:
      "attn": (N, heads, H/p, W/p) float32, the last block's CLS-query softmax over the patch
        keys (CLS and register columns dropped, not renormalised);
      "features": (N, D) float32, the CLS token after the final LayerNorm;
      "logits": (N, n_classes) float32, only when ``config.n_classes > 0``.

    The ``pos_embed`` parameter is used as is when it has 1 + h·w tokens for the input's
    h×w patch grid, else interpolated from the stored M×M grid (M = ``config.pos_grid``) at
    trace time.
    """

    config: ViTConfig
    dtype: Dtype = F32
    precision: str | None = None  # matmul precision for the whole forward, e.g. "highest"
    attention: str = "auto"  # attention of blocks 0 … L−2: see ``attention_impl``

    @nn.compact
    def __call__(self, images) -> dict[str, jax.Array]:
        c = self.config
        h, w = check_images(images, c.patch)
        ctx = jax.default_matmul_precision(self.precision) if self.precision else contextlib.nullcontext()
        with ctx:
            x = PatchEmbed(c.patch, c.dim, self.dtype, name="patch_embed")(images)
            x = jnp.concatenate([self._cls_token(x.shape[0]), x], axis=1)
            x = x + self._pos_embed(h, w)
            if c.n_registers:
                reg = self.param("reg_tokens", nn.initializers.normal(0.02), (1, c.n_registers, c.dim), F32)
                x = jnp.concatenate(
                    [x[:, :1], jnp.broadcast_to(reg, (x.shape[0], *reg.shape[1:])), x[:, 1:]], axis=1
                )
            for i in range(c.depth - 1):
                x = Block(c, self.dtype, self.attention, name=f"block_{i}")(x)
            cls, probs = ClsBlock(c, self.dtype, name=f"block_{c.depth - 1}")(x)
            out = {
                "attn": probs[:, :, 1 + c.n_registers :].reshape(-1, c.heads, h, w),
                "features": layer_norm(c.eps, "norm")(cls),
            }
            if c.n_classes:
                out["logits"] = Dense(c.n_classes, self.dtype, name="head")(out["features"])
        return out

    def _cls_token(self, n: int):
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.config.dim), F32)
        return jnp.broadcast_to(cls, (n, 1, self.config.dim))

    def _pos_embed(self, h: int, w: int):
        c = self.config
        native = 1 + c.pos_grid * c.pos_grid
        n_pos = (
            self.get_variable("params", "pos_embed").shape[1]
            if self.has_variable("params", "pos_embed")
            else native
        )
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, n_pos, c.dim), F32)
        if n_pos == 1 + h * w:
            return pos
        if n_pos != native:
            raise ValueError(
                f"pos_embed has {n_pos} tokens: neither 1 + {h}*{w} for this input's patch grid "
                f"nor 1 + {c.pos_grid}^2 for the stored grid of config.pos_grid={c.pos_grid}"
            )
        return interpolate_pos_embed(pos, (h, w), c.pos_interp)
