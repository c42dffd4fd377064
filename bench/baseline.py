"""The baseline: ARB the way the authors' PyTorch code, and a PyTorch user, would run it.

An HF transformers ``ViTModel`` (``Dinov2Model`` for a DINOv2 configuration with LayerScale;
eager attention, ``output_attentions=True``) with the same
weights as our Flax ViT runs on the image and on each bootstrap image (one at a time on a CPU,
batched on a GPU); the last layer's CLS-row attention over the patches is averaged over heads,
upsampled by nearest neighbour to pixels (``torch.nn.functional.interpolate``, as DINO's
``visualize_attention.py``), and the statistics are computed in numpy / statsmodels / scipy over
the pixel vector: z of log scores (docs/method.md §3 eqs. 1–3), empirical p-values (eq. 4, "upper"),
``statsmodels.stats.multitest.local_fdr`` (eq. 5, π₀ = 1), Storey's π₀ ("smoother", as R
``qvalue::pi0est``) and the shrunk maps (docs/method.md §4). Bootstrap images are drawn with torch on the
model's device (``normal`` sampler, docs/method.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from arb_jax.models import ViTConfig

# --------------------------------------------------------------------------------------------
# The HF model with our weights
# --------------------------------------------------------------------------------------------

# Our per-block leaf → HF module name patterns, transformers 5 ("layers.i.attention.q_proj") and
# transformers 4 ("encoder.layer.i.attention.attention.query"). {i} is the block index.
_HF_BLOCK = {
    "q": (r"layers\.{i}\.attention\.q_proj", r"layer\.{i}\.attention\.attention\.query"),
    "k": (r"layers\.{i}\.attention\.k_proj", r"layer\.{i}\.attention\.attention\.key"),
    "v": (r"layers\.{i}\.attention\.v_proj", r"layer\.{i}\.attention\.attention\.value"),
    "o": (r"layers\.{i}\.attention\.o_proj", r"layer\.{i}\.attention\.output\.dense"),
    "fc1": (r"layers\.{i}\.mlp\.fc1", r"layer\.{i}\.intermediate\.dense"),
    "fc2": (r"layers\.{i}\.mlp\.fc2", r"layer\.{i}\.output\.dense"),
    "norm1": (r"layers?\.{i}\.layernorm_before",),
    "norm2": (r"layers?\.{i}\.layernorm_after",),
}
# The same roles in HF Dinov2Model ("encoder.layer.i.attention.q_proj" in transformers 5, else
# "...attention.attention.query"; LayerScale "layer_scale1.lambda1").
_HF_DINOV2_BLOCK = {
    "q": (r"layer\.{i}\.attention\.q_proj", r"layer\.{i}\.attention\.attention\.query"),
    "k": (r"layer\.{i}\.attention\.k_proj", r"layer\.{i}\.attention\.attention\.key"),
    "v": (r"layer\.{i}\.attention\.v_proj", r"layer\.{i}\.attention\.attention\.value"),
    "o": (r"layer\.{i}\.attention\.o_proj", r"layer\.{i}\.attention\.output\.dense"),
    "fc1": (r"layer\.{i}\.mlp\.fc1",),
    "fc2": (r"layer\.{i}\.mlp\.fc2",),
    "norm1": (r"layer\.{i}\.norm1",),
    "norm2": (r"layer\.{i}\.norm2",),
    "ls1": (r"layer\.{i}\.layer_scale1\.lambda1",),
    "ls2": (r"layer\.{i}\.layer_scale2\.lambda1",),
}
_HF_TOP = {
    "cls": (r"embeddings\.cls_token",),
    "pos": (r"embeddings\.position_embeddings",),
    "patch": (r"embeddings\.patch_embeddings\.projection",),
    "norm": (r"layernorm",),
}


def _find(keys: list[str], patterns: tuple[str, ...], suffix: str) -> str:
    for pat in patterns:
        rx = re.compile(rf"(^|.*\.){pat}{re.escape(suffix)}$")
        hits = [k for k in keys if rx.match(k)]
        if len(hits) == 1:
            return hits[0]
    raise KeyError(
        f"no unique HF parameter matching {patterns} + {suffix!r} among "
        f"{len(keys)} names (this transformers version names them differently)"
    )


def hf_state_dict(config: ViTConfig, params: Mapping[str, Any], keys: list[str]) -> dict[str, np.ndarray]:
    """Our canonical tree → an HF ``ViTModel`` state dict (numpy, float32), named as in ``keys``.

    Linear kernels (Din, Dout) → weights (Dout, Din); q|k|v split; the patch kernel
    (p, p, 3, D) → (D, 3, p, p); ``pos_embed`` is taken as it is (resampled for the image size).
    """
    if config.n_registers:
        raise ValueError(f"the HF baseline supports no register tokens ({config.name or config})")
    block_patterns = _HF_DINOV2_BLOCK if config.layerscale else _HF_BLOCK
    a = lambda x: np.asarray(x, np.float32)  # noqa: E731
    D = config.dim
    sd: dict[str, np.ndarray] = {}

    def put(patterns, suffix, value):
        sd[_find(keys, patterns, suffix)] = value

    put(_HF_TOP["cls"], "", a(params["cls_token"]))
    put(_HF_TOP["pos"], "", a(params["pos_embed"]))
    put(_HF_TOP["patch"], ".weight", a(params["patch_embed"]["kernel"]).transpose(3, 2, 0, 1))
    put(_HF_TOP["patch"], ".bias", a(params["patch_embed"]["bias"]))
    put(_HF_TOP["norm"], ".weight", a(params["norm"]["scale"]))
    put(_HF_TOP["norm"], ".bias", a(params["norm"]["bias"]))
    for i in range(config.depth):
        b = params[f"block_{i}"]
        pats = {role: tuple(p.replace("{i}", str(i)) for p in pp) for role, pp in block_patterns.items()}
        qkv_w, qkv_b = a(b["attn"]["qkv"]["kernel"]), a(b["attn"]["qkv"]["bias"])
        for j, role in enumerate("qkv"):
            put(pats[role], ".weight", qkv_w[:, j * D : (j + 1) * D].T)
            put(pats[role], ".bias", qkv_b[j * D : (j + 1) * D])
        for role, ours in (("o", b["attn"]["proj"]), ("fc1", b["mlp"]["fc1"]), ("fc2", b["mlp"]["fc2"])):
            put(pats[role], ".weight", a(ours["kernel"]).T)
            put(pats[role], ".bias", a(ours["bias"]))
        for role, ours in (("norm1", b["norm1"]), ("norm2", b["norm2"])):
            put(pats[role], ".weight", a(ours["scale"]))
            put(pats[role], ".bias", a(ours["bias"]))
        if config.layerscale:
            put(pats["ls1"], "", a(b["ls1"]["gamma"]))
            put(pats["ls2"], "", a(b["ls2"]["gamma"]))
    if "embeddings.mask_token" in keys:  # DINOv2's, unused at inference
        sd["embeddings.mask_token"] = np.zeros((1, D), np.float32)
    missing = sorted(set(keys) - set(sd))
    if missing:
        raise KeyError(f"HF parameters left without a value: {missing}")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def hf_vit(config: ViTConfig, params: Mapping[str, Any], image_size: int, device: str = "cpu"):
    """An HF ``ViTModel`` (eager attention, no pooler) holding ``params``, for square images.

    ``params["pos_embed"]`` must have 1 + (image_size/p)² tokens (a bundle's, resampled by
    ``build_vit``), so HF uses it as it is (no interpolation of its own).
    """
    import torch
    import transformers

    grid = image_size // config.patch
    if np.shape(params["pos_embed"])[1] != 1 + grid * grid:
        raise ValueError(
            f"pos_embed has {np.shape(params['pos_embed'])[1]} tokens, expected "
            f"1 + {grid}² for {image_size} px: pass the bundle's params"
        )
    kw = dict(
        hidden_size=config.dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.heads,
        intermediate_size=config.mlp_dim,
        hidden_act="gelu",
        layer_norm_eps=config.eps,
        image_size=image_size,
        patch_size=config.patch,
        num_channels=3,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    try:
        hf_config = transformers.ViTConfig(attn_implementation="eager", **kw)
    except TypeError:  # older transformers
        hf_config = transformers.ViTConfig(**kw)
    hf_config._attn_implementation = "eager"
    if config.layerscale:  # DINOv2: LayerScale, MLP ratio from the config
        if config.mlp_dim % config.dim:
            raise ValueError(
                f"the HF Dinov2Model baseline needs mlp_dim a multiple of dim, got "
                f"{config.mlp_dim} and {config.dim}"
            )
        hf_config = transformers.Dinov2Config(
            mlp_ratio=config.mlp_dim // config.dim,
            attn_implementation="eager",
            **{k: v for k, v in kw.items() if k != "intermediate_size"},
        )
        hf_config._attn_implementation = "eager"
        model = transformers.Dinov2Model(hf_config)
    else:
        model = transformers.ViTModel(hf_config, add_pooling_layer=False)
    keys = list(model.state_dict())
    sd = {k: torch.tensor(v) for k, v in hf_state_dict(config, params, keys).items()}
    model.load_state_dict(sd, strict=True)
    return model.eval().to(device)


def hf_cls_attention(model, pixel_values) -> Any:
    """(b, 3, H, W) torch → (b, h, w) head-mean last-layer CLS attention over the patches."""
    import torch

    with torch.inference_mode():
        out = model(pixel_values=pixel_values, output_attentions=True)
    attn = out.attentions[-1][:, :, 0, 1:]  # (b, heads, h·w)
    p = model.config.patch_size
    h, w = pixel_values.shape[2] // p, pixel_values.shape[3] // p
    return attn.mean(1).reshape(-1, h, w)


# --------------------------------------------------------------------------------------------
# Statistics in numpy / statsmodels / scipy, over pixels
# --------------------------------------------------------------------------------------------

LAMBDAS = np.minimum(0.05 + 0.05 * np.arange(19), 0.95)  # R qvalue's seq(0.05, 0.95, 0.05)


@functools.lru_cache(maxsize=8)
def _spline_lam(lambdas: tuple[float, ...], df: float) -> float:
    """Penalty of scipy's natural cubic smoothing spline on x = lambdas with trace(hat) = df."""
    from scipy.interpolate import make_smoothing_spline
    from scipy.optimize import brentq

    x = np.asarray(lambdas)
    eye = np.eye(x.size)

    def trace(log_lam: float) -> float:
        lam = 10.0**log_lam
        return sum(float(make_smoothing_spline(x, eye[j], lam=lam)(x[j])) for j in range(x.size))

    return 10.0 ** brentq(lambda t: trace(t) - df, -12.0, 6.0, xtol=1e-12)


def storey_pi0(p: np.ndarray, df: float = 3.0) -> float:
    """Storey's π₀, R ``qvalue::pi0est(p, pi0.method = "smoother")``: a cubic smoothing spline
    with ``df`` degrees of freedom (scipy ``make_smoothing_spline``, its penalty solved for the
    trace) of π₀(λ) = mean(p >= λ)/(1 − λ), evaluated at the largest λ, at most 1."""
    from scipy.interpolate import make_smoothing_spline

    p = np.asarray(p).ravel()
    pi0_lam = np.array([np.mean(p >= lam) / (1.0 - lam) for lam in LAMBDAS])
    spline = make_smoothing_spline(LAMBDAS, pi0_lam, lam=_spline_lam(tuple(LAMBDAS), df))
    return float(min(spline(LAMBDAS[-1]), 1.0))


def warm_up() -> None:
    """One-time costs kept out of the timings: statsmodels' import, the spline's penalty."""
    import statsmodels.stats.multitest  # noqa: F401

    _spline_lam(tuple(LAMBDAS), 3.0)


def numpy_statistics(
    attn: np.ndarray, attn_null: np.ndarray, *, alpha: float = 0.3, beta: float = 0.3, z_th: float = 0.0
) -> dict[str, Any]:
    """ARB statistics of one map over its pixels, in numpy / statsmodels / scipy.

    attn: (H, W) float32 upsampled map; attn_null: (B, H, W). Returns z, p, lfdr (H, W),
    pi0, mu0, sigma0 (floats), z_null_sorted (B·H·W,), the null z-scores in ascending order,
    and maps {"z", "p", "lfdr", "pi0", "soft"} (H, W).
    """
    from statsmodels.stats.multitest import local_fdr

    tiny = np.finfo(np.float32).tiny
    log_a = np.log(np.maximum(attn, tiny))
    log_0 = np.log(np.maximum(attn_null, tiny))
    mu0, sigma0 = log_0.mean(), log_0.std()
    z = (log_a - mu0) / sigma0
    z0 = np.sort(((log_0 - mu0) / sigma0).ravel())
    m = z0.size
    p = (m - np.searchsorted(z0, z.ravel(), side="left")) / m
    lfdr = local_fdr(z.ravel(), null_proportion=1.0, nbins=30, deg=7)
    pi0 = min(max(storey_pi0(p), 0.0), 1.0)  # clipped to [0, 1], as the pipeline does
    keep = z.ravel() >= z_th
    a = attn.ravel()
    cut = np.percentile(p, 100 * (1 - pi0))
    maps = {
        "z": a * keep,
        "p": a * (keep & (p <= alpha)),
        "lfdr": a * (keep & (lfdr <= beta)),
        "pi0": a * (keep & (p <= cut)),
        "soft": a * (1 - lfdr),
    }
    shape = attn.shape
    return {
        "z": z,
        "p": p.reshape(shape),
        "lfdr": lfdr.reshape(shape),
        "pi0": pi0,
        "mu0": float(mu0),
        "sigma0": float(sigma0),
        "z_null_sorted": z0,
        "maps": {k: v.reshape(shape) for k, v in maps.items()},
    }


# --------------------------------------------------------------------------------------------
# One baseline run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BaselineRun:
    """One image through the baseline. attn (H, W) and null (B, H, W) pixel maps, float32;
    stats: ``numpy_statistics``; seconds: wall time of each stage ("sample", "forward",
    "upsample", "stats") and "total"."""

    attn: np.ndarray
    null: np.ndarray
    stats: dict[str, Any]
    seconds: dict[str, float]


def run_baseline(
    model,
    image: np.ndarray,
    n_boot: int,
    *,
    batch: int = 1,
    seed: int = 0,
    null_images: np.ndarray | None = None,
    progress: Callable | None = None,
    alpha: float = 0.3,
    beta: float = 0.3,
    z_th: float = 0.0,
) -> BaselineRun:
    """ARB of one normalised image (H, W, 3) float32 with the HF model, as a PyTorch user would.

    Draws ``n_boot`` normal bootstrap images with torch on the model's device (per channel the
    image's mean and std, ddof 1); ``null_images`` (B, H, W, 3), when given, are used for the
    forwards instead (the draw still runs and is timed), so the result can be checked against
    ours on the same null images. Forwards run ``batch`` images at a time.
    """
    import torch
    from torch.nn import functional

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    p = model.config.patch_size
    seconds: dict[str, float] = {}
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)))
    x = x.to(device)
    given = None
    if null_images is not None:
        if np.shape(null_images) != (n_boot, *np.shape(image)):
            raise ValueError(
                f"null_images must be (B, H, W, 3) = {(n_boot, *np.shape(image))}, "
                f"got {np.shape(null_images)}"
            )
        given = torch.from_numpy(
            np.ascontiguousarray(np.asarray(null_images, np.float32).transpose(0, 3, 1, 2))
        ).to(device)
    sync()

    t0 = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(seed)
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True)  # ddof 1
    nulls = mean + std * torch.randn((n_boot, *x.shape), generator=g, device=device)
    sync()
    t1 = time.perf_counter()
    seconds["sample"] = t1 - t0
    if given is not None:
        nulls = given

    maps = []
    # the image joins the first batch of null images (alone when batch = 1)
    inputs = [torch.cat([x[None], nulls[: batch - 1]])] + [
        nulls[i : i + batch] for i in range(batch - 1, n_boot, batch)
    ]
    for chunk in inputs:
        maps.append(hf_cls_attention(model, chunk))
        if progress is not None:
            progress(chunk.shape[0])
    sync()
    t2 = time.perf_counter()
    seconds["forward"] = t2 - t1

    grid = torch.cat(maps)  # (1+B, h, w)
    with torch.inference_mode():
        pixels = functional.interpolate(grid[:, None], scale_factor=p, mode="nearest")[:, 0]
    pixels = pixels.float().cpu().numpy()
    t3 = time.perf_counter()
    seconds["upsample"] = t3 - t2

    stats = numpy_statistics(pixels[0], pixels[1:], alpha=alpha, beta=beta, z_th=z_th)
    t4 = time.perf_counter()
    seconds["stats"] = t4 - t3
    seconds["total"] = t4 - t0
    return BaselineRun(pixels[0], pixels[1:], stats, seconds)
