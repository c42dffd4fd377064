"""FLOP count of an ARB run (docs/method.md §6) and the device's peak FLOP/s, measured by a large matmul.

FLOPs count a multiply-add as 2. One full transformer block on N tokens of width d with an MLP
of width m: 2·(4·N·d² + 2·N·d·m + 2·N²·d) (q|k|v and the output projection, the MLP, scores
and their product with the values); with m = 4d this is docs/method.md §6's 2·(12·N·d² + 2·N²·d). The
last block runs the CLS query only (docs/method.md §1): keys and values of all N tokens, one query row,
one token through the projection and the MLP: 2·(2·N·d² + 2·N·d + 2·d² + 2·d·m). The patch
embedding (2·N·3p²·d, 0.1 % at ViT-S/8, 488 px) and LayerNorm, softmax and GELU are not
counted, as in docs/method.md §6.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from arb_jax.models import ViTConfig


def n_tokens(config: ViTConfig, image_size: int | tuple[int, int]) -> int:
    """Tokens of one forward: 1 CLS + registers + (H/p)·(W/p) patches."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h % config.patch or w % config.patch:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {config.patch}")
    return 1 + config.n_registers + (h // config.patch) * (w // config.patch)


def block_flops(config: ViTConfig, n: int) -> int:
    """FLOPs of one full block on n tokens."""
    d, m = config.dim, config.mlp_dim
    return 2 * (4 * n * d * d + 2 * n * d * m + 2 * n * n * d)


def cls_block_flops(config: ViTConfig, n: int) -> int:
    """FLOPs of the last block computed for the CLS query only."""
    d, m = config.dim, config.mlp_dim
    return 2 * (2 * n * d * d + 2 * n * d + 2 * d * d + 2 * d * m)


def forward_flops(config: ViTConfig, image_size: int | tuple[int, int], cls_only_last: bool = True) -> int:
    """FLOPs of one ViT forward of one image.

    ``cls_only_last=False`` gives the L full blocks of docs/method.md §6.
    """
    n = n_tokens(config, image_size)
    if not cls_only_last:
        return config.depth * block_flops(config, n)
    return (config.depth - 1) * block_flops(config, n) + cls_block_flops(config, n)


def arb_flops_per_image(config: ViTConfig, image_size: int | tuple[int, int], n_boot: int) -> int:
    """FLOPs of ARB for one image: the observed forward and ``n_boot`` bootstrap forwards."""
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    return (1 + n_boot) * forward_flops(config, image_size)


def attention_share(config: ViTConfig, image_size: int | tuple[int, int]) -> float:
    """Fraction of a full block's FLOPs in the N² attention terms (scores and their product with v)."""
    n = n_tokens(config, image_size)
    return 4 * n * n * config.dim / block_flops(config, n)


def _median_time(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times))


def jax_matmul_peak(dtype: str = "float32", n: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of an n×n×n JAX matmul on the default device (float32 at HIGHEST precision).

    Compiled as arb-jax compiles its forwards (``arb_jax.models.xla_options``: oneDNN's dots on
    a CPU), so the peak and the forwards use the same kernels.

    bfloat16 inputs accumulate in float32 (``preferred_element_type``), as the model's matmuls.
    Returns {"library", "dtype", "n", "flops" (from the median time), "flops_best", "seconds"}.
    """
    import jax
    import jax.numpy as jnp

    from arb_jax.models import xla_options

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))
    out = jnp.float32 if dtype == "bfloat16" else None
    fn = xla_options.jit(lambda x, y: jnp.dot(x, y, precision="highest", preferred_element_type=out))
    fn(a, b).block_until_ready()
    med, best = _median_time(lambda: fn(a, b).block_until_ready(), repeats)
    flops = 2.0 * n**3
    return {
        "library": f"jax {jax.__version__}",
        "dtype": dtype,
        "n": n,
        "flops": flops / med,
        "flops_best": flops / best,
        "seconds": med,
    }


def torch_matmul_peak(
    dtype: str = "float32", n: int = 4096, repeats: int = 5, device: str = "cpu"
) -> dict[str, Any]:
    """FLOP/s of an n×n×n PyTorch matmul (for reference; torch defaults, no TF32 for float32)."""
    import torch

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=tdtype) for _ in range(2))

    def run():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    run()
    med, best = _median_time(run, repeats)
    flops = 2.0 * n**3
    return {
        "library": f"torch {torch.__version__}",
        "dtype": dtype,
        "n": n,
        "flops": flops / med,
        "flops_best": flops / best,
        "seconds": med,
    }


def ort_matmul_peak(
    dtype: str = "float32", n: int = 4096, repeats: int = 5, device: str = "cpu"
) -> dict[str, Any]:
    """FLOP/s of an n×n×n ONNX Runtime ``MatMul`` (float32; its CUDA provider on a GPU, where
    installed), every graph optimisation on, as many threads as cores."""
    import os

    import onnxruntime as ort
    from onnx import TensorProto, helper

    if dtype != "float32":
        raise ValueError(f"the ONNX Runtime peak is measured in float32 only, got {dtype!r}")
    t = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", t, [n, n]), helper.make_tensor_value_info("b", t, [n, n])],
        [helper.make_tensor_value_info("c", t, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = os.cpu_count() or 1
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    run = lambda: sess.run(None, {"a": a, "b": b})  # noqa: E731
    run()
    med, best = _median_time(run, repeats)
    flops = 2.0 * n**3
    return {
        "library": f"onnxruntime {ort.__version__} ({sess.get_providers()[0]})",
        "dtype": dtype,
        "n": n,
        "flops": flops / med,
        "flops_best": flops / best,
        "seconds": med,
    }
