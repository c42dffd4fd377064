"""The best peers: ARB with the ViT forward written well in PyTorch, and run by ONNX Runtime.

The reference baseline (``bench/baseline.py``) runs ARB the way the authors' code does (HF
eager attention with ``output_attentions``, one image at a time, statistics on pixels): the
slowest way. A user who cares about speed would instead

- **torch**: write the forward in PyTorch properly: ``F.scaled_dot_product_attention`` in
  blocks 0 … L−2, the last block for the CLS query only (its softmax row is the map), all
  1 + B images in one batch, under ``torch.inference_mode`` (CUDA on a GPU; there also a
  bfloat16 ``torch.autocast`` row);
- **ort**: export that same module with ``torch.onnx.export`` and run it with ONNX Runtime,
  all graph optimisations on (its CUDA provider on a GPU, where installed),

and compute the statistics in numpy / statsmodels on the patch grid (``numpy_statistics`` of
the baseline, on the h×w maps). Both are built from **our** parameter tree (the canonical one
of ``arb_jax``), so they hold the same weights; the position embedding is the bundle's
(resampled for the image size by ``build_vit`` / ``load_vit``), register tokens sit after the
CLS token, LayerScale multiplies each branch, as in ``arb_jax.models.vit``.

torch and onnxruntime are imported lazily: without them this module imports, and
``available()`` says which peers can run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from arb_jax.models import ViTConfig
from bench import baseline as bl

PEERS = ("torch", "ort")


def available() -> dict[str, bool]:
    """Which peers can run here: {"torch": bool, "ort": bool} (ort needs torch to export)."""
    has = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    torch_ok = has("torch")
    return {"torch": torch_ok, "ort": torch_ok and has("onnxruntime") and has("onnx")}


# --------------------------------------------------------------------------------------------
# The PyTorch module
# --------------------------------------------------------------------------------------------


def _np(x: Any) -> np.ndarray:
    return np.array(x, np.float32, order="C", copy=True)


def torch_vit(config: ViTConfig, params: Mapping[str, Any], image_size: int, device: str = "cpu"):
    """A ``torch.nn.Module``: (n, 3, H, W) float32 → (n, h, w) head-mean last-block CLS attention
    over the patches, holding ``params`` (our canonical tree).

    ``params["pos_embed"]`` must have 1 + (image_size/p)² tokens (a bundle's params).
    """
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    c, D, H = config, config.dim, config.heads
    grid = image_size // c.patch
    if np.shape(params["pos_embed"])[1] != 1 + grid * grid:
        raise ValueError(
            f"pos_embed has {np.shape(params['pos_embed'])[1]} tokens, expected 1 + {grid}² for "
            f"{image_size} px: pass the bundle's params"
        )
    t = lambda x: torch.from_numpy(_np(x))  # noqa: E731
    R = c.n_registers

    class PeerViT(nn.Module):
        def __init__(self):
            super().__init__()
            p = params
            self.patch_w = nn.Parameter(t(p["patch_embed"]["kernel"]).permute(3, 2, 0, 1).contiguous())
            self.patch_b = nn.Parameter(t(p["patch_embed"]["bias"]))
            self.cls = nn.Parameter(t(p["cls_token"]).reshape(1, 1, D))
            self.pos = nn.Parameter(t(p["pos_embed"]))
            self.reg = nn.Parameter(t(p["reg_tokens"]).reshape(1, R, D)) if R else None
            self.w = nn.ParameterList()
            names = []
            for i in range(c.depth):
                b = p[f"block_{i}"]
                leaves = {
                    "n1w": b["norm1"]["scale"],
                    "n1b": b["norm1"]["bias"],
                    "qkv_w": _np(b["attn"]["qkv"]["kernel"]).T,
                    "qkv_b": b["attn"]["qkv"]["bias"],
                    "proj_w": _np(b["attn"]["proj"]["kernel"]).T,
                    "proj_b": b["attn"]["proj"]["bias"],
                    "n2w": b["norm2"]["scale"],
                    "n2b": b["norm2"]["bias"],
                    "fc1_w": _np(b["mlp"]["fc1"]["kernel"]).T,
                    "fc1_b": b["mlp"]["fc1"]["bias"],
                    "fc2_w": _np(b["mlp"]["fc2"]["kernel"]).T,
                    "fc2_b": b["mlp"]["fc2"]["bias"],
                }
                if c.layerscale:
                    leaves["ls1"], leaves["ls2"] = b["ls1"]["gamma"], b["ls2"]["gamma"]
                names.append(list(leaves))
                for v in leaves.values():
                    self.w.append(nn.Parameter(t(v)))
            self._names = names

        def _block(self, i: int) -> dict[str, Any]:
            n = len(self._names[0])
            return dict(zip(self._names[i], list(self.w)[i * n : (i + 1) * n], strict=True))

        def forward(self, x):
            n = x.shape[0]
            x = F.conv2d(x, self.patch_w, self.patch_b, stride=c.patch).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(n, 1, D), x], dim=1) + self.pos
            if R:
                x = torch.cat([x[:, :1], self.reg.expand(n, R, D), x[:, 1:]], dim=1)
            T, d = x.shape[1], D // H
            for i in range(c.depth - 1):
                w = self._block(i)
                y = F.layer_norm(x, (D,), w["n1w"], w["n1b"], c.eps)
                qkv = F.linear(y, w["qkv_w"], w["qkv_b"]).reshape(n, T, 3, H, d).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (n, H, T, d)
                y = F.linear(y.transpose(1, 2).reshape(n, T, D), w["proj_w"], w["proj_b"])
                x = x + (y * w["ls1"] if c.layerscale else y)
                y = F.linear(F.layer_norm(x, (D,), w["n2w"], w["n2b"], c.eps), w["fc1_w"], w["fc1_b"])
                y = F.linear(F.gelu(y), w["fc2_w"], w["fc2_b"])
                x = x + (y * w["ls2"] if c.layerscale else y)
            w = self._block(c.depth - 1)  # the last block: the CLS query's softmax row only
            y = F.layer_norm(x, (D,), w["n1w"], w["n1b"], c.eps)
            q = F.linear(y[:, 0], w["qkv_w"][:D], w["qkv_b"][:D]).reshape(n, H, 1, d)
            k = F.linear(y, w["qkv_w"][D : 2 * D], w["qkv_b"][D : 2 * D]).reshape(n, T, H, d)
            logits = torch.matmul(q, k.permute(0, 2, 3, 1)) * d**-0.5  # (n, H, 1, T)
            probs = torch.softmax(logits.float(), dim=-1)[:, :, 0, 1 + R :]
            return probs.mean(1).reshape(n, grid, grid)

    return PeerViT().eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------
# The forwards: torch (optionally bf16 autocast) and ONNX Runtime
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Peer:
    """A peer's forward: ``forward(x)`` maps (n, 3, H, W) float32 numpy → (n, h, w) float32 numpy.

    name: "torch", "torch_bf16" or "ort"; info: how it runs (device, threads, provider).
    """

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any]


def make_torch_peer(module, device: str = "cpu", bf16: bool = False) -> Peer:
    """The torch module as a peer (``inference_mode``; ``autocast`` to bfloat16 if ``bf16``)."""
    import torch

    cuda = device.startswith("cuda")

    def forward(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
        ctx = torch.autocast(device.split(":")[0], torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = module(xt).float()
        if cuda:
            torch.cuda.synchronize()
        return out.cpu().numpy()

    info = {"library": f"torch {torch.__version__}", "device": device, "threads": torch.get_num_threads()}
    if bf16:
        info["autocast"] = "bfloat16"
    return Peer("torch_bf16" if bf16 else "torch", forward, info)


def export_onnx(module, batch: int, image_size: int, path: str) -> str:
    """``torch.onnx.export`` of the (CPU, float32) module for a fixed (batch, 3, S, S) input."""
    import torch

    module = module.to("cpu")
    x = torch.zeros((batch, 3, image_size, image_size))
    with torch.inference_mode(False), torch.no_grad():
        try:
            torch.onnx.export(module, (x,), path, input_names=["x"], output_names=["attn"], dynamo=False)
        except TypeError:  # a torch without the dynamo argument
            torch.onnx.export(module, (x,), path, input_names=["x"], output_names=["attn"])
    return path


def make_ort_peer(
    module, batch: int, image_size: int, device: str = "cpu", threads: int | None = None
) -> Peer:
    """The module exported to ONNX (fixed batch) and run by ONNX Runtime, every graph
    optimisation enabled; the CUDA provider on a GPU when this onnxruntime has it."""
    import onnxruntime as ort

    tmp = tempfile.mkdtemp(prefix="arb-peer-onnx-")
    path = export_onnx(module, batch, image_size, os.path.join(tmp, "peer.onnx"))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(path, so, providers=providers)

    def forward(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]

    info = {
        "library": f"onnxruntime {ort.__version__}",
        "provider": sess.get_providers()[0],
        "threads": so.intra_op_num_threads,
        "batch": batch,
        "optimisation": "ORT_ENABLE_ALL",
    }
    return Peer("ort", forward, info)


# --------------------------------------------------------------------------------------------
# One peer run: sample, one batched forward, statistics on the grid
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PeerRun:
    """One image through a peer: attn (h, w) and null (B, h, w) grid maps, float32; stats
    (``numpy_statistics`` on the grid); seconds of "sample", "forward", "stats", "total"."""

    attn: np.ndarray
    null: np.ndarray
    stats: dict[str, Any]
    seconds: dict[str, float]


def run_peer(
    peer: Peer, image: np.ndarray, n_boot: int, *, null_images: np.ndarray | None = None, seed: int = 0
) -> PeerRun:
    """ARB of one normalised image (H, W, 3) with a peer: draw ``n_boot`` normal bootstrap images
    (numpy: per channel the image's mean and std, ddof 1), run the 1 + B images in one batch,
    statistics in numpy / statsmodels on the patch grid. ``null_images`` (B, H, W, 3), when given,
    replace the drawn ones in the forward (the draw is still timed), to check against ours."""
    x = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1))  # (3, H, W)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True, ddof=1)
    nulls = (mean + std * rng.standard_normal((n_boot, *x.shape), np.float32)).astype(np.float32)
    t1 = time.perf_counter()
    if null_images is not None:
        nulls = np.asarray(null_images, np.float32).transpose(0, 3, 1, 2)
    batch = np.concatenate([x[None], nulls])
    maps = peer.forward(batch)
    t2 = time.perf_counter()
    stats = bl.numpy_statistics(maps[0], maps[1:])
    t3 = time.perf_counter()
    seconds = {"sample": t1 - t0, "forward": t2 - t1, "stats": t3 - t2, "total": t3 - t0}
    return PeerRun(maps[0], maps[1:], stats, seconds)


def ort_has_cuda() -> bool:
    """Whether the installed onnxruntime has its CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def build_peers(
    config: ViTConfig,
    params: Mapping[str, Any],
    image_size: int,
    batch: int,
    device: str = "cpu",
    which: tuple[str, ...] = PEERS,
    bf16_row: bool = False,
) -> tuple[dict[str, Peer], dict[str, str]]:
    """The peers that can run here, by name, and {name: error} for those that could not be built.

    ``batch``: images per forward (1 + B), fixed in the ONNX export. ``bf16_row``: also a
    "torch_bf16" peer (autocast), meant for a GPU.
    """
    ok = available()
    peers: dict[str, Peer] = {}
    errors: dict[str, str] = {}
    if not ok["torch"]:
        return peers, {p: "torch is not installed" for p in which}
    module = torch_vit(config, params, image_size, device)
    if "torch" in which:
        peers["torch"] = make_torch_peer(module, device)
        if bf16_row:
            peers["torch_bf16"] = make_torch_peer(module, device, bf16=True)
    if "ort" in which:
        if not ok["ort"]:
            errors["ort"] = "onnxruntime (or onnx) is not installed"
        elif device.startswith("cuda") and not ort_has_cuda():
            errors["ort"] = "this onnxruntime has no CUDAExecutionProvider (a CPU run is no GPU peer)"
        else:
            try:
                cpu_module = torch_vit(config, params, image_size, "cpu")
                peers["ort"] = make_ort_peer(cpu_module, batch, image_size, device)
            except Exception as e:  # noqa: BLE001  an export the installed torch cannot do
                errors["ort"] = f"{type(e).__name__}: {e}"
    return peers, errors
