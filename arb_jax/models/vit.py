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
"blocked" loops over groups of (image, head) pairs and blocks of queries (``attention_tiling``:
a short sequence is one block with many pairs batched per step, a long one the fewest equal
blocks whose scores fit ``ATTENTION_TILE_BYTES``), so each step's scores stay near the cache
between the softmax and the product with the values; XLA on a CPU otherwise writes and re-reads
all N² scores of every head several times (2–3× slower per block at 3722 tokens, see
``bench/README.md``). ``ARB_ATTENTION`` in the
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

        if cls_only:
            q = project(x[:, :1], slice(0, D))
            k, v = jnp.split(project(x, slice(D, 3 * D)), 2, axis=2)
        else:  # one product with the whole kernel: slicing it would copy it on every call
            q, k, v = jnp.split(project(x, slice(None)), 3, axis=2)
        return q, k, v


ATTENTION_IMPLS = ("auto", "xla", "blocked", "cudnn")
ATTENTION_BLOCK = 256  # a sequence of up to this many queries is one block of the "blocked" attention
ATTENTION_TILE_BYTES = 16 * 2**20  # float32 scores one step of the "blocked" attention holds
ATTENTION_UNROLL = 8  # most query blocks written out with no loop (when one step holds every pair)


def attention_tiling(
    pairs: int, queries: int, keys: int, block: int | None = None, tile_bytes: int = ATTENTION_TILE_BYTES
) -> tuple[int, int]:
    """How ``blocked_attention`` tiles its work: (pairs per step, queries per block).

    Parameters
    ----------
    pairs : int
        (image, head) pairs, N · heads.
    queries, keys : int
        Tokens T of the queries and S of the keys.
    block : int, optional
        Queries per block; by default a sequence of up to ``ATTENTION_BLOCK`` queries is one
        block and a longer one is split into the fewest equal blocks (at least 2) whose float32
        scores (block × S) fit ``tile_bytes``.
    tile_bytes : int
        The float32 scores one step may hold: as many pairs as fit are batched into one step.

    Returns
    -------
    (int, int)
        Pairs batched per step (1 … pairs) and queries per block (1 … queries).
    """
    if block is None:
        blocks = 1 if queries <= ATTENTION_BLOCK else max(2, -(-queries * keys * 4 // tile_bytes))
        block = -(-queries // blocks)
    block = max(1, min(block, queries))
    per_pair = block * keys * 4
    return max(1, min(pairs, tile_bytes // per_pair)), block


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


def blocked_attention(q, k, v, block: int | None = None, tile_bytes: int = ATTENTION_TILE_BYTES):
    """softmax(q·kᵀ/√d)·v, a few (image, head) pairs and one block of queries at a time.

    q: (N, T, heads, d), k, v: (N, S, heads, d) → (N, T, heads, d) in q's dtype. The tiling
    is ``attention_tiling(N·heads, T, S, block, tile_bytes)``: each step batches that many
    pairs, so one step's (pairs × block × S) float32 scores stay near the cache between the
    softmax and the product with v, and the short sequences' small products are few, large
    batched ones. When one step holds every pair, the (at most ``ATTENTION_UNROLL``) blocks are
    written out one after another, with no loop: 1.2–1.4× faster at 257–785 tokens than
    ``lax.map``'s loop and its dynamic slices (bench/README.md), the same results bit for bit;
    otherwise ``lax.map`` steps over the pairs and, within them, the blocks. Scores and softmax
    in float32; the unnormalised exp(s − max) multiplies v and the (block, d) result is divided
    by the row sums.
    """
    N, T, H, d = q.shape
    group, bs = attention_tiling(N * H, T, k.shape[1], block, tile_bytes)
    nb = -(-T // bs)
    kh, vh = (a.transpose(0, 2, 1, 3).reshape(N * H, -1, d) for a in (k, v))
    scale = d**-0.5

    def one_block(qb, kk, vv):
        s = jnp.dot(qb, kk.T, preferred_element_type=F32) * scale  # (bs, S)
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        y = jnp.dot(e.astype(vv.dtype), vv, preferred_element_type=F32)  # (bs, d)
        return (y / jnp.sum(e, axis=-1, keepdims=True)).astype(q.dtype)

    if group >= N * H and nb <= ATTENTION_UNROLL:  # one step holds every pair: no loop at all
        qh = q.transpose(0, 2, 1, 3).reshape(N * H, T, d)
        blocks = [
            jax.vmap(one_block)(qh[:, i : i + bs], kh, vh) for i in range(0, T, bs)
        ]  # (N·H, ≤ bs, d) each
        return jnp.concatenate(blocks, axis=1).reshape(N, H, T, d).transpose(0, 2, 1, 3)

    qh = jnp.pad(q, ((0, 0), (0, nb * bs - T), (0, 0), (0, 0)))
    qh = qh.transpose(0, 2, 1, 3).reshape(N * H, nb, bs, d)

    def one_head(args):
        qq, kk, vv = args
        return jax.lax.map(lambda qb: one_block(qb, kk, vv), qq)

    y = jax.lax.map(one_head, (qh, kh, vh), batch_size=group if group > 1 else None)  # (N·H, nb, bs, d)
    return y.reshape(N, H, nb * bs, d)[:, :, :T].transpose(0, 2, 1, 3)


def attention(q, k, v, impl: str = "auto"):
    """Multi-head softmax attention: q (N, T, heads, d), k, v (N, S, heads, d) → (N, T, heads, d).

    Scores and softmax in float32 for every ``impl`` (see ``attention_impl``); the result has
    q's dtype.
    """
    impl = attention_impl(impl, q.dtype)
    if impl == "blocked":
        return blocked_attention(q, k, v)
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (NotImplementedError, RuntimeError, ValueError):  # no usable cuDNN kernel
            pass
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def attention_probs(q, k):
    """softmax(q·kᵀ/√d) per head: q (N, T, heads, d), k (N, S, heads, d) → (N, heads, T, S) float32."""
    logits = jnp.einsum("nthd,nshd->nhts", q, k, preferred_element_type=F32)
    return jax.nn.softmax(logits * q.shape[-1] ** -0.5, axis=-1)


class Attention(nn.Module):
    """Multi-head self-attention of all tokens: (N, T, D) → (N, T, D). See ``attention``.

    ``with_probs=True`` computes the probabilities explicitly (``attention_probs``, float32) and
    returns ``(output, probs (N, heads, T, T))``; the default path never forms them.
    """

    heads: int
    dtype: Dtype = F32
    impl: str = "auto"
    with_probs: bool = False

    @nn.compact
    def __call__(self, x):
        q, k, v = QKV(self.heads, self.dtype, name="qkv")(x)
        if self.with_probs:
            probs = attention_probs(q, k)
            y = jnp.einsum("nhts,nshd->nthd", probs.astype(self.dtype), v, preferred_element_type=F32)
            return Dense(x.shape[-1], self.dtype, name="proj")(y.reshape(x.shape)), probs
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
    """fc1 → GELU → fc2: (..., D) → (..., D); exact (erf) GELU, or its tanh form (``gelu="tanh"``,
    big_vision / Flax's default)."""

    hidden: int
    dtype: Dtype = F32
    gelu: str = "erf"

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(Dense(self.hidden, self.dtype, name="fc1")(x), approximate=self.gelu == "tanh")
        return Dense(x.shape[-1], self.dtype, name="fc2")(y)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (DINOv2): (..., D) → (..., D)."""

    @nn.compact
    def __call__(self, x):
        return x * self.param("gamma", nn.initializers.ones_init(), (x.shape[-1],), F32)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); (N, T, D).

    ``with_probs=True`` returns ``(x, probs)`` with the attention probabilities (N, heads, T, T).
    """

    config: ViTConfig
    dtype: Dtype = F32
    attention: str = "auto"
    with_probs: bool = False

    @nn.compact
    def __call__(self, x):
        c = self.config
        y = Attention(c.heads, self.dtype, self.attention, self.with_probs, name="attn")(
            layer_norm(c.eps, "norm1")(x)
        )
        y, probs = y if self.with_probs else (y, None)
        x = x + _layerscale(c, "ls1")(y)
        y = Mlp(c.mlp_dim, self.dtype, c.gelu, name="mlp")(layer_norm(c.eps, "norm2")(x))
        x = x + _layerscale(c, "ls2")(y)
        return (x, probs) if self.with_probs else x


class ClsBlock(nn.Module):
    """The last block for the CLS token only: (N, T, D) → CLS (N, D), attention (N, heads, T).

    Same parameters and result (for the CLS token) as ``Block``; the other query rows and
    their MLP are never computed. ``normed_delta`` (N, T, D), when given, is added to the tokens
    after ``norm1`` (its gradient is the gradient with respect to them, for CDAM);
    ``return_normed=True`` also returns those tokens, ``norm1(x)`` (N, T, D), before the delta.
    """

    config: ViTConfig
    dtype: Dtype = F32
    return_normed: bool = False

    @nn.compact
    def __call__(self, x, normed_delta=None):
        c = self.config
        normed = layer_norm(c.eps, "norm1")(x)
        y, probs = ClsAttention(c.heads, self.dtype, name="attn")(
            normed if normed_delta is None else normed + normed_delta
        )
        cls = x[:, 0] + _layerscale(c, "ls1")(y)
        y = Mlp(c.mlp_dim, self.dtype, c.gelu, name="mlp")(layer_norm(c.eps, "norm2")(cls))
        cls = cls + _layerscale(c, "ls2")(y)
        return (cls, probs, normed) if self.return_normed else (cls, probs)


ROLLOUT_FUSIONS = ("mean", "max", "min")


def _rollout_step(probs, fusion: str = "mean"):
    """A' = (F + I) with rows renormalised, F the heads' fusion of the attention.

    probs (N, heads, T, T) or the CLS rows (N, heads, T) → (N, T, T) or (N, T) float32. For the
    mean (rows summing to 1) this is exactly 0.5·F + 0.5·I.
    """
    if fusion == "max":
        fused = jnp.max(probs, axis=1)
    elif fusion == "min":
        fused = jnp.min(probs, axis=1)
    else:
        fused = jnp.mean(probs, axis=1)
    eye = jnp.eye(fused.shape[-1], dtype=fused.dtype)
    if fused.ndim == 2:  # the CLS row only
        eye = eye[0]
    if fusion == "mean":
        return 0.5 * fused + 0.5 * eye
    a = fused + eye
    return a / jnp.sum(a, axis=-1, keepdims=True)


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


EXTRAS = ("block_attn", "rollout", "last_normed")


class VisionTransformer(nn.Module):
    """DINO / DINOv2 ViT returning the last block's CLS attention and the CLS feature.

    Input: (N, H, W, 3) float, ImageNet-normalised, NHWC; H, W multiples of the patch.
    ``__call__`` returns a dict:
      "attn": (N, heads, H/p, W/p) float32, the last block's CLS-query softmax over the patch
        keys (CLS and register columns dropped, not renormalised);
      "features": (N, D) float32, the CLS token after the final LayerNorm;
      "logits": (N, n_classes) float32, only when ``config.n_classes > 0``.

    ``extras`` (default none) adds intermediate results, T = 1 + R + h·w tokens
    (CLS, the R registers, the patches):
      "block_attn": (N, L, heads, T) float32, every block's CLS-query attention over all keys;
      "rollout": (N, T) float32, the CLS row of the attention rollout over all blocks, the heads
        fused by ``rollout_fusion`` (``arb_jax.models.maps.rollout_map`` gives the recipe);
      "last_normed": (N, T, D) float32, the last block's input tokens after its ``norm1``.
    With "block_attn" or "rollout", blocks 0 … L−2 form their attention probabilities
    explicitly (``attention_probs``) instead of ``attention``'s fused kernels; the default
    outputs are then equal to float32 rounding. ``last_normed_delta`` (N, T, D), when given, is
    added to the last block's tokens after ``norm1`` (zeros leave every output unchanged; its
    gradient is the gradient with respect to those tokens).

    The ``pos_embed`` parameter is used as is when it has 1 + h·w tokens for the input's
    h×w patch grid, else interpolated from the stored M×M grid (M = ``config.pos_grid``) at
    trace time.
    """

    config: ViTConfig
    dtype: Dtype = F32
    precision: str | None = None  # matmul precision for the whole forward, e.g. "highest"
    attention: str = "auto"  # attention of blocks 0 … L−2: see ``attention_impl``
    extras: tuple[str, ...] = ()  # intermediate outputs, a subset of EXTRAS
    rollout_fusion: str = "mean"  # heads → one attention matrix for "rollout": ROLLOUT_FUSIONS

    @nn.compact
    def __call__(self, images, last_normed_delta=None) -> dict[str, jax.Array]:
        c = self.config
        unknown = sorted(set(self.extras) - set(EXTRAS))
        if unknown:
            raise ValueError(f"unknown VisionTransformer extras {unknown}; choose from {EXTRAS}")
        if self.rollout_fusion not in ROLLOUT_FUSIONS:
            raise ValueError(f"rollout_fusion must be one of {ROLLOUT_FUSIONS}, got {self.rollout_fusion!r}")
        h, w = check_images(images, c.patch)
        ctx = jax.default_matmul_precision(self.precision) if self.precision else contextlib.nullcontext()
        probs_wanted = "block_attn" in self.extras or "rollout" in self.extras
        with ctx:
            x = PatchEmbed(c.patch, c.dim, self.dtype, name="patch_embed")(images)
            x = jnp.concatenate([self._cls_token(x.shape[0]), x], axis=1)
            x = x + self._pos_embed(h, w)
            if c.n_registers:
                reg = self.param("reg_tokens", nn.initializers.normal(0.02), (1, c.n_registers, c.dim), F32)
                x = jnp.concatenate(
                    [x[:, :1], jnp.broadcast_to(reg, (x.shape[0], *reg.shape[1:])), x[:, 1:]], axis=1
                )
            cls_rows, rollout = [], None
            for i in range(c.depth - 1):
                block = Block(c, self.dtype, self.attention, probs_wanted, name=f"block_{i}")
                if not probs_wanted:
                    x = block(x)
                    continue
                x, probs = block(x)
                cls_rows.append(probs[:, :, 0])
                if "rollout" in self.extras:
                    step = _rollout_step(probs, self.rollout_fusion)
                    rollout = step if rollout is None else jnp.einsum("nts,nsu->ntu", step, rollout)
            last = ClsBlock(c, self.dtype, "last_normed" in self.extras, name=f"block_{c.depth - 1}")
            cls, probs, *normed = last(x, last_normed_delta)
            out = {
                "attn": probs[:, :, 1 + c.n_registers :].reshape(-1, c.heads, h, w),
                "features": layer_norm(c.eps, "norm")(cls),
            }
            if c.n_classes:
                out["logits"] = Dense(c.n_classes, self.dtype, name="head")(out["features"])
            if "block_attn" in self.extras:
                out["block_attn"] = jnp.stack([*cls_rows, probs], axis=1)
            if "rollout" in self.extras:
                row = _rollout_step(probs, self.rollout_fusion)  # the CLS row of A'_L
                out["rollout"] = row if rollout is None else jnp.einsum("nt,nts->ns", row, rollout)
            if normed:
                out["last_normed"] = normed[0]
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
