"""Checkpoint conversion: every format round-trips, the architecture is inferred, errors are clear.

State dicts are small random tensors (fixtures, not pretrained models) written with the genuine
writers (``torch.save``, ``save_pretrained``, ``safetensors.torch.save_file``); the expected
canonical arrays are computed here from the torch tensors with explicit transposes.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from _hf import attention_linears  # tests/_hf.py
from safetensors.torch import save_file

import arb_jax.convert as wc
from arb_jax.convert import (
    CheckpointFormatError,
    CheckpointKeysError,
    UnsafeCheckpointError,
    convert,
    load_converted,
    load_torch_zip,
    read_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Fixtures: random DINO-named state dicts and the canonical arrays they must give


def dino_state_dict(
    dim=64, depth=2, patch=8, grid=3, mlp=128, registers=0, layerscale=False, n_classes=0, seed=0
):
    """A random DINO / timm / DINOv2-hub style state dict (torch float32 tensors)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = collections.OrderedDict()
    sd["cls_token"] = r(1, 1, dim)
    if registers:
        sd["register_tokens"] = r(1, registers, dim)
    sd["pos_embed"] = r(1, 1 + grid * grid, dim)
    if layerscale:
        sd["mask_token"] = r(1, dim)
    sd["patch_embed.proj.weight"] = r(dim, 3, patch, patch)
    sd["patch_embed.proj.bias"] = r(dim)
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = r(dim), r(dim)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = r(3 * dim, dim), r(3 * dim)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(dim, dim), r(dim)
        if layerscale:
            sd[b + "ls1.gamma"] = r(dim)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = r(dim), r(dim)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(mlp, dim), r(mlp)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(dim, mlp), r(dim)
        if layerscale:
            sd[b + "ls2.gamma"] = r(dim)
    sd["norm.weight"], sd["norm.bias"] = r(dim), r(dim)
    if n_classes:
        sd["head.weight"], sd["head.bias"] = r(n_classes, dim), r(n_classes)
    return sd


def expected_canonical(sd, head=None):
    """The canonical tree of a DINO-named state dict, written out by hand (numpy float32)."""
    n = lambda k: sd[k].detach().float().numpy()  # noqa: E731
    out = {
        "cls_token": n("cls_token"),
        "pos_embed": n("pos_embed"),
        "patch_embed": {
            "kernel": n("patch_embed.proj.weight").transpose(2, 3, 1, 0),
            "bias": n("patch_embed.proj.bias"),
        },
        "norm": {"scale": n("norm.weight"), "bias": n("norm.bias")},
    }
    if "register_tokens" in sd:
        out["reg_tokens"] = n("register_tokens")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        block = {
            "norm1": {"scale": n(b + "norm1.weight"), "bias": n(b + "norm1.bias")},
            "attn": {
                "qkv": {"kernel": n(b + "attn.qkv.weight").T, "bias": n(b + "attn.qkv.bias")},
                "proj": {"kernel": n(b + "attn.proj.weight").T, "bias": n(b + "attn.proj.bias")},
            },
            "norm2": {"scale": n(b + "norm2.weight"), "bias": n(b + "norm2.bias")},
            "mlp": {
                "fc1": {"kernel": n(b + "mlp.fc1.weight").T, "bias": n(b + "mlp.fc1.bias")},
                "fc2": {"kernel": n(b + "mlp.fc2.weight").T, "bias": n(b + "mlp.fc2.bias")},
            },
        }
        if b + "ls1.gamma" in sd:
            block["ls1"] = {"gamma": n(b + "ls1.gamma")}
            block["ls2"] = {"gamma": n(b + "ls2.gamma")}
        out[f"block_{i}"] = block
    if head is not None:
        w, bias = head
        out["head"] = {"kernel": w.detach().float().numpy().T, "bias": bias.detach().numpy()}
    elif "head.weight" in sd:
        out["head"] = {"kernel": n("head.weight").T, "bias": n("head.bias")}
    return out


def assert_trees_equal(got, want):
    flat_got, flat_want = wc.formats.flatten_params(got), wc.formats.flatten_params(want)
    assert sorted(flat_got) == sorted(flat_want)
    for path, w in flat_want.items():
        g = flat_got[path]
        assert g.dtype == np.float32, path
        assert g.flags["C_CONTIGUOUS"], path
        np.testing.assert_array_equal(g, w, err_msg="/".join(path))


# --------------------------------------------------------------------------------------------
# The restricted torch-zip reader against torch.load


def test_reader_matches_torch_load_for_dtypes_views_and_shared_storage(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 7, generator=g)
    obj = {
        "f32": torch.randn(3, 4, generator=g),
        "transposed": base.t(),  # stride (1, 7)
        "slice_offset": base[2:5, 1::2],  # offset 15, stride (7, 2)
        "shares_storage": base,  # same storage as the two views
        "expanded": torch.randn(1, 3, generator=g).expand(4, 3),  # stride 0
        "f64": torch.randn(5, dtype=torch.float64, generator=g),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-3, 3),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "u16": torch.tensor([1, 65535], dtype=torch.uint16),  # _rebuild_tensor_v3 path
        "fp8": torch.tensor([0.5, -2.0], dtype=torch.float8_e4m3fn),  # _rebuild_tensor_v3 path
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.randn(2, generator=g)),
        "nested": [torch.ones(2), {"deep": torch.full((1,), 7.0)}],
        "meta": {"epoch": 3, "name": "x"},
    }
    path = tmp_path / "mixed.pth"
    torch.save(obj, path)
    got = load_torch_zip(path)
    ref = torch.load(path, weights_only=True)

    def compare(g_, r_, key):
        if isinstance(r_, torch.Tensor):
            assert isinstance(g_, np.ndarray), key
            assert tuple(g_.shape) == tuple(r_.shape), key
            assert g_.flags["C_CONTIGUOUS"], key
            if r_.dtype == torch.bfloat16:
                assert g_.dtype == ml_dtypes.bfloat16
            if r_.dtype == torch.float8_e4m3fn:
                assert g_.dtype == ml_dtypes.float8_e4m3fn
            want = r_.detach()
            if r_.dtype in (torch.bfloat16, torch.float8_e4m3fn):
                want = want.float()
                g_ = g_.astype(np.float32)
            elif r_.dtype == torch.uint16:
                want = want.int()
            np.testing.assert_array_equal(g_, want.numpy(), err_msg=key)
        elif isinstance(r_, dict):
            assert sorted(g_) == sorted(r_), key
            for k in r_:
                compare(g_[k], r_[k], f"{key}.{k}")
        elif isinstance(r_, list):
            assert len(g_) == len(r_)
            for i, (a, b) in enumerate(zip(g_, r_, strict=True)):
                compare(a, b, f"{key}.{i}")
        else:
            assert g_ == r_, key

    compare(got, ref, "root")
    assert got["transposed"].shape == (7, 6) and got["slice_offset"].shape == (3, 3)


def test_reader_keeps_argparse_namespace_and_numpy_scalars_inert(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save(
        {
            "args": argparse.Namespace(arch="vit_small", lr=5e-4),
            "score": np.float64(0.25),
            "arr": np.arange(3),
            "w": torch.ones(2),
        },
        path,
    )
    got = load_torch_zip(path)
    assert isinstance(got["args"], wc.Placeholder)
    assert got["args"].global_name == "argparse.Namespace"
    assert got["args"].state == {"arch": "vit_small", "lr": 5e-4}
    assert got["score"].global_name.endswith("multiarray.scalar")
    assert got["arr"].global_name.endswith("multiarray._reconstruct")
    np.testing.assert_array_equal(got["w"], np.ones(2, np.float32))


# --------------------------------------------------------------------------------------------
# Formats → canonical tree, architecture inference


def test_dino_hub_state_dict(tmp_path):
    sd = dino_state_dict(dim=128, depth=3, patch=16, grid=2, mlp=512)
    torch.save(sd, tmp_path / "dino_hub.pth")
    config, params, meta = read_checkpoint(tmp_path / "dino_hub.pth")
    assert (config.patch, config.dim, config.depth, config.mlp_dim, config.pos_grid) == (16, 128, 3, 512, 2)
    assert config.heads == 2  # DINO convention dim // 64
    assert (config.n_registers, config.layerscale, config.n_classes) == (0, False, 0)
    assert config.eps == 1e-6
    assert meta["format"] == "state_dict/dino" and meta["file_kind"] == "torch_zip"
    assert meta["dropped"] == []
    assert any("dim // 64" in n for n in meta["notes"])
    assert_trees_equal(params, expected_canonical(sd))
    config4, _, meta4 = read_checkpoint(tmp_path / "dino_hub.pth", heads=4)
    assert config4.heads == 4 and any("heads=4 (given)" in n for n in meta4["notes"])


def test_known_architecture_gets_its_registry_name(tmp_path):
    from arb_jax.models.config import get_config

    c = get_config("test_tiny8")
    sd = dino_state_dict(dim=c.dim, depth=c.depth, patch=c.patch, grid=c.pos_grid, mlp=c.mlp_dim)
    torch.save(sd, tmp_path / "tiny.pth")
    config, _, _ = read_checkpoint(tmp_path / "tiny.pth", heads=c.heads)
    assert config == c and config.name == "test_tiny8"


def test_dino_training_checkpoint_teacher_and_student(tmp_path):
    teacher = dino_state_dict(seed=1)
    student = dino_state_dict(seed=2)
    projector = {
        "head.mlp.0.weight": torch.randn(16, 64),
        "head.mlp.0.bias": torch.randn(16),
        "head.last_layer.weight_g": torch.randn(32, 1),
        "head.last_layer.weight_v": torch.randn(32, 16),
    }
    ckpt = {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **projector},
        "student": {
            **{f"module.backbone.{k}": v for k, v in student.items()},
            **{f"module.{k}": v for k, v in projector.items()},
        },
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
        "epoch": 10,
        "args": argparse.Namespace(arch="vit_small", patch_size=8),
        "dino_loss": {"center": torch.zeros(1, 32)},
    }
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    config, params, meta = read_checkpoint(tmp_path / "checkpoint.pth")
    assert meta["format"] == "dino_training[teacher]/dino"
    assert_trees_equal(params, expected_canonical(teacher))
    dropped = " | ".join(meta["dropped"])
    assert "teacher.head.* (4 tensors, DINO projection head" in dropped
    assert "student.* (" in dropped and "optimizer.* (1 tensors" in dropped
    assert "dino_loss.* (1 tensors" in dropped
    assert any("args" in n and "epoch" in n for n in meta["notes"])
    _, params_s, meta_s = read_checkpoint(tmp_path / "checkpoint.pth", which="student")
    assert meta_s["format"] == "dino_training[student]/dino"
    assert_trees_equal(params_s, expected_canonical(student))
    with pytest.raises(ValueError, match="which must be 'teacher' or 'student'"):
        read_checkpoint(tmp_path / "checkpoint.pth", which="ema")


def test_timm_state_dict_with_linear_head(tmp_path):
    sd = dino_state_dict(n_classes=10)
    save_file(dict(sd), tmp_path / "timm.safetensors")
    config, params, meta = read_checkpoint(tmp_path / "timm.safetensors")
    assert config.n_classes == 10 and meta["file_kind"] == "safetensors"
    assert params["head"]["kernel"].shape == (64, 10)
    assert_trees_equal(params, expected_canonical(sd))


def test_dinov2_hub_with_registers_layerscale_and_mask_token(tmp_path):
    sd = dino_state_dict(dim=64, patch=14, grid=4, registers=4, layerscale=True)
    torch.save(sd, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    config, params, meta = read_checkpoint(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert (config.patch, config.n_registers, config.layerscale, config.pos_grid) == (14, 4, True, 4)
    assert meta["format"] == "state_dict/dinov2"
    assert meta["dropped"] == ["mask_token (mask token, used in training only)"]
    assert_trees_equal(params, expected_canonical(sd))


def test_half_precision_sources_become_float32(tmp_path):
    sd = dino_state_dict()
    half = {k: (v.bfloat16() if i % 2 else v.half()) for i, (k, v) in enumerate(sd.items())}
    torch.save(half, tmp_path / "half.pth")
    _, params, meta = read_checkpoint(tmp_path / "half.pth")
    assert_trees_equal(params, expected_canonical(half))
    assert any("bfloat16" in n and "float16" in n for n in meta["notes"])


def test_lightning_checkpoint(tmp_path):
    sd = dino_state_dict()
    w, b = torch.randn(10, 64), torch.randn(10)
    ckpt = {
        "epoch": 4,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": collections.OrderedDict(
            [*((f"model.{k}", v) for k, v in sd.items()), ("linear.weight", w), ("linear.bias", b)]
        ),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_acc'}": {
                "best_model_score": torch.tensor(0.9),
                "current_score": np.float64(0.9),
            }
        },
        "optimizer_states": [
            {"state": {0: {"exp_avg": torch.zeros(10, 64)}}, "param_groups": [{"lr": 3e-4}]}
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 3e-4, "backbone": "dino_vits8"},
    }
    torch.save(ckpt, tmp_path / "linear.ckpt")
    config, params, meta = read_checkpoint(tmp_path / "linear.ckpt")
    assert meta["format"] == "lightning/dino"
    assert config.n_classes == 10
    assert_trees_equal(params, expected_canonical(sd, head=(w, b)))
    assert any(d.startswith("optimizer_states.*") for d in meta["dropped"])


def _hf_vit(tmp_path, registers=None, n_classes=0):
    """A tiny random HF model saved with save_pretrained; returns (model, directory)."""
    import transformers as tf

    torch.manual_seed(0)
    if registers is None:
        cfg = tf.ViTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=24,
            patch_size=8,
            layer_norm_eps=1e-6,
            num_labels=max(n_classes, 1),
        )
        model = tf.ViTForImageClassification(cfg) if n_classes else tf.ViTModel(cfg, add_pooling_layer=True)
    else:
        cfg = tf.Dinov2WithRegistersConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            mlp_ratio=2,
            image_size=28,
            patch_size=14,
            num_register_tokens=registers,
            layer_norm_eps=1e-6,
        )
        model = tf.Dinov2WithRegistersModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = tmp_path / ("hf" if registers is None else "hf_reg")
    model.save_pretrained(out)
    return model, out


def _hf_expected(model):
    """Canonical tree written out from an HF model's modules (independent of key names)."""
    base = getattr(model, "vit", model)
    emb, n = base.embeddings, lambda t: t.detach().numpy()
    layers = base.layers if hasattr(base, "layers") else base.encoder.layer
    out = {
        "cls_token": n(emb.cls_token),
        "pos_embed": n(emb.position_embeddings),
        "patch_embed": {
            "kernel": n(emb.patch_embeddings.projection.weight).transpose(2, 3, 1, 0),
            "bias": n(emb.patch_embeddings.projection.bias),
        },
        "norm": {"scale": n(base.layernorm.weight), "bias": n(base.layernorm.bias)},
    }
    if getattr(emb, "register_tokens", None) is not None:
        out["reg_tokens"] = n(emb.register_tokens)
    for i, layer in enumerate(layers):
        a = layer.attention
        q, k, v, o = attention_linears(a)
        n1 = getattr(layer, "layernorm_before", None) or layer.norm1
        n2 = getattr(layer, "layernorm_after", None) or layer.norm2
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        block = {
            "norm1": {"scale": n(n1.weight), "bias": n(n1.bias)},
            "attn": {
                "qkv": {
                    "kernel": np.concatenate([n(q.weight), n(k.weight), n(v.weight)]).T,
                    "bias": np.concatenate([n(q.bias), n(k.bias), n(v.bias)]),
                },
                "proj": {"kernel": n(o.weight).T, "bias": n(o.bias)},
            },
            "norm2": {"scale": n(n2.weight), "bias": n(n2.bias)},
            "mlp": {
                "fc1": {"kernel": n(fc1.weight).T, "bias": n(fc1.bias)},
                "fc2": {"kernel": n(fc2.weight).T, "bias": n(fc2.bias)},
            },
        }
        if hasattr(layer, "layer_scale1"):
            block["ls1"] = {"gamma": n(layer.layer_scale1.lambda1)}
            block["ls2"] = {"gamma": n(layer.layer_scale2.lambda1)}
        out[f"block_{i}"] = block
    if hasattr(model, "classifier"):
        out["head"] = {"kernel": n(model.classifier.weight).T, "bias": n(model.classifier.bias)}
    return out


def test_hf_vit_saved_and_in_memory_names(tmp_path):
    model, out = _hf_vit(tmp_path)
    want = _hf_expected(model)
    config, params, meta = read_checkpoint(out)  # the directory → model.safetensors
    assert meta["source"] == "model.safetensors" and meta["format"] == "state_dict/hf_vit"
    assert (config.patch, config.dim, config.heads, config.mlp_dim, config.pos_grid) == (8, 64, 4, 128, 3)
    assert any("config.json num_attention_heads" in n for n in meta["notes"])
    assert any(d.startswith("pooler.*") for d in meta["dropped"])
    assert_trees_equal(params, want)
    # transformers 5 in-memory names (layers.N.attention.q_proj), torch.save'd
    torch.save(model.state_dict(), out / "in_memory.pth")
    _, params_mem, meta_mem = read_checkpoint(out / "in_memory.pth")
    assert any("in-memory" in n for n in meta_mem["notes"])
    assert_trees_equal(params_mem, want)


def test_hf_classifier_prefix_and_dinov2_registers(tmp_path):
    model, out = _hf_vit(tmp_path, n_classes=5)
    config, params, meta = read_checkpoint(out)
    assert config.n_classes == 5 and meta["format"] == "state_dict/hf_vit"
    assert_trees_equal(params, _hf_expected(model))
    model_r, out_r = _hf_vit(tmp_path, registers=2)
    config_r, params_r, meta_r = read_checkpoint(out_r / "model.safetensors")
    assert (config_r.n_registers, config_r.layerscale, config_r.mlp_dim) == (2, True, 128)
    assert meta_r["format"] == "state_dict/hf_dinov2"
    assert meta_r["dropped"] == ["embeddings.mask_token (mask token, used in training only)"]
    assert_trees_equal(params_r, _hf_expected(model_r))


def test_hf_config_json_disagreeing_with_tensors(tmp_path):
    _, out = _hf_vit(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96}))
    with pytest.raises(CheckpointFormatError, match="hidden_size=96 but the tensors have 64"):
        read_checkpoint(out)


# --------------------------------------------------------------------------------------------
# Orbax output


def test_convert_writes_orbax_and_json_and_loads_back_identically(tmp_path):
    sd = dino_state_dict(dim=64, patch=14, grid=2, registers=1, layerscale=True, n_classes=3)
    src = tmp_path / "src.pth"
    torch.save(sd, src)
    config, params = convert(src, tmp_path / "out")
    config2, params2, meta = load_converted(tmp_path / "out")
    assert config2 == config
    assert_trees_equal(params2, params)
    assert_trees_equal(params2, expected_canonical(sd))
    record = json.loads((tmp_path / "out" / "arb_model.json").read_text())
    assert record["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert record["source"] == "src.pth" and record["format"] == "state_dict/dinov2"
    assert record["config"] == config.to_dict()
    assert record["dropped"] == ["mask_token (mask token, used in training only)"]
    assert meta == record
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert(src, tmp_path / "out")
    convert(src, tmp_path / "out", overwrite=True)
    assert_trees_equal(load_converted(tmp_path / "out")[1], params)


def test_sha256_file_streams(tmp_path):
    data = os.urandom(3 * 1024 + 7)
    (tmp_path / "blob").write_bytes(data)
    assert wc.sha256_file(tmp_path / "blob", chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_load_converted_rejects_a_mismatched_config(tmp_path):
    torch.save(dino_state_dict(), tmp_path / "src.pth")
    convert(tmp_path / "src.pth", tmp_path / "out")
    record = json.loads((tmp_path / "out" / "arb_model.json").read_text())
    record["config"]["mlp_dim"] = 96
    (tmp_path / "out" / "arb_model.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointKeysError, match=r"fc1/kernel: expected \(64, 96\), got"):
        load_converted(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="arb_model.json"):
        load_converted(tmp_path)


def test_main_cli(tmp_path, capsys):
    torch.save(dino_state_dict(), tmp_path / "src.pth")
    assert wc.main([str(tmp_path / "src.pth"), str(tmp_path / "out")]) == 0
    assert "state_dict/dino" in capsys.readouterr().out
    assert (tmp_path / "out" / "arb_model.json").is_file()
    assert wc.main([str(tmp_path / "nothere.pth"), str(tmp_path / "out2")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_reading_does_not_import_torch(tmp_path):
    torch.save(dino_state_dict(), tmp_path / "src.pth")
    code = (
        "import sys, weights_convert as wc; wc.read_checkpoint(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "src.pth")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# Malicious pickles


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize(
    "func, name",
    [
        (os.system, f"{os.system.__module__}.system"),
        (eval, "builtins.eval"),
        (subprocess.check_call, "subprocess.check_call"),
    ],
)
def test_malicious_pickle_in_genuine_torch_zip_is_refused_and_never_runs(tmp_path, func, name):
    target = tmp_path / "pwned"
    if func is os.system:
        arg = f"touch {target}"
    elif func is eval:
        arg = f"open({str(target)!r}, 'w').close()"
    else:
        arg = ["touch", str(target)]
    torch.save({"model": dino_state_dict(), "extra": _Payload(func, arg)}, tmp_path / "evil.pth")
    with zipfile.ZipFile(tmp_path / "evil.pth") as z:  # a genuine torch zip with storages
        assert any(n.endswith("/data/0") for n in z.namelist())
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(tmp_path / "evil.pth")
    assert info.value.global_name == name
    assert name in str(info.value) and "evil.pth" in str(info.value)
    assert not target.exists(), "the payload ran"
    # The fixture is a live exploit: torch's unrestricted loader does run it.
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert target.exists()


def _zip_with_pickle(tmp_path, payload: bytes, name="crafted.pth") -> Path:
    """A genuine torch.save zip with data.pkl replaced by ``payload``."""
    torch.save({"w": torch.ones(2)}, tmp_path / "genuine.pth")
    out = tmp_path / name
    with zipfile.ZipFile(tmp_path / "genuine.pth") as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = payload if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)
    return out


def test_pickle_cannot_mutate_allowed_functions(tmp_path):
    # GLOBAL torch._utils._rebuild_parameter; BUILD (None, {"__defaults__": (1,)}) → would set
    # attributes on the function object shared by later loads.
    payload = b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    path = _zip_with_pickle(tmp_path, payload)
    with pytest.raises(CheckpointFormatError, match="tried to set '__defaults__'"):
        load_torch_zip(path)
    assert wc.safe_pickle._rebuild_parameter.__defaults__ == (False, None)


def test_inst_opcode_goes_through_the_allow_list(tmp_path):
    # INST opcode (protocol 0): 'iposix\nsystem\n' with a mark and one argument.
    payload = b"(S'true'\niposix\nsystem\n."
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_torch_zip(_zip_with_pickle(tmp_path, payload))


# --------------------------------------------------------------------------------------------
# Bad files


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=r"empty\.pth: empty file"):
        read_checkpoint(tmp_path / "empty.pth")


def test_truncated_torch_zip(tmp_path):
    torch.save(dino_state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match=r"cut\.pth: not a valid zip archive"):
        read_checkpoint(tmp_path / "cut.pth")


def test_truncated_safetensors(tmp_path):
    save_file(dict(dino_state_dict()), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointFormatError, match=r"cut\.safetensors: corrupt or truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:40])
    with pytest.raises(CheckpointFormatError, match="does not fit"):
        read_checkpoint(tmp_path / "head.safetensors")


def test_text_file(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(CheckpointFormatError, match=r"notes\.pth: not a checkpoint"):
        read_checkpoint(tmp_path / "notes.pth")


def test_zip_that_is_not_a_checkpoint(tmp_path):
    with zipfile.ZipFile(tmp_path / "archive.pth", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointFormatError, match=r"archive\.pth: zip archive without"):
        read_checkpoint(tmp_path / "archive.pth")


def test_zip_with_missing_storage(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "nostorage.pth", "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointFormatError, match=r"storage '.*/data/0' missing"):
        load_torch_zip(tmp_path / "nostorage.pth")


def test_legacy_and_bare_pickles(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="legacy .non-zip. PyTorch serialization"):
        read_checkpoint(tmp_path / "legacy.pth")
    (tmp_path / "bare.pkl").write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(CheckpointFormatError, match="bare pickle"):
        read_checkpoint(tmp_path / "bare.pkl")


def test_missing_path_and_directory_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nothere.pth")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_checkpoint(tmp_path)


# --------------------------------------------------------------------------------------------
# Keys that do not fit


def test_unknown_key(tmp_path):
    sd = dino_state_dict()
    sd["blocks.0.attn.rel_pos"] = torch.zeros(3)
    sd["fc_norm.weight"] = torch.zeros(64)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(CheckpointKeysError) as info:
        read_checkpoint(tmp_path / "x.pth")
    assert info.value.unexpected == ["blocks.0.attn.rel_pos", "fc_norm.weight"]
    assert "unexpected keys: blocks.0.attn.rel_pos, fc_norm.weight" in str(info.value)


def test_misshaped_and_missing_keys_are_named(tmp_path):
    sd = dino_state_dict()
    sd["blocks.1.mlp.fc2.weight"] = torch.zeros(64, 100)
    del sd["blocks.0.norm2.bias"]
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointKeysError) as info:
        read_checkpoint(tmp_path / "x.pth")
    assert info.value.misshaped == [
        "teacher.backbone.blocks.1.mlp.fc2.weight: expected (64, 128), got (64, 100)"
    ]
    assert info.value.missing == ["blocks.0.norm2.bias"]


def test_hf_misshaped_query_is_named(tmp_path):
    _, out = _hf_vit(tmp_path)
    from safetensors.numpy import load_file

    arrays = load_file(out / "model.safetensors")
    arrays["encoder.layer.1.attention.attention.key.weight"] = np.zeros((64, 32), np.float32)
    from safetensors.numpy import save_file as save_np

    save_np(arrays, out / "model.safetensors")
    with pytest.raises(CheckpointKeysError, match=r"attention\.key\.weight: expected \(64, 64\)"):
        read_checkpoint(out)


def test_non_square_position_grid_and_non_float_tensor(tmp_path):
    sd = dino_state_dict()
    sd["pos_embed"] = torch.zeros(1, 1 + 6, 64)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(CheckpointKeysError, match=r"pos_embed: expected \(1, 1 \+ M\*M, 64\)"):
        read_checkpoint(tmp_path / "x.pth")
    sd = dino_state_dict()
    sd["norm.bias"] = torch.zeros(64, dtype=torch.int64)
    torch.save(sd, tmp_path / "y.pth")
    with pytest.raises(CheckpointKeysError, match="norm.bias: expected a float tensor"):
        read_checkpoint(tmp_path / "y.pth")


def test_not_a_vit_and_heads_not_inferable(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointKeysError, match="no ViT backbone found") as info:
        read_checkpoint(tmp_path / "resnet.pth")
    assert info.value.unexpected == ["conv1.weight"]
    torch.save(dino_state_dict(dim=48, mlp=96), tmp_path / "dim48.pth")
    with pytest.raises(ValueError, match="cannot infer the number of heads for dim=48"):
        read_checkpoint(tmp_path / "dim48.pth")
    with pytest.raises(ValueError, match="does not divide|not divisible"):
        read_checkpoint(tmp_path / "dim48.pth", heads=5)
