"""Train the embedded demo ViT, offline, on procedural composites; load the shipped weights.

No pretrained DINO weights can be downloaded offline, so the project ships a small ViT it trained
itself (``arb_jax/assets/demo_vit.msgpack``, recorded in ``demo_vit.json``): patch 8, a linear
head on the CLS feature, trained with cross-entropy to tell the object classes of
`arb_jax.demo.data` apart. Only the pasted object tells the class, so the last block's CLS
attention learns to concentrate on it, which is what the ARB demo needs. These are NOT DINO
weights.

Recipe (`TrainSettings`): AdamW (weight decay on kernels only) with linear warm-up and cosine
decay, gradient clipping at global norm 1, a fixed seed; every step draws a fresh batch from
`demo_data.make_dataset` with seed ``SeedSequence([seed, step])`` (values < 2**32), generated in a
background thread. The first ``warm_frac`` of the steps run at the lower resolution ``warm_size``
(the stored position grid is interpolated, as for any input size), the rest at ``image_size``,
which is the stored grid's native size.

Evaluation (`evaluate`) on held-out composites (seed ``2**32 + seed``, never a training seed):
accuracy and the attention-on-object figure: the share of the head-mean last-block CLS attention
mass over the patches that falls on the object (each patch weighted by the fraction of its pixels
the object covers, i.e. the pixel-level share after nearest-neighbour upsampling), divided by the
object's area share. A ratio of 1 is attention blind to the object; > 1 is concentration on it.

Command line: ``arb train-demo [--steps N] [--out DIR] [--seed S] [--smoke]`` (`main`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from arb_jax.checkpoints.demo import (  # the loader's names, also reachable here as before
    ASSETS,
    NOT_DINO,
    RECORD_FILE,
    WEIGHTS_FILE,
    DemoWeightsError,
    load_demo_params,
)
from arb_jax.demo import data as demo_data
from arb_jax.io.files import sha256_file
from arb_jax.io.images import normalize
from arb_jax.models import VisionTransformer, ViTConfig

__all__ = [
    "ASSETS",
    "WEIGHTS_FILE",
    "RECORD_FILE",
    "NOT_DINO",
    "DemoWeightsError",
    "load_demo_params",
    "TrainSettings",
    "SMOKE",
    "demo_config",
    "make_optimizer",
    "batch_seed",
    "eval_seed",
    "attention_on_object",
    "evaluate",
    "train",
    "save_demo",
]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run (recorded in the JSON).

    Attributes
    ----------
    steps
        optimisation steps.
    batch
        images per step.
    image_size
        final training size S in pixels (a multiple of 8); the stored position grid
        is S/8 square, so S is the model's native input size.
    warm_size
        size of the first ``warm_frac`` of the steps (cheaper, lower resolution).
    warm_frac
        fraction of the steps at ``warm_size`` (0: all at ``image_size``).
    lr
        peak learning rate; warmup_steps: linear warm-up from 0; then cosine decay to
        ``lr * final_lr_frac``.
    weight_decay
        AdamW decoupled weight decay (kernels only).
    dim, depth, heads
        ViT width, blocks and heads (MLP 4·dim, patch 8).
    n_eval
        held-out images for the final evaluation.
    seed
        seed of the initialisation and of the data.
    """

    steps: int = 1000
    batch: int = 48
    image_size: int = 96
    warm_size: int = 64
    warm_frac: float = 0.75
    lr: float = 1e-3
    warmup_steps: int = 50
    final_lr_frac: float = 0.01
    weight_decay: float = 0.05
    dim: int = 96
    depth: int = 4
    heads: int = 3
    n_eval: int = 512
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch", "image_size", "warm_size", "dim", "depth", "heads", "n_eval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainSettings.{name} must be a positive int, got {value!r}")
        for name in ("image_size", "warm_size"):
            if getattr(self, name) % 8:
                raise ValueError(
                    f"TrainSettings.{name} must be a multiple of the patch size 8, got {getattr(self, name)}"
                )
        if not 0.0 <= self.warm_frac < 1.0:
            raise ValueError(f"TrainSettings.warm_frac must be in [0, 1), got {self.warm_frac}")
        if not self.lr > 0 or not 0 < self.final_lr_frac <= 1 or self.weight_decay < 0:
            raise ValueError("TrainSettings: need lr > 0, 0 < final_lr_frac <= 1, weight_decay >= 0")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"TrainSettings.warmup_steps must be in [0, steps), "
                f"got {self.warmup_steps} with steps={self.steps}"
            )

    @property
    def warm_steps(self) -> int:
        """Steps run at ``warm_size`` (the first ones)."""
        return int(round(self.warm_frac * self.steps))


# Tiny configuration for the test suite: a few seconds of training after compilation.
SMOKE = TrainSettings(
    steps=24,
    batch=16,
    image_size=32,
    warm_size=32,
    warm_frac=0.0,
    warmup_steps=4,
    dim=32,
    depth=2,
    heads=2,
    n_eval=48,
)


def demo_config(settings: TrainSettings) -> ViTConfig:
    """The ViT of a run: patch 8, MLP 4·dim, position grid ``image_size/8``, one class per
    `demo_data.CLASSES`."""
    return ViTConfig(
        patch=8,
        dim=settings.dim,
        depth=settings.depth,
        heads=settings.heads,
        mlp_dim=4 * settings.dim,
        pos_grid=settings.image_size // 8,
        n_classes=len(demo_data.CLASSES),
        name="demo_vit",
    )


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    """Clip at global norm 1, then AdamW with warm-up + cosine decay; decay on kernels only."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=settings.lr,
        warmup_steps=settings.warmup_steps,
        decay_steps=settings.steps,
        end_value=settings.lr * settings.final_lr_frac,
    )

    def decay_mask(params):
        flat = flax.traverse_util.flatten_dict(params)
        return flax.traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})

    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=settings.weight_decay, mask=decay_mask),
    )


def batch_seed(seed: int, step: int) -> int:
    """Data seed of training step ``step`` (< 2**32, so never equal to an `eval_seed`)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint32)[0])


def eval_seed(seed: int) -> int:
    """Data seed of the held-out evaluation set of a run with ``seed`` (>= 2**32)."""
    return 2**32 + seed


# --------------------------------------------------------------------------- evaluation


def attention_on_object(attn: Any, masks: Any) -> dict[str, float]:
    """How much of the CLS attention falls on the object.

    Parameters
    ----------
    attn : Any
        (N, heads, h, w) last-block CLS attention over the patches (any non-negative
        weights; the head mean is renormalised to sum 1 over the patches of each image).
    masks : Any
        (N, h·p, w·p) bool object masks (p = patch side, inferred).

    Returns
    -------
    dict[str, float]
        dict of floats: ``mass`` = mean over images of the attention share on the object (each
        patch weighted by the fraction of it the object covers); ``area`` = mean object area
        share; ``ratio`` = mass / area (1: attention blind to the object, > 1: concentrated on
        it); ``ratio_median`` = median of the per-image ratios.
    """
    attn = np.asarray(attn, np.float64)
    masks = np.asarray(masks)
    if attn.ndim != 4 or masks.ndim != 3 or attn.shape[0] != masks.shape[0]:
        raise ValueError(
            f"need attn (N, heads, h, w) and masks (N, H, W) with the same N; got "
            f"{attn.shape} and {masks.shape}"
        )
    h, w = attn.shape[2:]
    if masks.shape[1] % h or masks.shape[2] % w or masks.shape[1] // h != masks.shape[2] // w:
        raise ValueError(
            f"mask size {masks.shape[1:]} is not a patch multiple of the attention grid {(h, w)}"
        )
    cover = demo_data.patch_coverage(masks, masks.shape[1] // h).astype(np.float64)
    a = attn.mean(axis=1)
    a = a / a.sum(axis=(1, 2), keepdims=True)
    mass = (a * cover).sum(axis=(1, 2))
    area = cover.mean(axis=(1, 2))
    if np.any(area <= 0):
        raise ValueError("an image has an empty object mask")
    return {
        "mass": float(mass.mean()),
        "area": float(area.mean()),
        "ratio": float(mass.mean() / area.mean()),
        "ratio_median": float(np.median(mass / area)),
    }


def evaluate(config: ViTConfig, params: Any, data: demo_data.DemoData, batch: int = 128) -> dict[str, float]:
    """Held-out accuracy and attention-on-object figures of a classifier ViT.

    Parameters
    ----------
    config : ViTConfig
        the ViT configuration (``n_classes > 0``).
    params : Any
        its canonical parameter tree.
    data : demo_data.DemoData
        `demo_data.DemoData` at a multiple of the patch size.
    batch : int, default 128
        images per forward.

    Returns
    -------
    dict[str, float]
        dict: ``accuracy`` in [0, 1], ``n``, plus the keys of `attention_on_object`.
    """
    if config.n_classes < 1:
        raise ValueError("evaluate needs a ViT with a classification head (n_classes > 0)")
    forward = _forward_fn(config)
    attn, pred = [], []
    for i in range(0, len(data.labels), batch):
        out = forward(params, jnp.asarray(normalize(data.images[i : i + batch])))
        attn.append(np.asarray(out["attn"]))
        pred.append(np.asarray(out["logits"]).argmax(-1))
    stats = attention_on_object(np.concatenate(attn), data.masks)
    accuracy = float(np.mean(np.concatenate(pred) == data.labels))
    return {"accuracy": accuracy, "n": len(data.labels), **stats}


@functools.lru_cache(maxsize=8)
def _forward_fn(config: ViTConfig):
    module = VisionTransformer(config)
    return jax.jit(lambda params, images: module.apply({"params": params}, images))


# --------------------------------------------------------------------------- training


def _batches(settings: TrainSettings, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Normalised (B, S, S, 3) float32 images and (B,) int32 labels, prefetched by a thread."""
    q: queue.Queue = queue.Queue(maxsize=3)
    stop = threading.Event()

    def produce():
        for step in range(start, settings.steps):
            size = settings.warm_size if step < settings.warm_steps else settings.image_size
            d = demo_data.make_dataset(settings.batch, image_size=size, seed=batch_seed(settings.seed, step))
            item = (normalize(d.images), d.labels)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        for _ in range(start, settings.steps):
            yield q.get()
    finally:
        stop.set()


def train(
    settings: TrainSettings = TrainSettings(), *, progress: bool = True, log_every: int = 0
) -> tuple[ViTConfig, dict, dict]:
    """Train the demo ViT from scratch.

    Parameters
    ----------
    settings : TrainSettings, default TrainSettings()
        the run (see `TrainSettings`).
    progress : bool, default True
        show a tqdm bar (loss and running accuracy).
    log_every : int, default 0
        if > 0, also evaluate on 256 held-out images every this many steps (printed).

    Returns
    -------
    tuple[ViTConfig, dict, dict]
        (config, params, record): the ViT configuration, the trained canonical parameter tree
        (numpy float32) and a JSON-ready record (settings, recipe, wall time, held-out figures).
    """
    from tqdm import tqdm

    load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    config = demo_config(settings)
    module = VisionTransformer(config)
    dummy = jnp.zeros((1, settings.image_size, settings.image_size, 3), jnp.float32)
    params = module.init(jax.random.key(settings.seed), dummy)["params"]
    tx = make_optimizer(settings)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, images, labels):
        def loss_fn(p):
            logits = module.apply({"params": p}, images)["logits"]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, jnp.mean(logits.argmax(-1) == labels)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    monitor = (
        demo_data.make_dataset(256, image_size=settings.image_size, seed=eval_seed(settings.seed) + 1)
        if log_every
        else None
    )
    history = []
    monitor_s = 0.0  # time spent in the optional monitoring evaluations (not training)
    start = time.perf_counter()
    bar = tqdm(
        _batches(settings),
        total=settings.steps,
        desc="train-demo",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    loss_ema = acc_ema = None
    for step, (images, labels) in enumerate(bar):
        params, opt_state, loss, acc = step_fn(params, opt_state, images, labels)
        if progress and (step % 5 == 0 or step == settings.steps - 1):
            loss, acc = float(loss), float(acc)
            loss_ema = loss if loss_ema is None else 0.8 * loss_ema + 0.2 * loss
            acc_ema = acc if acc_ema is None else 0.8 * acc_ema + 0.2 * acc
            bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{acc_ema:.2f}", size=images.shape[1])
        if log_every and (step + 1) % log_every == 0:
            t0 = time.perf_counter()
            ev = evaluate(config, params, monitor)
            monitor_s += time.perf_counter() - t0
            history.append(
                {
                    "step": step + 1,
                    "train_time_s": round(time.perf_counter() - start - monitor_s, 1),
                    **{k: round(v, 4) for k, v in ev.items()},
                }
            )
            bar.write(
                f"step {step + 1}: " + ", ".join(f"{k}={v}" for k, v in history[-1].items() if k != "step")
            )
    jax.block_until_ready(params)
    wall = time.perf_counter() - start - monitor_s
    bar.close()
    params = jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(params))

    held_out = demo_data.make_dataset(
        settings.n_eval, image_size=settings.image_size, seed=eval_seed(settings.seed)
    )
    ev = evaluate(config, params, held_out)
    record = {
        "note": NOT_DINO,
        "name": "demo_vit",
        "config": config.to_dict(),
        "image_size": settings.image_size,
        "seed": settings.seed,
        "settings": dataclasses.asdict(settings),
        "data_recipe": demo_data.RECIPE,
        "steps": settings.steps,
        "images_seen": settings.steps * settings.batch,
        "wall_time_s": round(wall, 1),
        "wall_time_note": "training only (compilation and data generation included; the "
        "monitoring and final evaluations excluded)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{jax.device_count()} {jax.default_backend()} device(s)",
        "load_average_at_start": load_at_start,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "held_out": {
            "seed": eval_seed(settings.seed),
            "n": ev["n"],
            "accuracy": round(ev["accuracy"], 4),
            "attention_on_object": round(ev["mass"], 4),
            "object_area_share": round(ev["area"], 4),
            "attention_on_object_ratio": round(ev["ratio"], 3),
            "attention_on_object_ratio_median": round(ev["ratio_median"], 3),
        },
    }
    if history:
        record["history"] = history
    return config, params, record


# --------------------------------------------------------------------------- files


def save_demo(out_dir: str | Path, config: ViTConfig, params: Any, record: dict) -> tuple[Path, Path]:
    """Write ``demo_vit.msgpack`` (`flax.serialization.to_bytes` of the params: plain msgpack,
    no code runs on load) and ``demo_vit.json`` (the record plus the msgpack's sha256).

    Returns
    -------
    tuple[Path, Path]
        (weights path, record path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, meta = out / WEIGHTS_FILE, out / RECORD_FILE
    weights.write_bytes(flax.serialization.to_bytes(params))
    record = {
        **record,
        "config": config.to_dict(),
        "weights": WEIGHTS_FILE,
        "bytes": weights.stat().st_size,
        "sha256": sha256_file(weights),
    }
    meta.write_text(json.dumps(record, indent=2) + "\n")
    return weights, meta
