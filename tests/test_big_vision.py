"""big_vision ViT checkpoints (``.npz``, ``big_vision.models.vit`` names) → the canonical tree.

The test writes checkpoints in big_vision's layout (``np.savez`` of ``/``-joined names, as
``utils.save_checkpoint`` does) from known canonical weights (a random-init fixture, every leaf
perturbed), reads them with the converter and checks: the same tree back, the same outputs
(≤ 1e-5), and the outputs of an independent float64 numpy transcription of big_vision's forward
(position embedding added before ``cls`` is prepended, Flax's tanh GELU, (D, heads, d) attention
kernels). Pooled ViTs, missing or bad tensors and pickled arrays are refused in one line.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile

import jax
import numpy as np
import pytest

from arb_jax import load_vit
from arb_jax.convert import (
    CheckpointArchitectureError,
    CheckpointError,
    CheckpointKeysError,
    main,
    read_checkpoint,
)
from arb_jax.models import ViTConfig, build_vit, random_params

CFG = ViTConfig(patch=8, dim=32, depth=2, heads=4, mlp_dim=48, pos_grid=3, n_classes=3, gelu="tanh")
TOL = 1e-5


@pytest.fixture(scope="module")
def canonical():
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda a: (a + 0.2 * rng.standard_normal(a.shape)).astype(np.float32), random_params(CFG, 1)
    )
    params["pos_embed"][:, 0] = 0.0  # big_vision has no CLS position
    return params


def _big_vision_names(params, *, head=True) -> dict[str, np.ndarray]:
    """The canonical tree written under big_vision.models.vit's parameter names."""
    D, H, d = CFG.dim, CFG.heads, CFG.dim // CFG.heads
    out = {
        "embedding/kernel": params["patch_embed"]["kernel"],
        "embedding/bias": params["patch_embed"]["bias"],
        "cls": params["cls_token"],
        "pos_embedding": params["pos_embed"][:, 1:],
        "Transformer/encoder_norm/scale": params["norm"]["scale"],
        "Transformer/encoder_norm/bias": params["norm"]["bias"],
    }
    if head:
        out["head/kernel"], out["head/bias"] = params["head"]["kernel"], params["head"]["bias"]
    for i in range(CFG.depth):
        b, s = params[f"block_{i}"], f"Transformer/encoderblock_{i}/"
        a = s + "MultiHeadDotProductAttention_0/"
        qkv_k, qkv_b = b["attn"]["qkv"]["kernel"], b["attn"]["qkv"]["bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[f"{a}{name}/kernel"] = qkv_k[:, j * D : (j + 1) * D].reshape(D, H, d)
            out[f"{a}{name}/bias"] = qkv_b[j * D : (j + 1) * D].reshape(H, d)
        out[a + "out/kernel"] = b["attn"]["proj"]["kernel"].reshape(H, d, D)
        out[a + "out/bias"] = b["attn"]["proj"]["bias"]
        for src, dst in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            out[f"{s}{src}/scale"], out[f"{s}{src}/bias"] = b[dst]["scale"], b[dst]["bias"]
        for src, dst in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[f"{s}MlpBlock_0/{src}/kernel"] = b["mlp"][dst]["kernel"]
            out[f"{s}MlpBlock_0/{src}/bias"] = b["mlp"][dst]["bias"]
    return out


def _big_vision_forward(bv: dict[str, np.ndarray], images: np.ndarray):
    """float64 numpy big_vision ViT (pool_type 'tok'): last block's CLS attention, CLS feature."""
    P = {k: v.astype(np.float64) for k, v in bv.items()}
    N, Hh, Ww, _ = images.shape
    p = P["embedding/kernel"].shape[0]

    def ln(x, pre):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * P[pre + "/scale"] + P[pre + "/bias"]

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    x = images.astype(np.float64).reshape(N, Hh // p, p, Ww // p, p, 3)
    x = np.einsum("nhawbc,abcd->nhwd", x, P["embedding/kernel"]) + P["embedding/bias"]
    x = x.reshape(N, -1, x.shape[-1]) + P["pos_embedding"]
    x = np.concatenate([np.repeat(P["cls"], N, 0), x], 1)
    for i in range(CFG.depth):
        s = f"Transformer/encoderblock_{i}/"
        a = s + "MultiHeadDotProductAttention_0/"
        y = ln(x, s + "LayerNorm_0")
        q, k, v = (
            np.einsum("ntd,dhe->nthe", y, P[f"{a}{n}/kernel"]) + P[f"{a}{n}/bias"]
            for n in ("query", "key", "value")
        )
        logits = np.einsum("nthe,nshe->nhts", q / np.sqrt(q.shape[-1]), k)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        y = np.einsum("nhts,nshe->nthe", attn, v)
        x = x + np.einsum("nthe,hed->ntd", y, P[a + "out/kernel"]) + P[a + "out/bias"]
        y = ln(x, s + "LayerNorm_1")
        y = gelu_tanh(y @ P[s + "MlpBlock_0/Dense_0/kernel"] + P[s + "MlpBlock_0/Dense_0/bias"])
        x = x + y @ P[s + "MlpBlock_0/Dense_1/kernel"] + P[s + "MlpBlock_0/Dense_1/bias"]
    feats = ln(x, "Transformer/encoder_norm")[:, 0]
    return attn[:, :, 0, 1:], feats, feats @ P["head/kernel"] + P["head/bias"]


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


def _images(n=2, seed=3):
    return np.random.default_rng(seed).standard_normal((n, *CFG.native_size, 3)).astype(np.float32)


def test_big_vision_npz_round_trips_and_matches_big_vision_forward(canonical, tmp_path):
    bv = _big_vision_names(canonical)
    path = _save(tmp_path / "vit_tok.npz", bv)
    config, params, meta = read_checkpoint(path)
    assert meta["file_kind"] == "npz" and meta["format"] == "npz/big_vision"
    assert config == dataclasses.replace(CFG, name=config.name) and config.gelu == "tanh"
    flat = jax.tree_util.tree_leaves_with_path(params)
    want = dict(jax.tree_util.tree_leaves_with_path(canonical))
    assert {k for k, _ in flat} == set(want)
    for k, v in flat:
        np.testing.assert_array_equal(v, want[k], err_msg=str(k))
    images = _images()
    vit = build_vit(config, params)
    out = jax.jit(vit.apply)(vit.params, images)
    ref = jax.jit(build_vit(CFG, canonical).apply)(canonical, images)
    for key in ("attn", "features", "logits"):
        assert float(np.abs(np.asarray(out[key]) - np.asarray(ref[key])).max()) <= TOL
    attn_bv, feats_bv, logits_bv = _big_vision_forward(bv, images)
    errs = [
        np.abs(np.asarray(out["attn"]).reshape(attn_bv.shape) - attn_bv).max(),
        np.abs(np.asarray(out["features"]) - feats_bv).max(),
        np.abs(np.asarray(out["logits"]) - logits_bv).max(),
    ]
    print(f"big_vision forward vs loaded ViT: attn {errs[0]:.2e} features {errs[1]:.2e} logits {errs[2]:.2e}")
    assert max(errs) <= TOL
    # load_vit and `arb convert` take the file as any other checkpoint
    loaded = load_vit(path)
    np.testing.assert_array_equal(loaded.cls_attention(images), vit.cls_attention(images))
    assert main([str(path), str(tmp_path / "converted")]) == 0
    assert load_vit(tmp_path / "converted").config.gelu == "tanh"  # kept through arb_model.json


def test_big_vision_variants(canonical, tmp_path):
    bv = _big_vision_names(canonical)
    base = read_checkpoint(_save(tmp_path / "base.npz", bv))[1]

    def same(params):
        for (k, v), (_, w) in zip(
            jax.tree_util.tree_leaves_with_path(params),
            jax.tree_util.tree_leaves_with_path(base),
            strict=True,
        ):
            np.testing.assert_array_equal(v, w, err_msg=str(k))

    # a training checkpoint: params/ plus optimizer state
    train = {**{f"params/{k}": v for k, v in bv.items()}, "opt/0/mu/cls": np.zeros((1, 1, 32), np.float32)}
    config, params, meta = read_checkpoint(_save(tmp_path / "train.npz", train))
    same(params)
    assert meta["format"] == "training_checkpoint/big_vision" and any("opt/*" in d for d in meta["dropped"])
    # the lax.scan layout: one encoderblock with a leading depth axis
    scan = {k: v for k, v in bv.items() if "encoderblock_" not in k}
    for k in [k for k in bv if k.startswith("Transformer/encoderblock_0/")]:
        rest = k[len("Transformer/encoderblock_0/") :]
        scan[f"Transformer/encoderblock/{rest}"] = np.stack(
            [bv[f"Transformer/encoderblock_{i}/{rest}"] for i in range(2)]
        )
    same(read_checkpoint(_save(tmp_path / "scan.npz", scan))[1])
    # the pre-2022 layout: CLS position first in pos_embedding (here zero, so the same tree)
    old = {**bv, "pos_embedding": canonical["pos_embed"]}
    same(read_checkpoint(_save(tmp_path / "old.npz", old))[1])
    # a pre_logits layer: the backbone is kept, the head dropped (noted)
    pre = {
        **bv,
        "pre_logits/kernel": np.eye(32, dtype=np.float32),
        "pre_logits/bias": np.zeros(32, np.float32),
    }
    config, params, meta = read_checkpoint(_save(tmp_path / "pre.npz", pre))
    assert config.n_classes == 0 and "head" not in params
    assert any(d.startswith("pre_logits/kernel") for d in meta["dropped"])


@pytest.mark.parametrize(
    "edit,error,match",
    [
        (
            lambda bv: {k: v for k, v in bv.items() if k != "cls"},
            CheckpointArchitectureError,
            r"gap\.npz: a big_vision ViT without a CLS token \(pool_type 'gap or 0'",
        ),
        (
            lambda bv: {
                **{k: v for k, v in bv.items() if k != "cls"},
                "MAPHead_0/probe": np.zeros((1, 1, 32)),
            },
            CheckpointArchitectureError,
            r"gap\.npz: .*pool_type 'map'",
        ),
        (
            lambda bv: {k: v for k, v in bv.items() if k != "pos_embedding"},
            CheckpointArchitectureError,
            r"gap\.npz: no pos_embedding: sincos2d",
        ),
        (
            lambda bv: {k: v for k, v in bv.items() if "encoderblock_1/LayerNorm_1" not in k},
            CheckpointKeysError,
            r"gap\.npz: checkpoint does not match .*missing keys: "
            r"Transformer/encoderblock_1/LayerNorm_1/scale",
        ),
        (
            lambda bv: {**bv, "head/bias": np.zeros(4, np.float32)},
            CheckpointKeysError,
            r"mis-shaped keys: head/bias: expected \(3,\), got \(4,\)",
        ),
        (
            lambda bv: {**bv, "extra/w": np.zeros(2, np.float32)},
            CheckpointKeysError,
            r"unexpected keys: extra/w",
        ),
        (
            lambda bv: {**bv, "cls": np.full((1, 1, 32), np.nan, np.float32)},
            CheckpointError,
            r"non-finite weights .* cls",
        ),
        (
            lambda bv: {**bv, "pos_embedding": np.zeros((1, 8, 32), np.float32)},
            CheckpointArchitectureError,
            r"pos_embedding of shape \(1, 8, 32\) is not a square grid",
        ),
    ],
)
def test_bad_big_vision_checkpoints_are_one_clear_line(canonical, tmp_path, edit, error, match):
    path = _save(tmp_path / "gap.npz", edit(_big_vision_names(canonical)))
    with pytest.raises(error, match=match) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_npz_is_read_without_pickles_and_truncation_is_one_line(tmp_path, canonical):
    # an object array needs a pickle to load: refused, never unpickled
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    bad = tmp_path / "pickled.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("cls.npy", buf.getvalue())
    with pytest.raises(
        CheckpointError, match=r"pickled\.npz: the array 'cls' is a pickled object array; refused"
    ):
        read_checkpoint(bad)
    good = _save(tmp_path / "good.npz", _big_vision_names(canonical)).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.npz") as info:
        read_checkpoint(cut)
    assert "\n" not in str(info.value)
    assert main([str(cut), str(tmp_path / "out")]) == 1
    # a header declaring far more data than its member holds: refused before numpy allocates
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}
    )
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w") as z:
        z.writestr("cls.npy", header.getvalue() + bytes(16))
    with pytest.raises(
        CheckpointError, match=r"forged\.npz: the array 'cls' declares shape \(1099511627776,\)"
    ):
        read_checkpoint(forged)
