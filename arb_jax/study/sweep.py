"""The simulation study (docs/method.md §5) as a resumable, sharded sweep: one CSV row per result.

For every image of a data set: paste noise into a region of interest (ROI), run ARB on the
perturbed image, and score how much attention the shrunk maps leave in the ROI. The pieces, each
in its own module of `arb_jax.study`:

- `sources`: an image folder or ``tfds:NAME[:SPLIT]`` → items with stable ids;
- `arb_jax.io.images.prefetch`: a thread pool decodes and resizes the next batches while the
  device works;
- `grid`: the key of an image is folded from the seed and ``zlib.crc32`` of its id, never
  from its position, so results do not depend on where the image falls in a batch, on the host,
  or on an interruption (every step has the same shapes: for the same ``--batch`` per device,
  rows are bit-identical on any number of devices and after a resume); the grid runs ARB once per
  ``(n_boot, width)`` and applies the threshold pairs ``(alpha, beta)`` to the SAME results;
- `evaluate`: the table of metrics, computed on device;
- `rows`: rows are appended as they are produced (flushed and fsync'ed per batch); on start
  the writer reads the rows already there, drops a partial last line left by a kill, and the
  sweep skips every (image, seed, grid point) already done;
- here: the batch is sharded over this host's devices (`arb_jax.core.pipeline.image_mesh`); with
  several hosts, host k of K takes ``ids[k::K]`` and writes ``RESULTS/rows.host{k}.csv``.

``arb sweep`` (`arb_jax.cli.sweep`) runs it; ``arb report`` (`arb_jax.study.report`) turns the
rows into tables and figures.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.checkpoints import loading
from arb_jax.core import options, pipeline
from arb_jax.core.options import PRESET_IMAGES
from arb_jax.io import images
from arb_jax.io.files import folder_lock, remove_stale_temporaries, write_text_atomic
from arb_jax.io.text import escape
from arb_jax.study import simulate
from arb_jax.study.evaluate import METHODS, METRICS, evaluate
from arb_jax.study.grid import Grid, image_key, parse_grid
from arb_jax.study.rows import COLUMNS, RowWriter, read_rows, row_key
from arb_jax.study.sources import (
    Item,
    SourceError,
    folder_items,
    open_source,
    placements_of,
    tfds_items,
)

__all__ = [
    "NOISES",
    "PVALUES",
    "SAMPLERS",
    "SweepConfig",
    "SweepSummary",
    "run_sweep",
    "sweep_batch",
    # the names this module had before the study was split into modules: still reachable here
    "COLUMNS",
    "METHODS",
    "Grid",
    "Item",
    "RowWriter",
    "SourceError",
    "evaluate",
    "folder_items",
    "image_key",
    "open_source",
    "parse_grid",
    "placements_of",
    "read_rows",
    "row_key",
    "tfds_items",
]

DEFAULT_BOOT_CHUNK = 65
"""Images per input per forward when ``boot_chunk`` is not given: the input and all its null
images up to B = 64 (one forward), at most 65 beyond, so that memory stays bounded for any B."""

NOISES = ("square", "diffuse")
SAMPLERS = tuple(options.SAMPLERS)  # the registries' names
PVALUES = tuple(options.PVALUE_METHODS)
STAT_OPTIONS = ("pvalue", "pi0_method", "lfdr_pi0", "lfdr_null", "z_th")  # None: the preset's
CONFIG_FILE = "sweep.json"
CHECKED_CONFIG = (
    "data",
    "model",
    "size",
    "noise",
    "noise_size",
    "preset",
    "sampler",
    "pvalue",
    "pi0_method",
    "lfdr_pi0",
    "lfdr_null",
    "z_th",
    "z_filter",
    "dtype",
)  # a resume must match these; limit, seed, grid may grow


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs (the ``arb sweep`` options).

    data: image folder or ``tfds:NAME[:SPLIT]``. model: name or path (`arb_jax.load_vit`).
    out: results folder. noise: "square" | "diffuse"; noise_size: square side in pixels (None:
    ``round(size * 100 / 488)``, the reference's 100 px at 488). grid: n_boot × width runs and
    (alpha, beta) pairs. preset: "paper" | "attnreg" (`arb_jax.core.options.PRESETS`); sampler,
    pvalue, pi0_method, lfdr_pi0, lfdr_null, z_th: ARB options (docs/method.md §2-4; None: the
    preset's); size None is then the preset's size, else the model's. z_filter: Appendix B bound on
    |mean z in ROI| (None: no filter). limit: at most this many images. seed: base seed. batch:
    images per device per step (the last batch is padded: every step has the same shapes, so
    results are bit-identical for the same ``batch`` on any number of devices, and after a
    resume; another ``batch`` changes them by float32 rounding). size: images are resized to
    ``size × size`` pixels (None: the model's size). dtype: "float32" | "bfloat16". host,
    n_hosts: this host's share ``ids[host::n_hosts]``; distributed: take them from
    ``jax.distributed.initialize()``. workers: loader threads. boot_chunk: images per input
    per forward, the input and its null images (None: all). placements: K noise placements per
    image (`placements_of`), each a row of its own with its own key. gallery: the first this
    many images (over all hosts sharing ``OUT``, roughly: each host stops when it sees that many
    files) also keep their maps before
    and after, at the grid's run closest to B = 1, width 1 and α = β = 0.3, in
    ``OUT/gallery/*.npz`` for the report's gallery (0: none).
    """

    data: str
    model: str = "demo"
    out: str = "results"
    noise: str = "square"
    noise_size: int | None = None
    grid: Grid = Grid()
    preset: str = "paper"
    sampler: str = "normal"
    pvalue: str | None = None
    pi0_method: str | None = None
    lfdr_pi0: float | str | None = None
    lfdr_null: str | None = None
    z_th: float | None = None
    z_filter: float | None = 1.0
    limit: int | None = None
    seed: int = 0
    batch: int = 8
    size: int | None = None
    dtype: str = "float32"
    host: int | None = None
    n_hosts: int | None = None
    distributed: bool = False
    workers: int | None = None
    boot_chunk: int | None = None
    placements: int = 1
    gallery: int = 12

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"unknown noise {self.noise!r}; choose one of {NOISES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if self.pvalue is not None and self.pvalue not in PVALUES:
            raise ValueError(f"unknown p-value method {self.pvalue!r}; choose one of {PVALUES}")
        for name in ("noise_size", "limit", "batch", "size", "workers", "boot_chunk", "placements"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.z_filter is not None and not (math.isfinite(self.z_filter) and self.z_filter >= 0):
            raise ValueError(f"z_filter must be a number >= 0 or None, got {self.z_filter!r}")
        if (self.host is None) != (self.n_hosts is None):
            raise ValueError("give host and n_hosts together")
        if self.n_hosts is not None and not 0 <= self.host < self.n_hosts:
            raise ValueError(f"host must lie in [0, {self.n_hosts}), got {self.host}")
        if self.distributed and self.host is not None:
            raise ValueError("--distributed takes the host from jax.distributed; do not give --host")
        self.arb_options()  # checks the preset and the statistical options

    def arb_options(self) -> dict[str, Any]:
        """The `ARBOptions` keywords of this sweep's statistics: the preset, then those given."""
        resolved = options.preset_options(
            self.preset, sampler=self.sampler, **{k: getattr(self, k) for k in STAT_OPTIONS}
        )
        return {k: resolved[k] for k in ("preset", "sampler", *STAT_OPTIONS)}


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """What a sweep did: rows path, rows written now, rows already there, images failed, images
    seen; at ``filter_run``, the (n_boot, width) of the rows file closest to (1, 1) (the filter
    depends on the run, not on α, β), the images (× seeds) in the file (``scored``, earlier runs'
    too) and how many of them the mean-z filter drops (``filtered``; ``arb report`` leaves those
    rows out unless ``--all``)."""

    rows_path: Path
    written: int
    skipped: int
    failed: int
    images: int
    scored: int = 0
    filtered: int = 0
    filter_run: tuple[int, float] | None = None


def _config_record(cfg: SweepConfig, size: int, noise_size: int) -> dict[str, Any]:
    data = cfg.data if cfg.data.startswith("tfds:") else str(Path(cfg.data).expanduser().resolve())
    return {
        "data": data,
        "model": cfg.model,
        "size": size,
        "noise": cfg.noise,
        "noise_size": noise_size,
        **cfg.arb_options(),
        "z_filter": cfg.z_filter,
        "dtype": cfg.dtype,
        "limit": cfg.limit,
    }


def _check_config(out: Path, record: dict[str, Any]) -> None:
    """Refuse to mix rows of different sweeps in one folder; write ``sweep.json`` atomically."""
    path = out / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {path}: {e}") from e
        diff = [
            f"{k}: {old.get(k)!r} there, {record[k]!r} now" for k in CHECKED_CONFIG if old.get(k) != record[k]
        ]
        if diff:
            raise ValueError(
                f"{out} holds a sweep with other settings ({'; '.join(diff)}); "
                "resume with the same settings or write to another --out"
            )
        return
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def _roi_corner(roi: np.ndarray) -> tuple[int, int]:
    rows, cols = np.any(roi, axis=1), np.any(roi, axis=0)
    return int(np.argmax(rows)), int(np.argmax(cols))


def run_sweep(
    cfg: SweepConfig, *, progress: bool = False, log: Callable[[str], None] = print
) -> SweepSummary:
    """Run (or resume) the simulation study; rows go to ``OUT/rows.csv`` (``rows.host{k}.csv``).

    For each image (in `folder_items` order, this host's share, not yet done): resize to
    ``size × size`` and centre-crop to a multiple of the patch, paste noise with the image's
    noise key, run ARB once per ``(n_boot, width)`` of the grid with the image's ARB key, score
    each run at every ``(alpha, beta)`` pair (`evaluate`), and append the rows, one batch at a
    time. Bad images are reported with ``log`` and skipped (a later resume tries them again).
    ``log`` gets notes and those errors (lines
    starting with ``"arb: error:"``).
    """
    if cfg.distributed:
        jax.distributed.initialize()
        host, n_hosts = jax.process_index(), jax.process_count()
    else:
        host, n_hosts = (cfg.host, cfg.n_hosts) if cfg.host is not None else (0, 1)
    sharded = cfg.distributed or cfg.host is not None
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    items = open_source(cfg.data, cfg.limit)  # fails early on a bad source
    if cfg.placements > 1:
        items = placements_of(items, cfg.placements)

    base = loading.load_vit(cfg.model, dtype=cfg.dtype, progress=progress)
    patch = base.config.patch
    size = cfg.size or PRESET_IMAGES[cfg.preset]["size"] or min(base.image_size)
    side = size - size % patch  # resized to size × size, then centre-cropped to patch multiples
    if side < patch:
        raise ValueError(f"--size {size} is smaller than the model's patch ({patch} px)")
    noise_size = cfg.noise_size or max(1, round(size * 100 / 488))
    if noise_size > side:
        raise ValueError(f"--noise-size {noise_size} is larger than the image ({side} px)")
    vit = base.at_size(side)

    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / (f"rows.host{host}.csv" if sharded else "rows.csv")
    # One writer per rows file: a second sweep on the same folder (and host share) is refused at
    # once, before it reads or writes anything; the OS drops the lock when the holder dies.
    with folder_lock(out, name=f".{rows_path.name}.lock", what="arb sweep"):
        if not sharded:  # other hosts may be writing their shares' temporaries
            remove_stale_temporaries(out)
        _check_config(out, _config_record(cfg, size, noise_size))
        return _sweep_locked(cfg, out, rows_path, items, vit, size, noise_size, host, n_hosts, progress, log)


def _sweep_locked(
    cfg: SweepConfig,
    out: Path,
    rows_path: Path,
    items: Iterator[Item],
    vit: Any,
    size: int,
    noise_size: int,
    host: int,
    n_hosts: int,
    progress: bool,
    log: Callable[[str], None],
) -> SweepSummary:
    """The rest of `run_sweep`, while this process holds the rows file."""
    patch = vit.config.patch
    n_dev = jax.local_device_count()
    batch = cfg.batch * n_dev  # the same per-device shapes on any number of devices
    mesh = pipeline.image_mesh() if n_dev > 1 else None
    grid, thresholds = cfg.grid, cfg.grid.thresholds
    points = grid.points()

    with RowWriter(rows_path) as writer:
        done = writer.done
        if writer.dropped:
            log(f"arb: {rows_path}: dropped a partial last line ({writer.dropped} bytes)")

        def todo(item: Item) -> bool:
            return any((item.image_id, cfg.seed, *pt) not in done for pt in points)

        mine = itertools.islice(items, host, None, n_hosts)
        seen = [0]

        def counted(it: Iterator[Item]) -> Iterator[Item]:
            for item in it:
                seen[0] += 1
                if todo(item):
                    yield item

        written = failed = 0
        before = len(done)
        total = None
        if not cfg.data.startswith("tfds:"):
            mine = list(mine)  # a folder listing: known length for the progress bar
            total = sum(map(todo, mine))
        from tqdm import tqdm

        bar = tqdm(total=total, desc="sweep", unit="img", disable=not progress)

        def load(item: Item) -> tuple[np.ndarray | None, str]:
            return images.try_prepare(item.load, (size, size), patch)

        try:
            for chunk in images.prefetch(counted(iter(mine)), batch, load, workers=cfg.workers):
                good = []
                for item, (x, err) in chunk:
                    if x is None:
                        failed += 1
                        msg = f"arb: error: {item.image_id}: {err}"
                        if progress:
                            bar.write(msg, file=sys.stderr)
                        else:
                            log(msg)
                    else:
                        good.append((item, x))
                if good:
                    try:
                        rows = sweep_batch(vit, good, cfg, batch, noise_size, thresholds, done, mesh)
                    except Exception as exc:  # a device error: these images only (a resume retries)
                        failed += len(good)
                        ids = ", ".join(item.image_id for item, _ in good)
                        msg = f"arb: error: {escape(ids)}: {escape(str(exc) or type(exc).__name__)}"
                        if progress:
                            bar.write(msg, file=sys.stderr)
                        else:
                            log(msg)
                        rows = []
                    writer.write(rows)
                    written += len(rows)

                bar.update(len(chunk))
        finally:
            bar.close()
    every = read_rows(rows_path)  # every row of this file, also those of earlier runs
    runs = {(int(r["n_boot"]), float(r["width"])) for r in every}
    run = _gallery_run(runs) if runs else None
    scored, filtered = set(), set()
    for r in every:
        if (int(r["n_boot"]), float(r["width"])) == run:
            scored.add((r["image_id"], r["seed"]))
            if r["passed"] != "1":
                filtered.add((r["image_id"], r["seed"]))
    return SweepSummary(rows_path, written, before, failed, seen[0], len(scored), len(filtered), run)


def sweep_batch(
    vit: Any,
    good: list[tuple[Item, np.ndarray]],
    cfg: SweepConfig,
    batch: int,
    noise_size: int,
    thresholds: list[tuple[float, float]],
    done: set[tuple],
    mesh: Any,
) -> list[dict[str, Any]]:
    """Noise, ARB runs and metrics for one batch of images; the rows not yet done.

    Parameters
    ----------
    vit : arb_jax.models.ViT
        The model.
    good : list of (Item, numpy.ndarray)
        The batch's items and their decoded images, (size, size, 3) float32, normalised.
    cfg : SweepConfig
        The sweep.
    batch : int
        The fixed batch shape (the batch is padded to it: one compilation).
    noise_size : int
        Side of the noise square in pixels.
    thresholds : list of (float, float)
        The grid's ``(alpha, beta)`` pairs.
    done : set of tuple
        Row keys already written (`arb_jax.study.rows.row_key`); they are not computed again.
    mesh : jax.sharding.Mesh or None
        Devices to shard the batch over.

    Returns
    -------
    list of dict
        One row per (image, grid point) not in ``done``, with every column of
        `arb_jax.study.rows.COLUMNS`.
    """
    patch = vit.config.patch
    n = len(good)
    keys = jax.vmap(jax.random.split)(jnp.stack([image_key(cfg.seed, it.image_id) for it, _ in good]))
    arb_keys, noise_keys = keys[:, 0], keys[:, 1]
    inject = simulate.square_noise if cfg.noise == "square" else simulate.diffuse_noise
    noisy, rois = [], []
    for (_, x), k in zip(good, noise_keys, strict=True):
        xi, roi = inject(k, x, noise_size)
        noisy.append(xi)
        rois.append(roi)
    pad = batch - n  # fixed batch shape: one compilation, results independent of the batch
    x = jnp.stack(noisy + [noisy[-1]] * pad)
    arb_keys = jnp.concatenate([arb_keys, jnp.repeat(arb_keys[-1:], pad)]) if pad else arb_keys
    rois = np.stack([np.asarray(r) for r in rois])
    weights = jnp.stack([simulate.roi_patch_weights(r, patch) for r in rois])
    weights = jnp.concatenate([weights, jnp.repeat(weights[-1:], pad, axis=0)]) if pad else weights
    corners = [_roi_corner(r) if cfg.noise == "square" else ("", "") for r in rois]

    rows = []
    for n_boot, width in cfg.grid.runs:
        wanted = [
            [(it.image_id, cfg.seed, n_boot, width, a, b) not in done for a, b in thresholds]
            for it, _ in good
        ]
        if not any(map(any, wanted)):
            continue
        res = pipeline.regularize_attention(
            vit,
            x,
            arb_keys,
            n_boot=n_boot,
            width=width,
            **cfg.arb_options(),
            boot_chunk=cfg.boot_chunk or DEFAULT_BOOT_CHUNK,
            mesh=mesh,
        )
        ev = evaluate(
            res.attn,
            res.z,
            res.p,
            res.lfdr,
            res.maps["z"],
            res.maps["pi0"],
            weights,
            thresholds,
            patch=patch,
            roi_pixels=noise_size * noise_size,
            z_th=res.options.z_th,
        )
        passed = np.asarray(simulate.passes_z_filter(ev["mean_z_roi"], cfg.z_filter))
        pi0 = np.asarray(res.pi0)
        if cfg.gallery and (n_boot, width) == _gallery_run(cfg.grid.runs):
            _save_gallery(cfg, good, noisy, rois, res, passed, n_boot, width)
        for i, (item, _) in enumerate(good):
            for j, (alpha, beta) in enumerate(thresholds):
                if not wanted[i][j]:
                    continue
                row = {
                    "image_id": item.image_id,
                    "class": item.label,
                    "seed": cfg.seed,
                    "n_boot": n_boot,
                    "width": float(width),
                    "alpha": float(alpha),
                    "beta": float(beta),
                    "noise": cfg.noise,
                    "noise_size": noise_size,
                    "roi_row": corners[i][0],
                    "roi_col": corners[i][1],
                    "mean_z_roi": ev["mean_z_roi"][i],
                    "passed": bool(passed[i]),
                    "pi0": pi0[i],
                    "perc_before": ev["perc_before"][i],
                    "nonzero_before": ev["nonzero_before"][i],
                    "srmsd_roi": ev["srmsd_roi"][i],
                }
                for m in METHODS:
                    for name in METRICS:
                        row[f"{name}_{m}"] = ev[f"{name}_{m}"][i, j]
                rows.append(row)
    return rows


GALLERY_DIR = "gallery"


def _gallery_run(runs: Any) -> tuple[int, float]:
    """The (n_boot, width) run whose maps the gallery keeps: the one closest to (1, 1.0)."""
    return min(runs, key=lambda r: (abs(r[0] - 1), abs(r[1] - 1.0), r))


def _save_gallery(
    cfg: SweepConfig,
    good: list[tuple[Item, np.ndarray]],
    noisy: list[Any],
    rois: np.ndarray,
    res: Any,
    passed: np.ndarray,
    n_boot: int,
    width: float,
) -> None:
    """``OUT/gallery/<hash of the id>.npz`` for the batch's images while fewer than
    ``cfg.gallery`` are there: the noised image (uint8), the ROI, attention, p, lfdr, z and the
    p / lfdr / π₀ maps (their default α = β = 0.3), π₀, μ₀, σ₀, and the row's labels."""
    import hashlib

    from arb_jax.io.files import write_atomic

    folder = Path(cfg.out).expanduser() / GALLERY_DIR
    folder.mkdir(exist_ok=True)
    have = {p.name for p in folder.glob("*.npz") if not p.name.startswith(".")}
    arrays = res.to_numpy()
    for i, (item, _) in enumerate(good):
        if len(have) >= cfg.gallery:
            return
        name = hashlib.sha256(f"{item.image_id}|{cfg.seed}".encode()).hexdigest()[:16] + ".npz"
        if name in have:
            continue
        rgb = np.round(images.denormalize(np.asarray(noisy[i])) * 255).astype(np.uint8)
        rec = {k: arrays[k][i] for k in ("attn", "z", "p", "lfdr", "pi0", "mu0", "sigma0")}
        rec.update({f"map_{m}": arrays[f"map_{m}"][i] for m in ("p", "lfdr", "pi0")})
        meta = {
            "image_id": item.image_id,
            "class": item.label,
            "seed": cfg.seed,
            "n_boot": int(n_boot),
            "width": float(width),
            "sampler": cfg.sampler,
            "pvalue": cfg.pvalue,
            "alpha": 0.3,
            "beta": 0.3,
            "passed": bool(passed[i]),
        }
        write_atomic(
            folder / name,
            lambda t, r=rec, m=meta, g=rgb, roi=rois[i]: np.savez_compressed(
                t, image_rgb=g, roi=np.asarray(roi, bool), meta=np.array(json.dumps(m)), **r
            ),
        )
        have.add(name)
