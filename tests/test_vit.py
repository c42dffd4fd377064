"""The Flax DINO ViT: parity with HF transformers (PyTorch), the CLS-only last block, bf16, bundle.

All models here are RANDOM-INIT fixtures (no pretrained weights). PyTorch references are
HF ``ViTModel`` (DINO v1 layout), ``Dinov2Model`` and ``Dinov2WithRegistersModel``, with their
weights copied into the canonical tree by a small local helper.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from _hf import attention_keys, torch_single_thread  # noqa: F401 (an autouse fixture)
from scipy.special import erf
from torch.nn.functional import interpolate as torch_interpolate

from arb_jax.models import (
    CONFIGS,
    VisionTransformer,
    ViTConfig,
    build_vit,
    get_config,
    interpolate_pos_embed,
    random_params,
    xla_options,
)
from arb_jax.models.vit import Block, ClsBlock

PARITY_ATOL = 1e-5  # float32, max abs difference of attention probabilities and CLS features


# --------------------------------------------------------------------------- HF references


def _hf_model(cfg: ViTConfig, image_size, seed: int = 0):
    """An HF model with cfg's architecture at ``image_size`` (its "native" size), random weights."""
    common = dict(
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        image_size=image_size,
        patch_size=cfg.patch,
        layer_norm_eps=cfg.eps,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    if not cfg.layerscale:
        hf = transformers.ViTConfig(intermediate_size=cfg.mlp_dim, qkv_bias=True, **common)
        model = transformers.ViTModel(hf, add_pooling_layer=False)
    elif cfg.n_registers:
        hf = transformers.Dinov2WithRegistersConfig(
            mlp_ratio=cfg.mlp_dim // cfg.dim, num_register_tokens=cfg.n_registers, **common
        )
        model = transformers.Dinov2WithRegistersModel(hf)
    else:
        hf = transformers.Dinov2Config(mlp_ratio=cfg.mlp_dim // cfg.dim, **common)
        model = transformers.Dinov2Model(hf)
    # Replace HF's init (std 0.02: near-uniform attention) by weights that make attention peaked.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * r)
            elif "norm" in name:
                p.copy_(1 + 0.1 * r)
            elif "lambda1" in name:
                p.copy_(0.5 + 0.1 * r)
            elif p.ndim >= 2 and "embeddings." not in name or "projection" in name:
                p.copy_(1.5 * r / np.sqrt(p[0].numel()))
            elif "position" in name:
                p.copy_(0.1 * r)
            else:  # cls_token, register_tokens, mask_token
                p.copy_(r)
    return model.eval()


def _canonical_from_hf(model, cfg: ViTConfig) -> dict:
    """Copy an HF ViT / DINOv2 state dict into the canonical Flax tree (float32 numpy)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    v2 = cfg.layerscale

    def ln(prefix):
        return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"]}

    def linear(prefix):
        return {"kernel": sd[prefix + ".weight"].T, "bias": sd[prefix + ".bias"]}

    e = "embeddings."
    tree = {
        "cls_token": sd[e + "cls_token"],
        "pos_embed": sd[e + "position_embeddings"],
        "patch_embed": {
            "kernel": sd[e + "patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
            "bias": sd[e + "patch_embeddings.projection.bias"],
        },
        "norm": ln("layernorm"),
    }
    if cfg.n_registers:
        tree["reg_tokens"] = sd[e + "register_tokens"]
    for i in range(cfg.depth):
        b = f"encoder.layer.{i}." if v2 else f"layers.{i}."
        *qkv, o = attention_keys(sd, b + "attention.")
        block = {
            "norm1": ln(b + ("norm1" if v2 else "layernorm_before")),
            "norm2": ln(b + ("norm2" if v2 else "layernorm_after")),
            "attn": {
                "qkv": {
                    "kernel": np.concatenate([sd[x + ".weight"] for x in qkv]).T,
                    "bias": np.concatenate([sd[x + ".bias"] for x in qkv]),
                },
                "proj": linear(o),
            },
            "mlp": {"fc1": linear(b + "mlp.fc1"), "fc2": linear(b + "mlp.fc2")},
        }
        if v2:
            block["ls1"] = {"gamma": sd[b + "layer_scale1.lambda1"]}
            block["ls2"] = {"gamma": sd[b + "layer_scale2.lambda1"]}
        tree[f"block_{i}"] = block
    return tree


def _hf_outputs(model, cfg: ViTConfig, images: np.ndarray):
    """HF last-layer CLS attention over patches (N, heads, h, w) and CLS feature (N, D)."""
    N, H, W, _ = images.shape
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_attentions=True)
    attn = out.attentions[-1][:, :, 0, 1 + cfg.n_registers :].numpy()
    return (attn.reshape(N, cfg.heads, H // cfg.patch, W // cfg.patch), out.last_hidden_state[:, 0].numpy())


def _torch_interpolated(pos: np.ndarray, grid_hw) -> np.ndarray:
    """Position embeddings resampled as DINO does, in torch (float32)."""
    (h, w), M, D = grid_hw, int(round((pos.shape[1] - 1) ** 0.5)), pos.shape[2]
    grid = torch.from_numpy(pos[:, 1:]).reshape(1, M, M, D).permute(0, 3, 1, 2)
    grid = torch_interpolate(
        grid, scale_factor=((h + 0.1) / M, (w + 0.1) / M), mode="bicubic", align_corners=False
    )
    return np.concatenate([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, D).numpy()], 1)


def _apply(cfg: ViTConfig, params, images, dtype=jnp.float32):
    """The model, jitted as arb-jax jits it (``xla_options``; eager dispatch is far slower)."""
    return xla_options.jit(VisionTransformer(cfg, dtype).apply)({"params": params}, images)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *size, 3)).astype(np.float32)


def _assert_parity(ours: dict, attn_ref, feat_ref, n_patches):
    assert ours["attn"].dtype == jnp.float32 and ours["features"].dtype == jnp.float32
    assert ours["attn"].shape == attn_ref.shape and ours["features"].shape == feat_ref.shape
    # The test means something only if attention is far from uniform.
    assert attn_ref.max() > 3.0 / n_patches
    np.testing.assert_allclose(ours["attn"], attn_ref, rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(ours["features"], feat_ref, rtol=0, atol=PARITY_ATOL)


# --------------------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_tiny8", "test_tiny16", "test_tiny14", "test_tiny14_reg"])
def test_parity_with_hf_at_native_size(name):
    cfg = get_config(name)
    model = _hf_model(cfg, cfg.native_size[0])
    params = _canonical_from_hf(model, cfg)
    images = _images(2, cfg.native_size)
    attn_ref, feat_ref = _hf_outputs(model, cfg, images)
    ours = _apply(cfg, params, images)
    _assert_parity(ours, attn_ref, feat_ref, cfg.pos_grid**2)
    assert set(ours) == {"attn", "features"}  # "logits" only with a head


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,grid", [("test_tiny8", (7, 5)), ("test_tiny14_reg", (6, 6)), ("test_tiny14", (3, 3))]
)
def test_parity_with_hf_at_interpolated_size(name, grid):
    # HF runs "natively" at the new size with DINO's torch-interpolated position embeddings;
    # ours interpolates the stored M×M grid (in the model at trace time, and in the bundle).
    # HF DINOv2 only skips its own resampling for square inputs, hence square grids there.
    cfg = get_config(name)
    size = (grid[0] * cfg.patch, grid[1] * cfg.patch)
    model = _hf_model(cfg, cfg.native_size[0], seed=1)
    params = _canonical_from_hf(model, cfg)
    moved = _hf_model(cfg, size if grid[0] != grid[1] else size[0], seed=1)
    state = model.state_dict()
    key = "embeddings.position_embeddings"
    state[key] = torch.from_numpy(_torch_interpolated(params["pos_embed"], grid))
    moved.load_state_dict(state)
    images = _images(2, size, seed=2)
    attn_ref, feat_ref = _hf_outputs(moved, cfg, images)
    _assert_parity(_apply(cfg, params, images), attn_ref, feat_ref, grid[0] * grid[1])
    vit = build_vit(cfg, params, image_size=size)  # pos_embed resampled once, on the host
    assert vit.params["pos_embed"].shape == (1, 1 + grid[0] * grid[1], cfg.dim)
    _assert_parity(jax.jit(vit.apply)(vit.params, images), attn_ref, feat_ref, grid[0] * grid[1])


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("dino_vits16", (224, 224)), ("dinov2_vits14_reg", (224, 224))])
def test_parity_with_hf_real_architecture(name, size, monkeypatch):
    # The registered architectures (12 blocks, D=384), random init; DINOv2 at 224 (16×16 grid,
    # interpolated from its 37×37 grid).
    cfg = get_config(name)
    grid = (size[0] // cfg.patch, size[1] // cfg.patch)
    model = _hf_model(cfg, cfg.native_size[0], seed=3)
    params = _canonical_from_hf(model, cfg)
    if size != cfg.native_size:
        state = model.state_dict()
        state["embeddings.position_embeddings"] = torch.from_numpy(
            _torch_interpolated(params["pos_embed"], grid)
        )
        model = _hf_model(cfg, size[0], seed=3)
        model.load_state_dict(state)
    images = _images(2, size, seed=4)
    attn_ref, feat_ref = _hf_outputs(model, cfg, images)
    vit = build_vit(cfg, params, image_size=size)
    for dots in ("xla", "onednn"):  # which library runs the CPU's dots (xla_options)
        monkeypatch.setenv(xla_options.CPU_DOTS_ENV, dots)
        out = xla_options.jit(vit.apply)(vit.params, images)
        _assert_parity(out, attn_ref, feat_ref, grid[0] * grid[1])


# --------------------------------------------------------------------------- the CLS-only block


def _perturbed(cfg: ViTConfig, seed: int) -> dict:
    """random_params with every leaf perturbed (non-zero biases, non-unit norms)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: (a + 0.2 * rng.standard_normal(a.shape)).astype(np.float32), random_params(cfg, seed)
    )


def _reference_forward(params: dict, cfg: ViTConfig, images: np.ndarray):
    """Plain numpy float64 ViT with FULL attention in every block (the last one included).

    Returns the last block's attention (N, heads, T, T) and all final-normed tokens (N, T, D).
    """
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    p, D, R = cfg.patch, cfg.dim, cfg.n_registers
    N, H, W, _ = images.shape

    def ln(x, q):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + cfg.eps) * q["scale"] + q["bias"]

    def lin(x, q):
        return x @ q["kernel"] + q["bias"]

    x = images.astype(np.float64).reshape(N, H // p, p, W // p, p, 3)
    x = np.einsum("nhawbc,abcd->nhwd", x, P["patch_embed"]["kernel"]).reshape(N, -1, D)
    x = x + P["patch_embed"]["bias"]
    x = np.concatenate([np.repeat(P["cls_token"], N, 0), x], 1) + P["pos_embed"]
    if R:
        x = np.concatenate([x[:, :1], np.repeat(P["reg_tokens"], N, 0), x[:, 1:]], 1)
    for i in range(cfg.depth):
        b = P[f"block_{i}"]
        q, k, v = np.split(lin(ln(x, b["norm1"]), b["attn"]["qkv"]), 3, -1)
        q, k, v = (t.reshape(N, -1, cfg.heads, cfg.head_dim).transpose(0, 2, 1, 3) for t in (q, k, v))
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(cfg.head_dim)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        y = lin((attn @ v).transpose(0, 2, 1, 3).reshape(N, -1, D), b["attn"]["proj"])
        x = x + (y * b["ls1"]["gamma"] if cfg.layerscale else y)
        y = lin(ln(x, b["norm2"]), b["mlp"]["fc1"])
        y = lin(0.5 * y * (1 + erf(y / np.sqrt(2))), b["mlp"]["fc2"])
        x = x + (y * b["ls2"]["gamma"] if cfg.layerscale else y)
    return attn, ln(x, P["norm"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_tiny8", "test_tiny14_reg"])
def test_cls_only_last_block_equals_full_block(name):
    cfg = dataclasses.replace(get_config(name), depth=3)
    params = _perturbed(cfg, seed=5)
    images = _images(2, cfg.native_size, seed=6)
    attn, tokens = _reference_forward(params, cfg, images)
    out = _apply(cfg, params, images)
    h = w = cfg.pos_grid
    np.testing.assert_allclose(
        out["attn"], attn[:, :, 0, 1 + cfg.n_registers :].reshape(2, cfg.heads, h, w), atol=1e-5
    )
    np.testing.assert_allclose(out["features"], tokens[:, 0], atol=1e-5)
    # The same parameters through the full Flax Block and the CLS-only ClsBlock.
    x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 9, cfg.dim)), jnp.float32)
    last = {"params": params[f"block_{cfg.depth - 1}"]}
    full = jax.jit(Block(cfg).apply)(last, x)
    cls, probs = jax.jit(ClsBlock(cfg).apply)(last, x)
    np.testing.assert_allclose(cls, full[:, 0], atol=1e-5)
    assert probs.shape == (2, cfg.heads, 9)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_classifier_head_logits():
    cfg = dataclasses.replace(get_config("test_tiny8"), n_classes=5)
    params = _perturbed(cfg, seed=8)
    assert params["head"]["kernel"].shape == (32, 5)
    images = _images(3, cfg.native_size)
    out = _apply(cfg, params, images)
    ref = np.asarray(out["features"], np.float64) @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(out["logits"], ref, atol=1e-5)


# --------------------------------------------------------------------------- bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_tiny14_reg"])
def test_bfloat16_close_to_float32(name):
    # bf16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2%). q and k are rounded (and the
    # LayerNorm outputs feeding them), so a logit l moves by a few 2^-9·|l|: the error of
    # log-attention grows with the spread of the logits, i.e. with the map's log-range.
    # Bounds, per map: |log a16 - log a32| <= 4% of (max log a32 - min log a32) (measured <= 2.0%
    # here, 0.8% for a random ViT-S/16), and |a16 - a32| <= 5% of max a32 (measured <= 3.2%).
    # CLS features (O(1) after the final LayerNorm): within 0.15 absolute (measured <= 0.07).
    cfg = get_config(name)
    params = _perturbed(cfg, seed=9)
    images = _images(4, cfg.native_size, seed=10)
    f32 = jax.jit(build_vit(cfg, params).apply)(params, images)
    bf16 = jax.jit(build_vit(cfg, params, dtype="bfloat16").apply)(params, images)
    assert bf16["attn"].dtype == jnp.float32 and bf16["features"].dtype == jnp.float32
    a32, a16 = np.asarray(f32["attn"], np.float64), np.asarray(bf16["attn"], np.float64)
    assert np.abs(a16 - a32).max() > 1e-4  # really computed in bf16
    log_range = np.log(a32).max((2, 3)) - np.log(a32).min((2, 3))
    np.testing.assert_array_less(np.abs(np.log(a16) - np.log(a32)).max((2, 3)), 0.04 * log_range)
    np.testing.assert_array_less(np.abs(a16 - a32).max((2, 3)), 0.05 * a32.max((2, 3)))
    np.testing.assert_allclose(bf16["features"], f32["features"], rtol=0, atol=0.15)


# --------------------------------------------------------------------------- input checks


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape,dtype,error,match",
    [
        ((32, 32, 3), np.float32, ValueError, r"shape \(N, H, W, 3\).*\(32, 32, 3\)"),
        ((1, 32, 32, 4), np.float32, ValueError, r"3 \(RGB\) channels.*got 4"),
        ((1, 3, 32, 32), np.float32, ValueError, r"3 \(RGB\) channels.*got 32"),
        ((1, 32, 32, 3), np.uint8, TypeError, r"float.*uint8"),
        ((1, 32, 32, 3), np.int32, TypeError, r"float.*int32"),
        ((0, 32, 32, 3), np.float32, ValueError, "empty batch"),
        ((1, 20, 32, 3), np.float32, ValueError, r"height 20 and width 32.*patch size 8"),
        ((1, 32, 36, 3), np.float32, ValueError, r"height 32 and width 36.*patch size 8"),
    ],
)
def test_bad_images_raise_a_clear_error(shape, dtype, error, match):
    cfg = get_config("test_tiny8")
    params = random_params(cfg)
    with pytest.raises(error, match=match):
        VisionTransformer(cfg).apply({"params": params}, np.zeros(shape, dtype))
    vit = build_vit(cfg, params)
    with pytest.raises(error, match=match):
        vit.cls_attention(np.zeros(shape, dtype))
    with pytest.raises(TypeError, match="images must be an array"):
        vit.cls_attention([[0.0]])


def test_pos_embed_of_wrong_length_is_a_clear_error():
    cfg = get_config("test_tiny8")
    params = {**random_params(cfg), "pos_embed": np.zeros((1, 10, 32), np.float32)}
    with pytest.raises(ValueError, match="pos_embed has 10 tokens"):
        VisionTransformer(cfg).apply({"params": params}, _images(1, (32, 32)))


# --------------------------------------------------------------------------- config and tree


def _contract_shapes(c: ViTConfig) -> dict:
    """The canonical tree's shapes, written out from the shared contract."""
    D, H, M, p = c.dim, c.mlp_dim, c.pos_grid, c.patch
    shapes = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, 1 + M * M, D),
        "patch_embed/kernel": (p, p, 3, D),
        "patch_embed/bias": (D,),
        "norm/scale": (D,),
        "norm/bias": (D,),
    }
    if c.n_registers:
        shapes["reg_tokens"] = (1, c.n_registers, D)
    if c.n_classes:
        shapes.update({"head/kernel": (D, c.n_classes), "head/bias": (c.n_classes,)})
    for i in range(c.depth):
        b = f"block_{i}/"
        shapes.update(
            {
                b + "norm1/scale": (D,),
                b + "norm1/bias": (D,),
                b + "norm2/scale": (D,),
                b + "norm2/bias": (D,),
                b + "attn/qkv/kernel": (D, 3 * D),
                b + "attn/qkv/bias": (3 * D,),
                b + "attn/proj/kernel": (D, D),
                b + "attn/proj/bias": (D,),
                b + "mlp/fc1/kernel": (D, H),
                b + "mlp/fc1/bias": (H,),
                b + "mlp/fc2/kernel": (H, D),
                b + "mlp/fc2/bias": (D,),
            }
        )
        if c.layerscale:
            shapes.update({b + "ls1/gamma": (D,), b + "ls2/gamma": (D,)})
    return shapes


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_tree_matches_the_contract(name):
    cfg = get_config(name)
    if name.startswith("test_"):
        cfg = dataclasses.replace(cfg, n_classes=3)
    shape_tree = jax.eval_shape(
        VisionTransformer(cfg).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *cfg.native_size, 3), jnp.float32),
    )
    flat = flax.traverse_util.flatten_dict(shape_tree["params"], sep="/")
    assert {k: v.shape for k, v in flat.items()} == _contract_shapes(cfg)
    assert all(v.dtype == jnp.float32 for v in flat.values())


def test_registered_configs():
    s8, b16 = get_config("dino_vits8"), get_config("dino_vitb16")
    assert (s8.patch, s8.dim, s8.depth, s8.heads, s8.mlp_dim, s8.pos_grid) == (8, 384, 12, 6, 1536, 28)
    assert (b16.patch, b16.dim, b16.heads, b16.mlp_dim, b16.pos_grid) == (16, 768, 12, 3072, 14)
    assert not s8.layerscale and s8.n_registers == 0 and s8.eps == 1e-6
    v2 = get_config("dinov2_vitb14_reg")
    assert (v2.patch, v2.dim, v2.pos_grid, v2.n_registers, v2.layerscale) == (14, 768, 37, 4, True)
    assert get_config("dinov2_vits14").n_registers == 0
    assert get_config("dinov2_vits14").native_size == (518, 518)
    assert all(c.name == n for n, c in CONFIGS.items())


def test_config_round_trip_and_errors():
    cfg = get_config("test_tiny14_reg")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ViTConfig keys.*'width'"):
        ViTConfig.from_dict({**cfg.to_dict(), "width": 3})
    with pytest.raises(ValueError, match=r"unknown ViT config 'vit_huge'.*dino_vits8"):
        get_config("vit_huge")
    with pytest.raises(ValueError, match="dim=30 is not divisible by heads=4"):
        ViTConfig(patch=8, dim=30, depth=1, heads=4, mlp_dim=8, pos_grid=2)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        ViTConfig(patch=8, dim=32, depth=0, heads=4, mlp_dim=8, pos_grid=2)


# --------------------------------------------------------------------------- the bundle


@pytest.mark.slow
def test_bundle_random_init_and_pos_embed_resampled_once():
    vit = build_vit("test_tiny8", image_size=(56, 40), seed=3)
    assert vit.meta["random_init"] is True and vit.meta["seed"] == 3
    assert vit.grid == (7, 5) and vit.patch == 8 and vit.n_heads == 2
    native = random_params(get_config("test_tiny8"), seed=3)
    np.testing.assert_allclose(
        vit.params["pos_embed"], interpolate_pos_embed(native["pos_embed"], (7, 5)), atol=0
    )
    # The bundle (host float64 resampling) and the model (float32, at trace time) agree.
    images = _images(2, (56, 40))
    in_model = _apply(vit.config, native, images)
    np.testing.assert_allclose(vit.cls_attention(images), in_model["attn"], atol=1e-6)
    np.testing.assert_allclose(vit.features(images), in_model["features"], atol=1e-6)
    assert "params" not in repr(vit) and "test_tiny8" in repr(vit)
    assert build_vit("test_tiny8", params=native).meta["random_init"] is False


@pytest.mark.slow
def test_bundle_apply_is_pure_under_jit_and_vmap():
    vit = build_vit("test_tiny14_reg")
    images = _images(3, vit.image_size, seed=11)

    @jax.jit
    def per_image(params, x):
        return jax.vmap(lambda im: vit.apply(params, im[None])["attn"][0])(x)

    np.testing.assert_allclose(per_image(vit.params, images), vit.cls_attention(images), atol=1e-6)


def test_bundle_errors():
    vit = build_vit("test_tiny8")
    with pytest.raises(ValueError, match=r"images are 40x32 but the model was loaded for 32x32"):
        vit.features(_images(1, (40, 32)))
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_vit("test_tiny8", dtype="float16")
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        build_vit("test_tiny8", image_size=(30, 32))
    with pytest.raises(ValueError, match="unknown ViT config"):
        build_vit("nope")
    params = random_params(get_config("test_tiny8"))
    broken = {k: v for k, v in params.items() if k != "norm"}
    with pytest.raises(ValueError, match=r"missing \['norm/bias', 'norm/scale'\]"):
        build_vit("test_tiny8", params=broken)
    wrong = {**params, "cls_token": np.zeros((1, 1, 16), np.float32)}
    with pytest.raises(ValueError, match=r"cls_token.*\(1, 1, 16\), expected \(1, 1, 32\)"):
        build_vit("test_tiny8", params=wrong)
    with pytest.raises(ValueError, match="pos_embed'] has 10 tokens"):
        build_vit("test_tiny8", params={**params, "pos_embed": np.zeros((1, 10, 32), np.float32)})


@pytest.mark.slow
def test_at_size_equals_building_at_that_size():
    """at_size resamples only pos_embed from the stored grid: the same parameters, bit for bit,
    as build_vit at that size, and back to the first size gives the first bundle's values."""
    cfg = get_config("test_tiny8")
    params = random_params(cfg, seed=3)
    base = build_vit(cfg, params, dtype="bfloat16", meta={"source": "fixture"})
    head = base.with_head(np.ones((cfg.dim, 2)), np.zeros(2))
    for vit in (base, head):
        assert vit.at_size(vit.image_size) is vit
        other = vit.at_size((40, 24))
        ref = build_vit(vit.config, vit.stored_params(), image_size=(40, 24), dtype="bfloat16", meta=vit.meta)
        assert other.image_size == (40, 24) and other.grid == (5, 3) and other.dtype == "bfloat16"
        assert other.meta == vit.meta and other.config == vit.config
        flat = flax.traverse_util.flatten_dict(other.params)
        want = flax.traverse_util.flatten_dict(ref.params)
        assert flat.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(flat[k], want[k], err_msg=str(k))
        x = _images(2, (40, 24))
        np.testing.assert_array_equal(other.cls_attention(x), ref.cls_attention(x))
        back = other.at_size(vit.image_size)
        np.testing.assert_array_equal(back.params["pos_embed"], vit.params["pos_embed"])
        np.testing.assert_array_equal(back.stored_params()["pos_embed"], vit.stored_params()["pos_embed"])
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        base.at_size((40, 20))
