"""Converted checkpoints reproduce PyTorch: CLS attention of every head and CLS features ≤ 1e-5.

Tiny random-init HF models (fixtures, not pretrained weights; every parameter perturbed so that
no LayerNorm scale is 1 and no bias 0) are written in each genuine file format:

* ``hf_safetensors``: ``save_pretrained`` (``model.safetensors`` + ``config.json``);
* ``hf_bin``: ``pytorch_model.bin`` as transformers 4 wrote it (``torch.save`` of the saved names;
  transformers 5 only writes safetensors) — checked to load with ``from_pretrained``;
* ``hf_in_memory``: ``torch.save(model.state_dict())`` (transformers 5 in-memory names);
* ``dino_pth``: DINO hub / DINOv2 hub state dict built from the same weights (q|k|v concatenated,
  DINOv2's ``mask_token``, ``register_tokens``, ``ls1.gamma``);
* ``timm_safetensors``: the same names plus a timm linear ``head`` (logits checked too);
* ``dino_training``: DINO's ``checkpoint.pth`` (teacher, student, optimizer, args);
* ``lightning``: a Lightning ``.ckpt`` with ``model.*`` and a ``linear.*`` classifier.

Each file is converted (Orbax written and read back) and run by the Flax model at the native size
and at a non-square size that needs position-embedding interpolation. There, the PyTorch reference
is the HF model built for that size with its position embeddings replaced by DINO's
``interpolate(grid, scale_factor=((h + 0.1)/M, (w + 0.1)/M), mode="bicubic")``; HF's DINOv2 would
re-interpolate them itself (with ``size=``, not DINO's scale factor), so its
``interpolate_pos_encoding`` is set to return them as they are.
"""

from __future__ import annotations

import argparse
import collections
import shutil

import numpy as np
import pytest
import torch
import transformers as tf
from _hf import attention_linears, hf_model, perturb  # tests/_hf.py
from safetensors.torch import load_file, save_file

from arb_jax.convert import convert, load_converted
from arb_jax.models import build_vit, xla_options

TOL = 1e-5
N_CLASSES = 5

CASES = {
    #            kind      patch dim heads M  regs  new size (H, W)
    "vit_p8": ("vit", 8, 32, 2, 4, 0, (40, 56)),
    "vit_p16": ("vit", 16, 48, 3, 3, 0, (32, 64)),
    "dinov2": ("dinov2", 14, 32, 2, 2, 0, (42, 56)),
    "dinov2_reg": ("dinov2", 14, 48, 4, 3, 2, (56, 28)),
}
FORMATS = (
    "hf_safetensors",
    "hf_bin",
    "hf_in_memory",
    "dino_pth",
    "timm_safetensors",
    "dino_training",
    "lightning",
)


def _layers(model):
    return model.layers if hasattr(model, "layers") else model.encoder.layer


def _dino_names(model):
    """DINO / DINOv2-hub state dict of an HF model, from its modules."""
    emb, t = model.embeddings, lambda x: x.detach().clone()
    sd = collections.OrderedDict(cls_token=t(emb.cls_token))
    if getattr(emb, "register_tokens", None) is not None:
        sd["register_tokens"] = t(emb.register_tokens)
    sd["pos_embed"] = t(emb.position_embeddings)
    if getattr(emb, "mask_token", None) is not None:
        sd["mask_token"] = t(emb.mask_token)
    sd["patch_embed.proj.weight"] = t(emb.patch_embeddings.projection.weight)
    sd["patch_embed.proj.bias"] = t(emb.patch_embeddings.projection.bias)
    for i, layer in enumerate(_layers(model)):
        a, b = layer.attention, f"blocks.{i}."
        n1 = layer.layernorm_before if hasattr(layer, "layernorm_before") else layer.norm1
        n2 = layer.layernorm_after if hasattr(layer, "layernorm_after") else layer.norm2
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = t(n1.weight), t(n1.bias)
        q, k, v, o = attention_linears(a)
        sd[b + "attn.qkv.weight"] = torch.cat([t(q.weight), t(k.weight), t(v.weight)])
        sd[b + "attn.qkv.bias"] = torch.cat([t(q.bias), t(k.bias), t(v.bias)])
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = t(o.weight), t(o.bias)
        if hasattr(layer, "layer_scale1"):
            sd[b + "ls1.gamma"] = t(layer.layer_scale1.lambda1)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = t(n2.weight), t(n2.bias)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = t(layer.mlp.fc1.weight), t(layer.mlp.fc1.bias)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = t(layer.mlp.fc2.weight), t(layer.mlp.fc2.bias)
        if hasattr(layer, "layer_scale2"):
            sd[b + "ls2.gamma"] = t(layer.layer_scale2.lambda1)
    sd["norm.weight"], sd["norm.bias"] = t(model.layernorm.weight), t(model.layernorm.bias)
    return sd


def _write_formats(model, root, heads, head_w, head_b):
    """Write every format; returns {format: (src, convert kwargs)}."""
    hf_dir, bin_dir, plain = root / "hf", root / "hf_bin", root / "plain"
    model.save_pretrained(hf_dir)
    bin_dir.mkdir()
    shutil.copy(hf_dir / "config.json", bin_dir / "config.json")
    torch.save(load_file(hf_dir / "model.safetensors"), bin_dir / "pytorch_model.bin")
    extra = {"add_pooling_layer": False} if isinstance(model, tf.ViTModel) else {}
    reloaded = type(model).from_pretrained(bin_dir, **extra)
    for k, v in model.state_dict().items():  # the .bin is a genuine HF checkpoint
        torch.testing.assert_close(reloaded.state_dict()[k], v, rtol=0, atol=0)
    torch.save(model.state_dict(), hf_dir / "in_memory.pth")
    plain.mkdir()
    sd = _dino_names(model)
    torch.save(sd, plain / "backbone.pth")
    save_file({**sd, "head.weight": head_w, "head.bias": head_b}, plain / "timm.safetensors")
    student = {f"module.backbone.{k}": v + 1.0 for k, v in sd.items()}
    projector = {
        "head.mlp.0.weight": torch.randn(16, sd["norm.weight"].shape[0]),
        "head.mlp.0.bias": torch.randn(16),
        "head.last_layer.weight_g": torch.ones(8, 1),
        "head.last_layer.weight_v": torch.randn(8, 16),
    }
    torch.save(
        {
            "teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **projector},
            "student": {**student, **{f"module.{k}": v for k, v in projector.items()}},
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=8),
            "dino_loss": {"center": torch.zeros(1, 8)},
        },
        plain / "checkpoint.pth",
    )
    torch.save(
        {
            "epoch": 3,
            "global_step": 30,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {
                **{f"model.{k}": v for k, v in sd.items()},
                "linear.weight": head_w,
                "linear.bias": head_b,
            },
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 3e-4},
        },
        plain / "linear.ckpt",
    )
    given = {"heads": heads}
    return {
        "hf_safetensors": (hf_dir, {}),
        "hf_bin": (bin_dir, {}),
        "hf_in_memory": (hf_dir / "in_memory.pth", {}),
        "dino_pth": (plain / "backbone.pth", given),
        "timm_safetensors": (plain / "timm.safetensors", given),
        "dino_training": (plain / "checkpoint.pth", given),
        "lightning": (plain / "linear.ckpt", given),
    }


def _dino_interpolate(pos, grid, new_grid):
    """DINO's position-embedding resampling, in torch (the reference)."""
    cls, patches = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    h, w = new_grid
    patches = patches.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(
        patches, scale_factor=((h + 0.1) / grid, (w + 0.1) / grid), mode="bicubic", align_corners=False
    )
    assert patches.shape[-2:] == (h, w)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)


def _torch_reference(model, kind, patch, dim, heads, M, regs, size, images):
    """(attn (N, heads, h, w), features (N, D)) of the HF model at ``size``."""
    h, w = size[0] // patch, size[1] // patch
    if (h, w) != (M, M):
        sd = model.state_dict()
        sd["embeddings.position_embeddings"] = _dino_interpolate(
            sd["embeddings.position_embeddings"], M, (h, w)
        )
        model = hf_model(kind, patch, dim, heads, size, regs)
        model.load_state_dict(sd, strict=True)
        if kind == "dinov2":  # use the stored (already resampled) embeddings as they are
            emb = model.embeddings
            emb.interpolate_pos_encoding = lambda embeddings, height, width: emb.position_embeddings
    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2), output_attentions=True)
    attn = out.attentions[-1][:, :, 0, 1 + regs :].reshape(len(images), heads, h, w)
    return attn.numpy(), out.last_hidden_state[:, 0].numpy()


_COMPILED = {}


def _forward(vit):
    """One compiled forward per (config, size), shared by every format's parameters, compiled as
    the bundle's entry points compile (``xla_options``: the same CPU dot library)."""
    key = (vit.config, vit.image_size)
    if key not in _COMPILED:
        _COMPILED[key] = xla_options.jit(vit.apply)
    return _COMPILED[key]


@pytest.fixture(scope="module")
def case_data(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            kind, patch, dim, heads, M, regs, new = CASES[name]
            torch.manual_seed(0)
            model = hf_model(kind, patch, dim, heads, M * patch, regs)
            perturb(model, seed=len(cache) + 1)
            g = torch.Generator().manual_seed(7)
            head_w, head_b = torch.randn(N_CLASSES, dim, generator=g), torch.randn(N_CLASSES, generator=g)
            root = tmp_path_factory.mktemp(name)
            files = _write_formats(model, root, heads, head_w, head_b)
            rng = np.random.default_rng(0)
            refs = {}
            for size in ((M * patch, M * patch), new):
                images = rng.standard_normal((2, *size, 3)).astype(np.float32)
                refs[size] = (
                    images,
                    *_torch_reference(model, kind, patch, dim, heads, M, regs, size, images),
                )
            cache[name] = (files, refs, head_w.numpy(), head_b.numpy())
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_matches_pytorch(case_data, tmp_path, case, fmt):
    kind, patch, dim, heads, M, regs, new = CASES[case]
    files, refs, head_w, head_b = case_data(case)
    src, kwargs = files[fmt]
    config, params = convert(src, tmp_path / "converted", **kwargs)
    config, params, meta = load_converted(tmp_path / "converted")
    assert (config.patch, config.dim, config.heads, config.pos_grid, config.n_registers) == (
        patch,
        dim,
        heads,
        M,
        regs,
    )
    assert config.layerscale == (kind == "dinov2")
    assert config.n_classes == (N_CLASSES if fmt in ("timm_safetensors", "lightning") else 0)
    for size, (images, attn_ref, feat_ref) in refs.items():
        vit = build_vit(config, params, image_size=size)
        out = _forward(vit)(vit.params, images)
        attn, feats = np.asarray(out["attn"]), np.asarray(out["features"])
        if fmt == "hf_safetensors" and case in ("vit_p8", "dinov2_reg"):
            # the public entry points give the same numbers (checked on two cases: each compiles)
            np.testing.assert_array_equal(np.asarray(vit.cls_attention(images)), attn)
            np.testing.assert_array_equal(np.asarray(vit.features(images)), feats)
        assert attn.shape == (2, heads, size[0] // patch, size[1] // patch)
        err_attn = float(np.abs(attn - attn_ref).max())
        err_feat = float(np.abs(feats - feat_ref).max())
        print(f"{case} {fmt} {size}: attn {err_attn:.2e} features {err_feat:.2e}")
        assert err_attn <= TOL, (size, err_attn)
        assert err_feat <= TOL, (size, err_feat)
        # The maps are far from uniform (the test has teeth) and are probabilities.
        assert attn.std(axis=(2, 3)).min() > 0.1 / attn[0, 0].size
        assert np.all(attn >= 0) and np.all(attn.sum(axis=(2, 3)) <= 1 + 1e-6)
        if config.n_classes:  # the linear head is wired as W·feature + b
            logits_ref = feats.astype(np.float64) @ head_w.T.astype(np.float64) + head_b
            assert np.abs(np.asarray(out["logits"]) - logits_ref).max() <= TOL
