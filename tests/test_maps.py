"""Map functions against independent references on the same weights.

Tiny random-init HF models (fixtures, every parameter perturbed), 3 blocks, written with
``save_pretrained`` and read by the converter; the HF model run in float64 is the reference:

* per-block CLS attention and attention rollout: HF's ``output_attentions`` (rollout computed
  here in numpy from them, Abnar & Zuidema's recipe), ≤ 1e-5 absolute in float32;
* CDAM: a PyTorch autograd transcription of the authors' ``get_CDAM`` (a forward hook on the last
  block's first LayerNorm for the tokens, a full backward hook for their gradient), ≤ 1e-5 of
  the map's largest magnitude (CDAM values are gradients: their float32 error scales with them).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _hf import hf_model, perturb, torch_single_thread  # noqa: F401 (an autouse fixture)

from arb_jax.convert import read_checkpoint
from arb_jax.models import (
    VisionTransformer,
    build_vit,
    cdam_map,
    check_map_output,
    cls_attention_map,
    get_config,
    random_params,
    rollout_map,
    xla_options,
)

ATTN_TOL = 1e-5  # absolute, attention probabilities and rollout (float32 vs float64)
CDAM_RTOL = 1e-5  # of max |CDAM| of the image
LAYERS = 3
CASES = {
    #           kind     patch dim heads M regs
    "vit_p8": ("vit", 8, 32, 2, 4, 0),
    "dinov2_reg": ("dinov2", 14, 32, 4, 3, 2),
}


def _last_norm1(model):
    layers = model.layers if hasattr(model, "layers") else model.encoder.layer
    last = layers[-1]
    return last.layernorm_before if hasattr(last, "layernorm_before") else last.norm1


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            kind, patch, dim, heads, M, regs = CASES[name]
            torch.manual_seed(0)
            model = hf_model(kind, patch, dim, heads, M * patch, regs, layers=LAYERS)
            perturb(model, seed=3)
            root = tmp_path_factory.mktemp(name)
            model.save_pretrained(root)
            config, params, _ = read_checkpoint(root)
            vit = build_vit(config, params)
            images = np.random.default_rng(1).standard_normal((2, M * patch, M * patch, 3)).astype(np.float32)
            cache[name] = (model.double(), vit, images)
        return cache[name]

    return get


def _hf_attentions(model, images):
    with torch.no_grad():
        out = model(torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2), output_attentions=True)
    return [a.numpy() for a in out.attentions]  # L × (N, heads, T, T) float64


def _reference_rollout(attentions, regs, grid, fusion="mean"):
    """Abnar & Zuidema: R = A'_L ··· A'_1, A' = rows of F + I renormalised (F = the heads' mean:
    0.5·F + 0.5·I; or max / min); the CLS row over the patch columns."""
    T = attentions[0].shape[-1]
    R = np.broadcast_to(np.eye(T), (attentions[0].shape[0], T, T))
    for a in attentions:
        step = getattr(np, fusion)(a, axis=1) + np.eye(T)
        R = (step / step.sum(-1, keepdims=True)) @ R
    return R[:, 0, 1 + regs :].reshape(-1, *grid)


def _reference_cdam(model, images, score_of):
    """The authors' get_CDAM in torch autograd, one image at a time (their batch of one)."""
    norm1, maps = _last_norm1(model), []
    activation, grad = {}, {}
    for image in images:
        h1 = norm1.register_forward_hook(lambda m, i, o: activation.update(z=o.detach()))
        h2 = norm1.register_full_backward_hook(lambda m, gi, go: grad.update(z=go[0]))
        x = torch.from_numpy(image[None].astype(np.float64)).permute(0, 3, 1, 2).requires_grad_(True)
        score_of(model(x).last_hidden_state[:, 0])[0].backward()
        h1.remove(), h2.remove()
        tokens, grads = activation["z"][0], grad["z"][0]
        maps.append((tokens * grads).sum(-1).numpy())
    return np.stack(maps)  # (N, T) float64, every token


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_block_attention_and_rollout_match_hf(case, name):
    model, vit, images = case(name)
    c, grid = vit.config, vit.grid
    attentions = _hf_attentions(model, images)
    for block in range(LAYERS):
        ref = attentions[block][:, :, 0, 1 + c.n_registers :].reshape(2, c.heads, *grid)
        per_head = jax.jit(cls_attention_map(vit, block=block, head="all"))(vit.params, images)
        mean = jax.jit(cls_attention_map(vit, block=block - LAYERS))(vit.params, images)
        one = jax.jit(cls_attention_map(vit, block=block, head=1))(vit.params, images)
        err = float(np.abs(np.asarray(per_head) - ref).max())
        print(f"{name} block {block}: per-head attention max abs err {err:.2e}")
        assert per_head.shape == (2, c.heads, *grid) and per_head.dtype == jnp.float32
        assert err <= ATTN_TOL
        np.testing.assert_allclose(mean, ref.mean(1), rtol=0, atol=ATTN_TOL)
        np.testing.assert_allclose(one, ref[:, 1], rtol=0, atol=ATTN_TOL)
        assert ref.std(axis=(2, 3)).min() > 0.1 / ref[0, 0].size  # maps far from uniform
    # the last block's map is the model's own CLS attention, bit for bit (compiled alike)
    np.testing.assert_array_equal(
        xla_options.jit(cls_attention_map(vit, head="all"))(vit.params, images), vit.cls_attention(images)
    )
    for fusion in ("mean", "max", "min"):
        ref = _reference_rollout(attentions, c.n_registers, grid, fusion)
        ours = jax.jit(rollout_map(vit, head_fusion=fusion))(vit.params, images)
        err = float(np.abs(np.asarray(ours) - ref).max())
        print(f"{name}: rollout ({fusion}) max abs err {err:.2e} (values up to {ref.max():.3f})")
        assert ours.shape == (2, *grid) and ours.dtype == jnp.float32
        assert err <= ATTN_TOL
        assert ref.std(axis=(1, 2)).min() > 0.05 / ref[0].size


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_cdam_matches_the_authors_get_cdam_in_torch(case, name):
    model, vit, images = case(name)
    c, first = vit.config, 1 + vit.config.n_registers
    g = np.random.default_rng(2)
    kernel, bias = g.standard_normal((c.dim, 5)).astype(np.float32), g.standard_normal(5).astype(np.float32)
    concept = g.standard_normal(c.dim).astype(np.float32)
    headed = vit.with_head(kernel, bias)
    W, b = torch.from_numpy(kernel.astype(np.float64)), torch.from_numpy(bias.astype(np.float64))
    cases = {
        "class 3": (cdam_map(headed, class_index=3), lambda f: (f @ W + b)[:, 3]),
        "concept": (
            cdam_map(vit, concept=concept),
            lambda f: f @ torch.from_numpy(concept.astype(np.float64)),
        ),
    }
    for what, (map_fn, score_of) in cases.items():
        params = headed.params if what.startswith("class") else vit.params
        ours = np.asarray(jax.jit(map_fn)(params, images))
        ref_all = _reference_cdam(model, images, score_of)
        ref = ref_all[:, first:].reshape(2, *vit.grid)
        scale = np.abs(ref).max(axis=(1, 2))
        err = (np.abs(ours - ref).max(axis=(1, 2)) / scale).max()
        print(f"{name} CDAM {what}: max abs err / max |CDAM| = {err:.2e} (max |CDAM| {scale.max():.3g})")
        assert ours.shape == (2, *vit.grid) and ours.dtype == np.float32
        assert err <= CDAM_RTOL
        assert np.all(scale > 1e-3) and (ours > 0).any() and (ours < 0).any()  # signed, not trivial


@pytest.mark.slow
def test_maps_are_pure_under_jit_vmap_grad_and_scan():
    vit = build_vit("test_tiny14_reg")
    vit = vit.with_head(np.eye(vit.config.dim, 3, dtype=np.float32), np.zeros(3, np.float32))
    images = np.random.default_rng(0).standard_normal((3, *vit.image_size, 3)).astype(np.float32)
    fns = [cls_attention_map(vit, block=0), rollout_map(vit), cdam_map(vit, class_index=2)]

    @jax.jit
    def all_ways(params, x):
        out = []
        for fn in fns:
            direct = fn(params, x)
            vmapped = jax.vmap(lambda im, fn=fn: fn(params, im[None])[0])(x)
            scanned = jax.lax.scan(lambda carry, im, fn=fn: (carry, fn(params, im[None])[0]), 0, x)[1]
            grad = jax.grad(lambda p, fn=fn: jnp.sum(fn(p, x)))(params)["cls_token"]
            out.append((direct, vmapped, scanned, grad))
        return out

    for fn, (direct, vmapped, scanned, grad) in zip(fns, all_ways(vit.params, images), strict=True):
        assert direct.shape == (3, *vit.grid), fn.__name__
        np.testing.assert_allclose(vmapped, direct, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(scanned, direct, atol=1e-6, rtol=1e-5)
        assert np.isfinite(np.asarray(grad)).all()
        check_map_output(fn.__name__, direct, images, vit.patch)


def test_extras_leave_the_default_outputs_unchanged():
    cfg = dataclasses.replace(get_config("test_tiny8"), depth=3)
    params = random_params(cfg, seed=4)
    images = np.random.default_rng(5).standard_normal((2, *cfg.native_size, 3)).astype(np.float32)
    base = jax.jit(VisionTransformer(cfg).apply)({"params": params}, images)
    extra = VisionTransformer(cfg, extras=("block_attn", "rollout", "last_normed"))
    out = jax.jit(extra.apply)({"params": params}, images)
    T = 1 + cfg.pos_grid**2
    assert out["block_attn"].shape == (2, 3, cfg.heads, T)
    assert out["rollout"].shape == (2, T) and out["last_normed"].shape == (2, T, cfg.dim)
    np.testing.assert_allclose(out["rollout"].sum(-1), 1.0, atol=1e-5)
    # the explicit attention of blocks 0 … L−2 changes only the float32 rounding
    last = out["block_attn"][:, -1, :, 1:].reshape(base["attn"].shape)
    np.testing.assert_allclose(last, base["attn"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["attn"], base["attn"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["features"], base["features"], rtol=0, atol=1e-5)
    zero = jax.jit(extra.apply)({"params": params}, images, jnp.zeros((2, T, cfg.dim)))
    np.testing.assert_array_equal(zero["features"], out["features"])
    with pytest.raises(ValueError, match=r"unknown VisionTransformer extras \['maps'\]"):
        VisionTransformer(cfg, extras=("maps",)).apply({"params": params}, images)


def test_factory_and_output_errors():
    vit = build_vit("test_tiny8")
    with pytest.raises(ValueError, match=r"block must be an int in \[-2, 1\]"):
        cls_attention_map(vit, block=2)
    with pytest.raises(ValueError, match="head must be 'mean', 'all' or an int in \\[0, 1\\]"):
        cls_attention_map(vit, head=2)
    with pytest.raises(ValueError, match="head must be"):
        cls_attention_map(vit, head="max")
    with pytest.raises(ValueError, match="needs a model with a linear head"):
        cdam_map(vit, class_index=0)
    with pytest.raises(ValueError, match="exactly one of class_index"):
        cdam_map(vit)
    with pytest.raises(ValueError, match=r"concept must be a finite vector of shape \(32,\)"):
        cdam_map(vit, concept=np.ones(3))
    with pytest.raises(ValueError, match=r"class_index must be an int in \[0, 1\]"):
        cdam_map(vit.with_head(np.ones((32, 2)), np.zeros(2)), class_index=2)
    with pytest.raises(ValueError, match=r"head_fusion must be one of \('mean', 'max', 'min'\), got 'sum'"):
        rollout_map(vit, head_fusion="sum")
    with pytest.raises(TypeError, match="model must be a ViT bundle"):
        rollout_map(3)
    with pytest.raises(ValueError, match="dtype='bfloat16' given for a ViT bundle of dtype 'float32'"):
        rollout_map(vit, dtype="bfloat16")
    bf16 = rollout_map("test_tiny8", dtype="bfloat16")(vit.params, np.zeros((1, 32, 32, 3)))
    assert bf16.shape == (1, 4, 4) and bf16.dtype == jnp.float32
    # params on the stored grid, images of another size: resampled at trace time, as the model
    stored = random_params(get_config("test_tiny8"))
    assert cls_attention_map("test_tiny8", block=0)(stored, np.zeros((1, 40, 48, 3))).shape == (1, 5, 6)

    images = jnp.zeros((2, 32, 32, 3))

    def wrong_shape(params, x):
        return jnp.zeros((2, 16))

    def traced(x):
        check_map_output("wrong_shape", wrong_shape(None, x), x, 8)

    with pytest.raises(
        ValueError,
        match=r"'wrong_shape' returned scores of shape \(2, 16\) for images of shape "
        r"\(2, 32, 32, 3\) \(patch 8\); expected \(2, 4, 4\)",
    ):
        jax.jit(traced)(images)  # at trace time
    with pytest.raises(ValueError, match=r"'m' returned scores of dtype float16"):
        check_map_output("m", jnp.zeros((2, 4, 4), jnp.float16), images, 8)
    with pytest.raises(ValueError, match=r"'m' returned 1 non-finite score\(s\).*shape \(2, 4, 4\)"):
        check_map_output("m", jnp.zeros((2, 4, 4)).at[0, 1, 2].set(jnp.nan), images, 8)
    flag = jax.jit(lambda s: check_map_output("m", s, images, 8))(jnp.full((2, 4, 4), jnp.inf))
    assert not bool(flag)  # inside jit the finiteness comes back as a flag
    assert bool(check_map_output("m", jnp.zeros((2, 2, 4, 4)), images, 8, heads=2))
