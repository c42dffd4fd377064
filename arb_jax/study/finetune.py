"""``arb finetune``: a linear head on a frozen ViT's CLS features — the paper's backbone.

The paper classifies Imagenette with DINO ViT-S/8, frozen, plus a linear head 384 → 10 trained
with Adam (lr 3e-4). This module does the same for any image folder and any backbone:

1. data: an image folder in ImageNet layout (``ROOT/CLASS/*.jpg``), or the Imagenette layout
   with ``ROOT/train/CLASS/…`` and ``ROOT/val/CLASS/…`` (``validation/`` also accepted);
   without a ``val/`` folder a stratified split by ``seed`` holds out ``val_fraction`` of every
   class. ``tfds:NAME`` uses the ``train`` and ``validation`` splits, ``tfds:NAME:SPLIT`` one
   split divided by seed. Unreadable images are skipped with a note.
2. features: the backbone's CLS feature of every image is computed once (jitted, in fixed-size
   batches) and cached in ``OUT/features.npz``: a resumed run does not recompute them.
3. training: ``softmax_cross_entropy`` of ``features @ kernel + bias``, optax Adam, minibatches
   drawn by a PRNG key carried from epoch to epoch (one epoch = one jitted ``lax.scan``).
4. an Orbax checkpoint after every epoch (``OUT/checkpoints/``, the last `KEEP_CHECKPOINTS`):
   head, optimizer state, PRNG key, epoch. Running again with the same settings continues from
   the last checkpoint (``--epochs`` may grow) and ends with exactly the head an uninterrupted
   run gives; other settings in the same folder are refused.
5. per epoch one printed line and one row of ``OUT/metrics.csv`` (`METRIC_COLUMNS`).
6. the result is a converted-model folder: ``arb_jax.load_vit(OUT)`` returns the backbone with
   the head (``ViT.logits``), ``meta["classes"]`` the class names in logit order.

Files in ``OUT``: ``finetune.json`` (the settings a resume must match), ``features.npz``,
``split.csv`` (image, class, train/val), ``checkpoints/``, ``metrics.csv``, ``arb_model.json`` +
``params/`` (the model).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arb_jax.io import images
from arb_jax.io.files import write_atomic, write_text_atomic
from arb_jax.models import ViT
from arb_jax.study import sources
from arb_jax.study.sources import Item

__all__ = [
    "DEFAULT_LR",
    "METRIC_COLUMNS",
    "FinetuneError",
    "FinetuneResult",
    "Features",
    "backbone_sha256",
    "extract_features",
    "finetune",
    "init_head",
    "split_by_seed",
]

DEFAULT_LR = 3e-4
"""The paper's learning rate (Adam)."""

CONFIG_FILE = "finetune.json"
FEATURES_FILE = "features.npz"
METRICS_FILE = "metrics.csv"
SPLIT_FILE = "split.csv"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 3
FORMAT = "arb-finetune/1"
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
"""``train_loss``: mean minibatch loss during the epoch; ``train_acc`` / ``val_acc`` (fractions
in [0, 1]) and ``val_loss``: the whole split after the epoch (empty without a validation set);
``seconds``: wall time of the epoch."""

# settings a resume must match (known before the features are computed, then after)
_CHECKED_EARLY = (
    "backbone_sha256",
    "backbone_config",
    "image_size",
    "dtype",
    "listing",
    "layout",
    "lr",
    "batch",
    "seed",
    "val_fraction",
)
_CHECKED = (*_CHECKED_EARLY, "classes", "n_train", "n_val")


class FinetuneError(ValueError):
    """Bad data or settings for ``arb finetune`` (the message names the problem)."""


# ============================================================================ data


@dataclasses.dataclass(frozen=True)
class Features:
    """CLS features of one split: ``ids`` (N,) str, ``labels`` (N,) class names, ``x`` (N, D)."""

    ids: np.ndarray
    labels: np.ndarray
    x: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Features:
        return Features(self.ids[index], self.labels[index], self.x[index])


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _sources(data: str) -> tuple[str, dict[str, Callable[[], Iterable[Item]]], dict[str, Any]]:
    """(layout, {"train": items, ["val": items]}, listing fingerprint per split) of ``data``."""
    if data.startswith("tfds:"):
        name, _, split = data[len("tfds:") :].partition(":")
        if split:
            return "split by seed", {"train": lambda: sources.tfds_items(data)}, {"train": data}
        specs = {"train": f"tfds:{name}:train", "val": f"tfds:{name}:validation"}
        return (
            "tfds train/validation",
            {k: (lambda s=s: sources.tfds_items(s)) for k, s in specs.items()},
            specs,
        )
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FinetuneError(f"data folder not found: {root}")
    val_dir = next((root / n for n in ("val", "validation") if _has_class_folders(root / n)), None)
    if _has_class_folders(root / "train"):
        folders = {"train": root / "train", **({"val": val_dir} if val_dir else {})}
        layout = "train/val folders" if val_dir else "train folder, split by seed"
    else:
        folders, layout = {"train": root}, "split by seed"
    lists = {k: sources.folder_items(f) for k, f in folders.items()}
    for split, items in lists.items():
        loose = [it.image_id for it in items if not it.label]
        if loose:
            raise FinetuneError(
                f"{len(loose)} images lie directly in {folders[split]} (e.g. {loose[0]}), without "
                f"a class: put each class in its own folder ({folders[split]}/CLASS/*.jpg)"
            )
    listing = {
        k: hashlib.sha256("\n".join(sorted(it.image_id for it in items)).encode()).hexdigest()
        for k, items in lists.items()
    }
    return layout, {k: (lambda v=v: v) for k, v in lists.items()}, listing


def extract_features(
    vit: ViT,
    items: Iterable[Item],
    *,
    batch: int = 64,
    progress: bool = False,
    desc: str = "features",
    total: int | None = None,
) -> tuple[Features, list[tuple[str, str]]]:
    """CLS features of ``items`` at ``vit.image_size`` (exact resize, as ``arb sweep`` does).

    Batches have a fixed size ``batch`` (the last one is padded), so the jitted forward compiles
    once. Images are decoded in threads ahead of the model (`arb_jax.io.images.prefetch`).

    Returns
    -------
    tuple[Features, list[tuple[str, str]]]
        (features, skipped): `Features` with ``x`` (N, D) float32, and ``(image id, reason)`` of
        every image that could not be read.
    """
    from tqdm import tqdm

    H, W = vit.image_size
    ids: list[str] = []
    labels: list[str] = []
    feats: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for chunk in images.prefetch(items, batch, lambda it: images.try_prepare(it.load, (H, W), vit.patch)):
            good = []
            for item, (x, reason) in chunk:
                if x is None:
                    skipped.append((item.image_id, reason))
                else:
                    good.append((item, x))
            if good:
                x = np.stack([x for _, x in good])
                if len(good) < batch:
                    x = np.concatenate([x, np.zeros((batch - len(good), *x.shape[1:]), x.dtype)])
                f = np.asarray(vit.features(x), dtype=np.float32)[: len(good)]
                feats.append(f)
                ids.extend(it.image_id for it, _ in good)
                labels.extend(it.label for it, _ in good)
            bar.update(len(chunk))
    finally:
        bar.close()
    x = np.concatenate(feats) if feats else np.zeros((0, vit.config.dim), np.float32)
    return Features(np.array(ids, dtype=str), np.array(labels, dtype=str), x), skipped


def split_by_seed(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: indices (train, val), ``round(val_fraction·n)`` of each class held out.

    Every class keeps at least one training image. Deterministic in ``seed`` and the order of
    ``labels``; both index arrays are sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise FinetuneError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for cls in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == cls)
        n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, int)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


# ============================================================================ training


def backbone_sha256(vit: ViT) -> str:
    """sha256 of the backbone's stored parameters (any head excluded): its identity."""
    params = {k: v for k, v in vit.stored_params().items() if k != "head"}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    h = hashlib.sha256()
    for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(leaf, dtype=np.float32).tobytes())
    return h.hexdigest()


def init_head(key: jax.Array, dim: int, n_classes: int) -> dict[str, jax.Array]:
    """A linear head ``{"kernel": (D, K), "bias": (K,)}``, uniform in ±1/√D (torch's default)."""
    k1, k2 = jax.random.split(key)
    bound = 1.0 / math.sqrt(dim)
    return {
        "kernel": jax.random.uniform(k1, (dim, n_classes), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k2, (n_classes,), jnp.float32, -bound, bound),
    }


def _loss_acc(head, x, y, w):
    logits = jnp.dot(x, head["kernel"], precision="highest") + head["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    n = jnp.maximum(w.sum(), 1.0)
    return (w * ce).sum() / n, (w * (logits.argmax(-1) == y)).sum() / n


def _make_epoch(tx: optax.GradientTransformation, batch: int):
    """One epoch as a jitted function ``(head, opt_state, key, x, y) → (head, opt_state, key, loss)``.

    The key is split; the new half permutes the examples. The permutation is padded to a multiple
    of ``batch`` with zero-weight entries, so every step has the same shape and the last step
    averages over its real examples only (a PyTorch ``DataLoader`` without ``drop_last``).
    """

    def epoch(head, opt_state, key, x, y):
        n = x.shape[0]
        steps = -(-n // batch)
        key, sub = jax.random.split(key)
        perm = jax.random.permutation(sub, n)
        pad = steps * batch - n
        idx = jnp.concatenate([perm, jnp.zeros(pad, perm.dtype)]).reshape(steps, batch)
        w = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(steps, batch)

        def step(carry, batch_in):
            head, opt_state = carry
            i, wi = batch_in
            (loss, _), grads = jax.value_and_grad(_loss_acc, has_aux=True)(head, x[i], y[i], wi)
            updates, opt_state = tx.update(grads, opt_state, head)
            return (optax.apply_updates(head, updates), opt_state), loss * wi.sum()

        (head, opt_state), losses = jax.lax.scan(step, (head, opt_state), (idx, w))
        return head, opt_state, key, losses.sum() / n

    return jax.jit(epoch)


@jax.jit
def _evaluate(head, x, y):
    return _loss_acc(head, x, y, jnp.ones(x.shape[0]))


# ============================================================================ files


def _checkpoint_manager(out: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=KEEP_CHECKPOINTS, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((out / CHECKPOINT_DIR).absolute(), options=options)


def _save_features(
    path: Path, splits: dict[str, Features], skipped: list[tuple[str, str]], record: dict[str, Any]
) -> None:
    arrays: dict[str, np.ndarray] = {"record": np.array(json.dumps(record, sort_keys=True))}
    for name, f in splits.items():
        arrays.update({f"{name}_ids": f.ids, f"{name}_labels": f.labels, f"{name}_x": f.x})
    arrays["skipped"] = np.array([f"{i}\t{r}" for i, r in skipped], dtype=str)
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def _load_features(
    path: Path, record: dict[str, Any]
) -> tuple[dict[str, Features], list[tuple[str, str]]] | None:
    """The cached features if ``path`` holds them for ``record``; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["record"])) != json.loads(json.dumps(record, sort_keys=True)):
                return None
            splits = {s: Features(z[f"{s}_ids"], z[f"{s}_labels"], z[f"{s}_x"]) for s in record["splits"]}
            skipped = [tuple(s.split("\t", 1)) for s in z["skipped"].tolist()]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # damaged or foreign: recompute
    return splits, skipped


def _check_record(out: Path, old: dict[str, Any], new: dict[str, Any], keys: Sequence[str]) -> None:
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff:

        def show(k: str) -> str:
            if k == "listing":
                return "the image files differ"
            if k == "backbone_sha256":
                return "another backbone (its weights differ)"
            a, b = json.dumps(old.get(k)), json.dumps(new.get(k))
            a, b = (t if len(t) <= 40 else t[:37] + "..." for t in (a, b))
            return f"{k} {a} there, {b} now"

        details = "; ".join(show(k) for k in diff)
        raise FinetuneError(
            f"{out} holds checkpoints of a different fine-tuning run ({details}); use another "
            f"--out, or delete {out / CHECKPOINT_DIR} to start over"
        )


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("epoch", "").isdigit()]
    return [{k: _num(v) for k, v in r.items()} for r in rows if int(r["epoch"]) <= upto]


def _num(text: str) -> float | int | None:
    if text in ("", None):
        return None
    return int(text) if text.isdigit() else float(text)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})

    write_atomic(path, write)


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=METRIC_COLUMNS).writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def _write_split(path: Path, train: Features, val: Features) -> None:
    """``image_id,class,split`` of every image used (split: train or val)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "class", "split"])
            for name, feats in (("train", train), ("val", val)):
                writer.writerows(
                    [i, c, name] for i, c in zip(feats.ids.tolist(), feats.labels.tolist(), strict=True)
                )

    write_atomic(path, write)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ============================================================================ the run


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What `finetune` made.

    Attributes
    ----------
    vit
        the backbone with the trained head (``vit.logits``; ``meta["classes"]``).
    classes
        the K class names, in logit order.
    history
        one dict per epoch (`METRIC_COLUMNS`), resumed epochs included.
    out_dir
        the output folder (``load_vit(out_dir)`` loads ``vit``).
    resumed_from
        the epoch the run continued from (0: from scratch).
    skipped
        ``(image id, reason)`` of the unreadable images.
    train_ids, val_ids
        the images of each split (also in ``OUT/split.csv``).
    """

    vit: ViT
    classes: tuple[str, ...]
    history: list[dict[str, Any]]
    out_dir: Path
    resumed_from: int
    skipped: list[tuple[str, str]]
    train_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()


def finetune(
    vit: ViT,
    data: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 10,
    lr: float = DEFAULT_LR,
    batch: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    resume: bool = False,
    model: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> FinetuneResult:
    """Train a linear head on ``vit``'s frozen CLS features (see the module docstring).

    Parameters
    ----------
    vit : ViT
        the backbone (its image size is the training size); any head it has is replaced.
    data : str | Path
        an image folder (``CLASS/*.jpg``, or ``train/`` + ``val/`` of class folders) or
        ``tfds:NAME[:SPLIT]``.
    out_dir : str | Path
        output folder; it may hold a previous run with the same settings, which is resumed.
    epochs : int, default 10
        total epochs (a resumed run trains the missing ones).
    lr : float, default DEFAULT_LR
        Adam learning rate (the paper's 3e-4).
    batch : int, default 64
        minibatch size (also the feature-extraction batch).
    seed : int, default 0
        the head's init, the minibatch order and the train/val split.
    val_fraction : float, default 0.2
        fraction of each class held out when ``data`` has no validation split.
    resume : bool, default False
        require a previous run to continue (without it, one is continued when present).
    model : str | None, default None
        the backbone's name or path, recorded in the output's ``meta``.
    progress : bool, default False
        tqdm bar while computing features.
    log : Callable[[str], None] | None, default print
        receives the per-epoch lines and notes (None: silent).

    Raises
    ------
    FinetuneError
        bad settings, fewer than 2 classes, no readable image, a validation class
        absent from training, or ``out_dir`` holding a run with other settings.
    """
    from arb_jax.convert.orbax_io import write_converted

    say = log or (lambda _msg: None)
    _check_settings(vit, epochs=epochs, lr=lr, batch=batch, val_fraction=val_fraction)
    data = str(data)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    layout, sources, listing = _sources(data)
    record = _run_record(
        vit,
        data,
        layout,
        listing,
        sources,
        model=model,
        lr=lr,
        batch=batch,
        seed=seed,
        val_fraction=val_fraction,
    )
    if "val" in sources and val_fraction and log:
        say(f"arb: finetune: {data} has a validation split; --val-fraction is not used")

    mngr = _checkpoint_manager(out)
    try:
        steps, old = _previous_run(out, mngr, record, resume)
        splits, skipped = _features(vit, out, sources, record, batch=batch, progress=progress, say=say)
        train, val, classes = _classes_and_split(splits, skipped, data, val_fraction, seed)
        record.update(classes=list(classes), n_train=len(train), n_val=len(val))
        _write_split(out / SPLIT_FILE, train, val)
        if steps:
            _check_record(out, old, record, _CHECKED)
        write_text_atomic(out / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
        tx = optax.adam(lr)
        state, start, history = _initial_state(
            out, mngr, steps, tx, vit.config.dim, len(classes), epochs=epochs, seed=seed, say=say
        )
        head = _train_epochs(
            out,
            mngr,
            tx,
            state,
            history,
            train,
            val,
            classes,
            start=start,
            epochs=epochs,
            batch=batch,
            say=say,
        )
    finally:
        mngr.close()

    meta = _model_meta(
        vit,
        record,
        classes,
        history,
        train,
        val,
        layout,
        start=start,
        epochs=epochs,
        lr=lr,
        batch=batch,
        seed=seed,
    )
    tuned = vit.with_head(np.asarray(head["kernel"]), np.asarray(head["bias"]), meta=meta)
    write_converted(out, tuned.config, tuned.stored_params(), meta, overwrite=True)
    return FinetuneResult(
        tuned, classes, history, out, start, skipped, tuple(train.ids.tolist()), tuple(val.ids.tolist())
    )


def _check_settings(vit: ViT, *, epochs: int, lr: float, batch: int, val_fraction: float) -> None:
    """FinetuneError (TypeError for a non-ViT) for settings no run can use."""
    for name, value in (("epochs", epochs), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise FinetuneError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise FinetuneError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(val_fraction, int | float) and 0.0 <= val_fraction < 1.0):
        raise FinetuneError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    if not isinstance(vit, ViT):
        raise TypeError(f"vit must be an arb_jax ViT bundle (load_vit), got {type(vit).__name__}")


def _run_record(
    vit: ViT,
    data: str,
    layout: str,
    listing: dict[str, Any],
    sources: dict[str, Any],
    *,
    model: str | None,
    lr: float,
    batch: int,
    seed: int,
    val_fraction: float,
) -> dict[str, Any]:
    """The settings written to ``finetune.json``, which a resume must match."""
    return {
        "format": FORMAT,
        "data": data if data.startswith("tfds:") else str(Path(data).absolute()),
        "layout": layout,
        "listing": listing,
        "model": model or vit.meta.get("name") or vit.config.name,
        "backbone_sha256": backbone_sha256(vit),
        "backbone_config": dataclasses.replace(vit.config, n_classes=0).to_dict(),
        "image_size": list(vit.image_size),
        "dtype": vit.dtype,
        "lr": float(lr),
        "batch": int(batch),
        "seed": int(seed),
        "val_fraction": float(val_fraction) if "val" not in sources else None,
    }


def _previous_run(out: Path, mngr: Any, record: dict[str, Any], resume: bool) -> tuple[list[int], Any]:
    """The checkpointed epochs of an earlier run in ``out`` and its record (checked early)."""
    steps = sorted(mngr.all_steps())
    old = None
    if (out / CONFIG_FILE).is_file():
        try:
            old = json.loads((out / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise FinetuneError(f"{out / CONFIG_FILE} is unreadable ({e})") from None
    if steps and old is None:
        raise FinetuneError(
            f"{out / CHECKPOINT_DIR} has checkpoints but {out / CONFIG_FILE} is "
            "missing: not a finetune folder, or a damaged one"
        )
    if resume and not steps:
        raise FinetuneError(f"nothing to resume: {out} has no finetune checkpoints")
    if steps:
        _check_record(out, old, record, _CHECKED_EARLY)
    return steps, old


def _features(
    vit: ViT,
    out: Path,
    sources: dict[str, Any],
    record: dict[str, Any],
    *,
    batch: int,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Features], list[tuple[str, str]]]:
    """The CLS features of every split: from ``features.npz`` when it matches, else computed."""
    cache_record = {
        k: record[k] for k in ("listing", "backbone_sha256", "backbone_config", "image_size", "dtype")
    }
    cache_record["splits"] = sorted(sources)
    cached = _load_features(out / FEATURES_FILE, cache_record)
    if cached is not None:
        splits, skipped = cached
        say(f"arb: finetune: using the cached features in {out / FEATURES_FILE}")
    else:
        splits, skipped = {}, []
        for name, items in sources.items():
            listed = items()
            total = len(listed) if isinstance(listed, list) else None
            f, bad = extract_features(
                vit, listed, batch=batch, progress=progress, desc=f"features ({name})", total=total
            )
            splits[name], skipped = f, skipped + bad
        _save_features(out / FEATURES_FILE, splits, skipped, cache_record)
    if skipped:
        shown = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
        say(
            f"arb: finetune: skipped {len(skipped)} unreadable image(s): {shown}"
            + (" ..." if len(skipped) > 3 else "")
        )
    return splits, skipped


def _classes_and_split(
    splits: dict[str, Features], skipped: list[tuple[str, str]], data: str, val_fraction: float, seed: int
) -> tuple[Features, Features, tuple[str, ...]]:
    """(train, val, classes): the data's own validation split, or one held out by ``seed``."""
    train = splits["train"]
    if not len(train):
        raise FinetuneError(f"no readable image in {data} ({len(skipped)} skipped)")
    classes = tuple(sorted(set(train.labels.tolist())))
    if len(classes) < 2:
        raise FinetuneError(
            f"a classifier needs at least 2 classes; {data} has only {classes[0]!r} (readable images)"
        )
    if "val" in splits:
        val = splits["val"]
        unknown = sorted(set(val.labels.tolist()) - set(classes))
        if unknown:
            raise FinetuneError(f"validation classes {unknown} have no training images")
    else:
        train_idx, val_idx = split_by_seed(train.labels, val_fraction, seed)
        train, val = train.take(train_idx), train.take(val_idx)
    return train, val, classes


def _initial_state(
    out: Path,
    mngr: Any,
    steps: list[int],
    tx: optax.GradientTransformation,
    dim: int,
    n_classes: int,
    *,
    epochs: int,
    seed: int,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """(state, start epoch, history so far): a fresh head, or the last checkpoint's state."""
    import orbax.checkpoint as ocp

    key, init_key = jax.random.split(jax.random.key(seed))
    head = init_head(init_key, dim, n_classes)
    opt_state = tx.init(head)
    start = 0
    if steps:
        start = epochs if epochs in steps else steps[-1]
        if start > epochs:
            say(
                f"arb: finetune: {out} is already trained to epoch {start} (> --epochs "
                f"{epochs}); keeping epoch {start}"
            )
        target = {
            "head": head,
            "opt_state": opt_state,
            "key": jax.random.key_data(key),
            "epoch": np.zeros((), np.int32),
        }
        state = mngr.restore(start, args=ocp.args.StandardRestore(target))
        head, opt_state = state["head"], state["opt_state"]
        key = jax.random.wrap_key_data(jnp.asarray(state["key"]))
        if start < epochs:
            say(f"arb: finetune: resuming from epoch {start} ({out / CHECKPOINT_DIR})")
    kept = _read_metrics(out / METRICS_FILE, steps[-1] if steps else 0)
    if start == (steps[-1] if steps else 0):
        _write_metrics(out / METRICS_FILE, kept)  # drops rows of epochs never checkpointed
    history = [r for r in kept if r["epoch"] <= start]
    return {"head": head, "opt_state": opt_state, "key": key}, start, history


def _train_epochs(
    out: Path,
    mngr: Any,
    tx: optax.GradientTransformation,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    train: Features,
    val: Features,
    classes: tuple[str, ...],
    *,
    start: int,
    epochs: int,
    batch: int,
    say: Callable[[str], None],
) -> dict[str, jax.Array]:
    """Epochs ``start + 1 .. epochs``: train, evaluate, checkpoint, log; returns the head."""
    import orbax.checkpoint as ocp

    index = {c: i for i, c in enumerate(classes)}
    xt = jnp.asarray(train.x)
    yt = jnp.asarray([index[c] for c in train.labels.tolist()], jnp.int32)
    xv = jnp.asarray(val.x)
    yv = jnp.asarray([index[c] for c in val.labels.tolist()], jnp.int32)
    head, opt_state, key = state["head"], state["opt_state"], state["key"]
    epoch_fn = _make_epoch(tx, batch)
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        head, opt_state, key, loss = epoch_fn(head, opt_state, key, xt, yt)
        _, train_acc = _evaluate(head, xt, yt)
        val_loss, val_acc = _evaluate(head, xv, yv) if len(val) else (None, None)
        row = {
            "epoch": epoch,
            "train_loss": float(loss),
            "train_acc": float(train_acc),
            "val_loss": None if val_loss is None else float(val_loss),
            "val_acc": None if val_acc is None else float(val_acc),
        }
        saved = {
            "head": head,
            "opt_state": opt_state,
            "key": jax.random.key_data(key),
            "epoch": np.asarray(epoch, np.int32),
        }
        mngr.save(epoch, args=ocp.args.StandardSave(saved), force=True)
        mngr.wait_until_finished()
        row["seconds"] = round(time.perf_counter() - t0, 4)
        _append_metrics(out / METRICS_FILE, row)
        history.append(row)
        val_text = (
            ""
            if val_acc is None
            else f", val loss {row['val_loss']:.4f}, val acc {100 * row['val_acc']:.1f}%"
        )
        say(
            f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, "
            f"train acc {100 * row['train_acc']:.1f}%{val_text} ({row['seconds']:.2f} s)"
        )
    return head


def _model_meta(
    vit: ViT,
    record: dict[str, Any],
    classes: tuple[str, ...],
    history: list[dict[str, Any]],
    train: Features,
    val: Features,
    layout: str,
    *,
    start: int,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    """The written model's ``meta``: the backbone, the classes, and how the head was trained."""
    last = history[-1] if history else {}
    return {
        "name": f"{record['model'] or 'backbone'} + linear head ({len(classes)} classes)",
        "source": "arb finetune",
        "classes": list(classes),
        "image_size": list(vit.image_size),
        "random_init": bool(vit.meta.get("random_init", False)),
        "backbone": {
            "model": record["model"],
            "sha256": record["backbone_sha256"],
            **{k: vit.meta[k] for k in ("name", "source", "sha256", "random_init") if k in vit.meta},
        },
        "finetune": {
            "epochs": start if start > epochs else epochs,
            "lr": float(lr),
            "batch": int(batch),
            "seed": int(seed),
            "data": record["data"],
            "layout": layout,
            "n_train": len(train),
            "n_val": len(val),
            "train_acc": last.get("train_acc"),
            "val_acc": last.get("val_acc"),
            "val_loss": last.get("val_loss"),
        },
    }
