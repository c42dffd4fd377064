"""The simulation study (SPEC §5) as a resumable, sharded sweep: images in, one CSV row per result.

For every image of a data set: paste noise into a region of interest (ROI), run ARB on the
perturbed image, and score how much attention the shrunk maps leave in the ROI. The pieces:

- data sources: an image folder (ImageNet layout ``class/*.JPEG`` → class = folder name; images
  directly in the folder → class ``""``) or ``tfds:NAME[:SPLIT]`` (tensorflow-datasets);
- `arb_jax.images.prefetch`: a thread pool decodes and resizes the next batches while the
  device works;
- `image_key`: the key of an image is folded from the seed and ``zlib.crc32`` of its id, never
  from its position, so results do not depend on where the image falls in a batch, on the host,
  or on an interruption (every step has the same shapes: for the same ``--batch`` per device,
  rows are bit-identical on any number of devices and after a resume);
- a grid over ``n_boot`` and ``width`` (one ARB run each) and threshold pairs ``(alpha, beta)``
  applied to the SAME ARB results (`evaluate`);
- `RowWriter`: rows are appended as they are produced (flushed and fsync'ed per batch); on start
  it reads the rows already there, drops a partial last line left by a kill, and the sweep skips
  every (image, seed, grid point) already done;
- the batch is sharded over this host's devices (`arb_jax.pipeline.image_mesh`); with several
  hosts, host k of K takes ``ids[k::K]`` and writes ``RESULTS/rows.host{k}.csv``.

Row columns: see `COLUMNS`. ``arb report`` (`arb_jax.report`) turns them into tables and figures.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.checkpoints import loading
from arb_jax.core import pipeline, regularize, stats
from arb_jax.io import images
from arb_jax.io.files import write_text_atomic
from arb_jax.study import metrics, simulate

__all__ = [
    "COLUMNS",
    "METHODS",
    "Grid",
    "Item",
    "RowWriter",
    "SourceError",
    "SweepConfig",
    "evaluate",
    "folder_items",
    "image_key",
    "open_source",
    "parse_grid",
    "read_rows",
    "row_key",
    "run_sweep",
    "tfds_items",
]

METHODS = ("p", "lfdr", "pi0", "z")
"""Shrinkage rules scored in every row (SPEC §4): p-, LFDR-, π₀- and z-thresholding."""

COLUMNS = (
    "image_id", "class", "seed", "n_boot", "width", "alpha", "beta",
    "noise", "noise_size", "roi_row", "roi_col", "mean_z_roi", "passed", "pi0",
    "perc_before", "nonzero_before",
    *(f"{name}_{m}" for m in METHODS for name in ("perc_after", "nonzero_after", "sens", "spec")),
    "srmsd_roi",
)
"""CSV columns. ``perc_*``: mean percentile in the ROI (%), ``nonzero_*``: non-zero % of the ROI,
``sens_*`` / ``spec_*``: sensitivity / specificity (eqs. 9-10), ``srmsd_roi``: sRMSD of the ROI's
p-values (pixel-weighted), ``roi_row`` / ``roi_col``: top-left corner of the square in pixels
(empty for diffuse noise), ``passed``: 1 if the image passes the mean-z filter (always 1 with
``--z-filter none``)."""

KEY_COLUMNS = ("image_id", "seed", "n_boot", "width", "alpha", "beta")
GRID_NAMES = ("n_boot", "width", "alpha", "beta")
NOISES = ("square", "diffuse")
SAMPLERS = ("normal", "pixel", "patch", "uniform")
PVALUES = ("upper", "plus_one", "two_sided", "attnreg")
CONFIG_FILE = "sweep.json"
CHECKED_CONFIG = ("data", "model", "size", "noise", "noise_size", "sampler", "pvalue",
                  "z_filter", "dtype")  # a resume must match these; limit, seed, grid may grow


class SourceError(ValueError):
    """A data source that cannot be read (missing folder, no images, tfds not installed, ...)."""


# ============================================================================ data sources


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a data source: a stable id, its class (``""`` if none) and a loader.

    ``load()`` returns the image as ``(H, W, 3) uint8`` RGB (it may read a file: call it in a
    worker thread).
    """

    image_id: str
    label: str
    load: Callable[[], np.ndarray] = dataclasses.field(repr=False, compare=False)


def _round_robin(groups: Sequence[Sequence[Item]]) -> list[Item]:
    """Interleave the groups: first item of each, then second of each, ..."""
    out = []
    for row in itertools.zip_longest(*groups):
        out.extend(item for item in row if item is not None)
    return out


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    # resolved through the module at call time (tests may wrap images.read_image)
    return lambda: images.read_image(path)[0]


def folder_items(root: str | Path) -> list[Item]:
    """The images of a folder, class by class in turn (round-robin), as `Item` s.

    Layout: images in ``root/CLASS/`` get class ``CLASS`` (ImageNet / Imagenette layout); images
    directly in ``root`` get class ``""``. Not recursive below the class folders; hidden files and
    folders are ignored; image files are recognised by extension (`arb_jax.images`). Within a
    class, files are sorted by name; classes are sorted and interleaved so that ``--limit`` and an
    interrupted sweep cover every class evenly. The id of an image is its path relative to
    ``root``, with ``/`` separators (e.g. ``"n01440764/ILSVRC2012_val_00000293.JPEG"``).

    Raises:
      SourceError: ``root`` is not a folder or holds no image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"data folder not found: {root}")

    def image_files(folder: Path) -> list[Path]:
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            raise SourceError(f"cannot read folder {folder}: {e.strerror or e}") from e
        return [p for p in entries if p.is_file() and not p.name.startswith(".")
                and p.suffix.lower() in images.IMAGE_EXTENSIONS]

    groups: list[list[Item]] = []
    top = image_files(root)
    if top:
        groups.append([Item(p.name, "", _file_loader(p)) for p in top])
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(sub)
        if files:
            groups.append([Item(f"{sub.name}/{p.name}", sub.name, _file_loader(p)) for p in files])
    if not groups:
        raise SourceError(f"no image files ({', '.join(sorted(images.IMAGE_EXTENSIONS))}) in "
                          f"{root} or its class folders")
    return _round_robin(groups)


TFDS_INSTALL = ("reading {spec} needs tensorflow-datasets, which is not installed; install the "
                "extra with: pip install 'arb-jax[tfds]'  (tensorflow-datasets and tensorflow-cpu)")


def _parse_tfds(spec: str) -> tuple[str, str]:
    body = spec[len("tfds:"):]
    name, _, split = body.partition(":")
    if not name or not re.fullmatch(r"[\w.\-/]+", name):
        raise SourceError(f"bad tfds data set {spec!r}; expected tfds:NAME[/CONFIG][:SPLIT], e.g. "
                          "tfds:imagenette/320px-v2:validation")
    return name, split or "validation"


def tfds_items(spec: str, data_dir: str | None = None) -> Iterator[Item]:
    """The images of a tensorflow-datasets split, in the data set's order, as `Item` s.

    ``spec``: ``"tfds:NAME[/CONFIG][:SPLIT]"`` (default split ``validation``; the paper's data is
    ``tfds:imagenette`` validation, 3925 images). The id of an image is its ``file_name`` feature
    when the data set has one, else ``"SPLIT/INDEX"``; its class the label's name (``""`` if the
    data set has no ``label``). tfds downloads and prepares the data set on first use.

    Raises:
      SourceError: tensorflow-datasets is not installed (the message says how to install it), or
        the data set / split does not exist.
    """
    name, split = _parse_tfds(spec)
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise SourceError(TFDS_INSTALL.format(spec=spec)) from None
    try:
        ds, info = tfds.load(name, split=split, shuffle_files=False, with_info=True,
                             data_dir=data_dir)
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, ValueError, ...)
        raise SourceError(f"cannot load {spec}: {type(e).__name__}: {e}") from e
    label_feature = info.features["label"] if "label" in info.features else None  # noqa: SIM401

    def loader(img: np.ndarray) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            a = np.asarray(img)
            if a.ndim == 2:
                a = a[..., None]
            if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.dtype != np.uint8:
                raise images.ImageError(f"unexpected tfds image of shape {a.shape}, {a.dtype}")
            return np.ascontiguousarray(np.repeat(a, 3, -1) if a.shape[-1] == 1 else a[..., :3])
        return load

    def items() -> Iterator[Item]:
        for i, ex in enumerate(tfds.as_numpy(ds)):
            fname = ex.get("file_name")
            if fname is not None:
                image_id = fname.decode() if isinstance(fname, bytes) else str(fname)
            else:
                image_id = f"{split}/{i:06d}"
            label = "" if label_feature is None else str(label_feature.int2str(int(ex["label"])))
            yield Item(image_id, label, loader(ex["image"]))

    return items()  # the checks above run now, not at the first image


def open_source(data: str | Path, limit: int | None = None) -> Iterator[Item]:
    """`Item` s of ``data`` (a folder or ``tfds:...``), at most ``limit`` of them."""
    text = str(data)
    items = tfds_items(text) if text.startswith("tfds:") else iter(folder_items(text))
    return itertools.islice(items, limit) if limit is not None else items


# ============================================================================ loader


def image_key(seed: int, image_id: str) -> jax.Array:
    """The PRNG key of an image: ``fold_in(key(seed), crc32(image_id))``.

    Independent of the image's position in the data set, the batch, the host and the device
    count: a resumed or sharded sweep draws exactly the same noise and bootstrap samples.
    The sweep splits it in two: ``(arb_key, noise_key) = jax.random.split(image_key(...))``.
    """
    return jax.random.fold_in(jax.random.key(seed), np.uint32(zlib.crc32(image_id.encode())))


@dataclasses.dataclass(frozen=True)
class Grid:
    """Grid points of a sweep.

    One ARB run per ``(n_boot, width)`` in ``runs`` (their product); every run is scored at each
    threshold pair ``(alpha_i, beta_i)`` of ``thresholds`` (alpha and beta are paired, not
    crossed: the p-map depends only on alpha and the LFDR map only on beta, so a product would
    repeat the same numbers).
    """

    n_boot: tuple[int, ...] = (1,)
    width: tuple[float, ...] = (1.0,)
    alpha: tuple[float, ...] = (0.3,)
    beta: tuple[float, ...] = (0.3,)

    def __post_init__(self):
        for name in GRID_NAMES:
            if not getattr(self, name):
                raise ValueError(f"grid {name} has no value")
        for v in self.n_boot:
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"n_boot must be an integer >= 1, got {v!r}")
        for v in self.width:
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"width must be a positive number, got {v!r}")
        for name in ("alpha", "beta"):
            for v in getattr(self, name):
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
        na, nb = len(self.alpha), len(self.beta)
        if na != nb and 1 not in (na, nb):
            raise ValueError(f"alpha and beta are paired: give them the same number of values "
                             f"(or one of them a single value), got {na} and {nb}")

    @property
    def runs(self) -> list[tuple[int, float]]:
        """``(n_boot, width)`` of each ARB run."""
        return list(itertools.product(self.n_boot, self.width))

    @property
    def thresholds(self) -> list[tuple[float, float]]:
        """``(alpha, beta)`` pairs applied to every run's results."""
        n = max(len(self.alpha), len(self.beta))
        a = self.alpha * n if len(self.alpha) == 1 else self.alpha
        b = self.beta * n if len(self.beta) == 1 else self.beta
        return list(zip(a, b, strict=True))

    def points(self) -> list[tuple[int, float, float, float]]:
        """Every grid point ``(n_boot, width, alpha, beta)``."""
        return [(n, w, a, b) for n, w in self.runs for a, b in self.thresholds]


def _parse_values(name: str, text: str) -> tuple:
    values: list[float] = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        if tok.count(":") == 2:  # start:stop:num, numpy linspace
            try:
                lo, hi, num = float(tok.split(":")[0]), float(tok.split(":")[1]), tok.split(":")[2]
                values.extend(np.linspace(lo, hi, int(num)).tolist())
            except ValueError:
                raise ValueError(f"bad range {tok!r} for {name}; expected START:STOP:NUM") from None
            continue
        try:
            values.append(float(tok))
        except ValueError:
            raise ValueError(f"bad value {tok!r} for {name} in --grid") from None
    if not values:
        raise ValueError(f"no values for {name} in --grid")
    if name == "n_boot":
        if any(v != int(v) for v in values):
            raise ValueError(f"n_boot must be integers, got {text!r}")
        values = [int(v) for v in values]
    return tuple(dict.fromkeys(values))  # drop repeats, keep order


def parse_grid(text: str | None, **fixed: Any) -> Grid:
    """Parse ``"n_boot=1,4,16 width=0.5,1,2 alpha=0.1,0.3 beta=0.1,0.3"`` into a `Grid`.

    Entries are separated by spaces or ``;``; values by commas; ``START:STOP:NUM`` expands to
    ``numpy.linspace(START, STOP, NUM)`` (e.g. ``alpha=0.02:1:50``). Names missing from ``text``
    take the single values in ``fixed`` (``n_boot=``, ``width=``, ``alpha=``, ``beta=``; None
    means the default). A name both in ``text`` and given in ``fixed`` is an error.
    """
    values: dict[str, tuple] = {}
    for entry in filter(None, re.split(r"[\s;]+", (text or "").strip())):
        name, eq, rhs = entry.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in GRID_NAMES:
            raise ValueError(f"bad --grid entry {entry!r}; expected NAME=V1,V2,... with NAME one "
                             f"of {', '.join(GRID_NAMES)}")
        if name in values:
            raise ValueError(f"{name} appears twice in --grid")
        values[name] = _parse_values(name, rhs)
    for name, value in fixed.items():
        if name not in GRID_NAMES:
            raise TypeError(f"unknown grid name {name!r}")
        if value is None:
            continue
        if name in values:
            raise ValueError(f"{name} is given both on its own and in --grid; give it once")
        values[name] = (int(value),) if name == "n_boot" else (float(value),)
    return Grid(**values)


# ============================================================================ evaluation


@functools.partial(jax.jit, static_argnames=("patch", "roi_pixels"))
def _evaluate(attn, z, p, lfdr, map_z, map_pi0, weights, alphas, betas, z_th, *, patch,
              roi_pixels):
    n, t = attn.shape[0], alphas.shape[0]

    def tile(a):
        return jnp.broadcast_to(a[:, None], (n, t) + a.shape[1:])

    map_p = regularize.p_threshold(tile(attn), tile(z), tile(p), jnp.broadcast_to(alphas, (n, t)),
                                   z_th, map_ndim=2)
    map_l = regularize.lfdr_threshold(tile(attn), tile(z), tile(lfdr),
                                      jnp.broadcast_to(betas, (n, t)), z_th, map_ndim=2)
    after = jnp.concatenate([map_p, map_l, map_pi0[:, None], map_z[:, None]], axis=1)

    def one(before, stack, w, z1, p1):
        perc_b, perc_a = metrics.mean_percentile_in_roi(before, stack, w, patch)
        counts = jnp.round(w * patch * patch).astype(jnp.int32).reshape(-1)
        roi_p = jnp.repeat(p1.reshape(-1), counts, total_repeat_length=roi_pixels)
        return {
            "mean_z_roi": simulate.mean_z_in_roi(z1, w),
            "perc_before": perc_b, "perc_after": perc_a,
            "nonzero_before": metrics.nonzero_percent_in_roi(before, w),
            "nonzero_after": metrics.nonzero_percent_in_roi(stack, w),
            "sens": metrics.sensitivity(before, stack, w),
            "spec": metrics.specificity(before, stack, w),
            "srmsd_roi": stats.srmsd(roi_p),
        }

    return jax.vmap(one)(attn, after, weights, z, p)


def evaluate(attn: Any, z: Any, p: Any, lfdr: Any, map_z: Any, map_pi0: Any, roi_weights: Any,
             thresholds: Sequence[tuple[float, float]], *, patch: int, roi_pixels: int,
             z_th: float = 0.0) -> dict[str, np.ndarray]:
    """Simulation-study metrics of a batch of ARB results, at several threshold pairs.

    The p- and LFDR-maps are rebuilt from the same ``attn``, ``z``, ``p``, ``lfdr`` for every
    ``(alpha, beta)`` (no new forward pass); the z- and π₀-maps do not depend on them.

    Args:
      attn, z, p, lfdr, map_z, map_pi0: (N, h, w) from `arb_jax.pipeline.regularize_attention`
        (``.attn``, ``.z``, ``.p``, ``.lfdr``, ``.maps["z"]``, ``.maps["pi0"]``).
      roi_weights: (N, h, w) ROI fraction of each patch (`arb_jax.simulate.roi_patch_weights`).
      thresholds: T pairs ``(alpha, beta)``.
      patch: patch size p in pixels. roi_pixels: pixels in the ROI (``size**2``).
      z_th: the z-threshold every rule starts from (the pipeline's ``z_th``).

    Returns:
      numpy arrays: ``mean_z_roi``, ``perc_before``, ``nonzero_before``, ``srmsd_roi`` (N,); and
      per method m in `METHODS`: ``perc_after_m``, ``nonzero_after_m``, ``sens_m``, ``spec_m``
      (N, T) (for "pi0" and "z" the T columns are equal).
    """
    if not thresholds:
        raise ValueError("thresholds is empty")
    alphas = jnp.asarray([a for a, _ in thresholds], jnp.float32)
    betas = jnp.asarray([b for _, b in thresholds], jnp.float32)
    out = jax.device_get(_evaluate(
        jnp.asarray(attn), jnp.asarray(z), jnp.asarray(p), jnp.asarray(lfdr), jnp.asarray(map_z),
        jnp.asarray(map_pi0), jnp.asarray(roi_weights, jnp.float32), alphas, betas,
        jnp.float32(z_th), patch=int(patch), roi_pixels=int(roi_pixels)))
    t = len(thresholds)
    res = {k: np.asarray(out[k]) for k in ("mean_z_roi", "perc_before", "nonzero_before",
                                            "srmsd_roi")}
    cols = {"p": slice(0, t), "lfdr": slice(t, 2 * t), "pi0": slice(2 * t, 2 * t + 1),
            "z": slice(2 * t + 1, 2 * t + 2)}
    for m, sl in cols.items():
        for name in ("perc_after", "nonzero_after", "sens", "spec"):
            v = np.asarray(out[name])[:, sl]
            res[f"{name}_{m}"] = np.broadcast_to(v, (v.shape[0], t))
    return res


# ============================================================================ CSV rows


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, np.floating):
        return str(value)  # shortest repr that round-trips in the value's own precision
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"cannot write {type(value).__name__} to the CSV")


def row_key(row: dict[str, str]) -> tuple:
    """The identity of a row: ``(image_id, seed, n_boot, width, alpha, beta)``, typed."""
    return (row["image_id"], int(row["seed"]), int(row["n_boot"]), float(row["width"]),
            float(row["alpha"]), float(row["beta"]))


def read_rows(path: str | Path, *, drop_partial: bool = True) -> list[dict[str, str]]:
    """The rows of a sweep CSV as dicts of strings (header `COLUMNS`).

    A last line without its newline, or with the wrong number of fields (a write cut short by a
    kill), is dropped when ``drop_partial``; anywhere else a malformed line raises ValueError.
    """
    path = Path(path)
    data = path.read_bytes()
    if drop_partial and data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    lines = list(reader)
    if not lines:
        return []
    if tuple(lines[0]) != COLUMNS:
        raise ValueError(f"{path} does not have the columns of this version's sweep rows "
                         f"(first line {','.join(lines[0])[:80]!r}); write to another --out")
    rows = []
    for i, fields in enumerate(lines[1:], start=2):
        if len(fields) != len(COLUMNS):
            if drop_partial and i == len(lines):
                break
            raise ValueError(f"{path}:{i}: {len(fields)} fields, expected {len(COLUMNS)}")
        rows.append(dict(zip(COLUMNS, fields, strict=True)))
    return rows


class RowWriter:
    """Appends sweep rows to a CSV, durably, resuming a file that is already there.

    On open: a missing or empty file gets the header; an existing file is read (`read_rows`),
    a partial last line (from a kill) is cut off the file, and the keys of its rows are in
    ``done``. ``write(rows)`` appends, flushes and fsyncs: a row on disk is never lost, and the
    file only ever ends with a partial line if the process dies inside ``write``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[tuple] = set()
        header_ok = False
        if self.path.exists() and self.path.stat().st_size:
            data = self.path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            lines = complete.count(b"\n")
            rows = read_rows(self.path)
            header_ok = lines >= 1
            keep = complete
            if header_ok and len(rows) < lines - 1:  # last complete line malformed: drop it
                keep = complete[: complete.rstrip(b"\n").rfind(b"\n") + 1]
            if len(keep) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
                    os.fsync(f.fileno())
            self.done = {row_key(r) for r in rows}
            self.dropped = len(data) - len(keep)
        else:
            self.dropped = 0
        self._file = open(  # noqa: SIM115 (closed by close() / __exit__)
            self.path, "a" if header_ok else "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        if not header_ok:
            self._csv.writerow(COLUMNS)
            self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows (dicts with every column of `COLUMNS`), then flush and fsync."""
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow([_fmt(row[c]) for c in COLUMNS])
        self._file.write(buf.getvalue())
        self._sync()
        self.done.update(row_key({c: _fmt(row[c]) for c in KEY_COLUMNS}) for row in rows)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ============================================================================ the sweep


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs (the ``arb sweep`` options).

    data: image folder or ``tfds:NAME[:SPLIT]``. model: name or path (`arb_jax.load_vit`).
    out: results folder. noise: "square" | "diffuse"; noise_size: square side in pixels (None:
    ``round(size * 100 / 488)``, the reference's 100 px at 488). grid: n_boot × width runs and
    (alpha, beta) pairs. sampler, pvalue: ARB options (SPEC §2-3). z_filter: Appendix B bound on
    |mean z in ROI| (None: no filter). limit: at most this many images. seed: base seed. batch:
    images per device per step (the last batch is padded: every step has the same shapes, so
    results are bit-identical for the same ``batch`` on any number of devices, and after a
    resume; another ``batch`` changes them by float32 rounding). size: images are resized to
    ``size × size`` pixels (None: the model's size). dtype: "float32" | "bfloat16". host,
    n_hosts: this host's share ``ids[host::n_hosts]``; distributed: take them from
    ``jax.distributed.initialize()``. workers: loader threads. boot_chunk: null forwards per
    step (None: all).
    """

    data: str
    model: str = "demo"
    out: str = "results"
    noise: str = "square"
    noise_size: int | None = None
    grid: Grid = Grid()
    sampler: str = "normal"
    pvalue: str = "upper"
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

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"unknown noise {self.noise!r}; choose one of {NOISES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if self.pvalue not in PVALUES:
            raise ValueError(f"unknown p-value method {self.pvalue!r}; choose one of {PVALUES}")
        for name in ("noise_size", "limit", "batch", "size", "workers", "boot_chunk"):
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
            raise ValueError("--distributed takes the host from jax.distributed; "
                             "do not give --host")


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """What a sweep did: rows path, rows written now, rows already there, images failed."""

    rows_path: Path
    written: int
    skipped: int
    failed: int
    images: int


def _config_record(cfg: SweepConfig, size: int, noise_size: int) -> dict[str, Any]:
    data = cfg.data if cfg.data.startswith("tfds:") else str(Path(cfg.data).expanduser().resolve())
    return {"data": data, "model": cfg.model, "size": size, "noise": cfg.noise,
            "noise_size": noise_size, "sampler": cfg.sampler, "pvalue": cfg.pvalue,
            "z_filter": cfg.z_filter, "dtype": cfg.dtype, "limit": cfg.limit}


def _check_config(out: Path, record: dict[str, Any]) -> None:
    """Refuse to mix rows of different sweeps in one folder; write ``sweep.json`` atomically."""
    path = out / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {path}: {e}") from e
        diff = [f"{k}: {old.get(k)!r} there, {record[k]!r} now" for k in CHECKED_CONFIG
                if old.get(k) != record[k]]
        if diff:
            raise ValueError(f"{out} holds a sweep with other settings ({'; '.join(diff)}); "
                             "resume with the same settings or write to another --out")
        return
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def _roi_corner(roi: np.ndarray) -> tuple[int, int]:
    rows, cols = np.any(roi, axis=1), np.any(roi, axis=0)
    return int(np.argmax(rows)), int(np.argmax(cols))


def run_sweep(cfg: SweepConfig, *, progress: bool = False,
              log: Callable[[str], None] = print) -> SweepSummary:
    """Run (or resume) the simulation study; rows go to ``OUT/rows.csv`` (``rows.host{k}.csv``).

    For each image (in `folder_items` order, this host's share, not yet done): resize to
    ``size × size``, paste noise with the image's noise key, run ARB once per ``(n_boot, width)``
    of the grid with the image's ARB key, score each run at every ``(alpha, beta)`` pair
    (`evaluate`), and append the rows, one batch at a time. Bad images are reported with ``log``
    and skipped (a later resume tries them again). ``log`` gets notes and those errors (lines
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

    base = loading.load_vit(cfg.model, dtype=cfg.dtype, progress=progress)
    patch = base.config.patch
    size = cfg.size or min(base.image_size)
    if size % patch:
        raise ValueError(f"--size {size} is not a multiple of the model's patch ({patch} px)")
    noise_size = cfg.noise_size or max(1, round(size * 100 / 488))
    if noise_size > size:
        raise ValueError(f"--noise-size {noise_size} is larger than the image ({size} px)")
    vit = base.at_size(size)

    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, _config_record(cfg, size, noise_size))
    rows_path = out / (f"rows.host{host}.csv" if sharded else "rows.csv")
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
                    rows = _sweep_batch(vit, good, cfg, batch, noise_size, thresholds, done, mesh)
                    writer.write(rows)
                    written += len(rows)
                bar.update(len(chunk))
        finally:
            bar.close()
    return SweepSummary(rows_path, written, before, failed, seen[0])


def _sweep_batch(vit: Any, good: list[tuple[Item, np.ndarray]], cfg: SweepConfig, batch: int,
                 noise_size: int, thresholds: list[tuple[float, float]], done: set[tuple],
                 mesh: Any) -> list[dict[str, Any]]:
    """Noise, ARB runs and metrics for one batch; the rows not yet done."""
    patch = vit.config.patch
    n = len(good)
    keys = jax.vmap(jax.random.split)(jnp.stack([image_key(cfg.seed, it.image_id)
                                                 for it, _ in good]))
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
        wanted = [[(it.image_id, cfg.seed, n_boot, width, a, b) not in done for a, b in thresholds]
                  for it, _ in good]
        if not any(map(any, wanted)):
            continue
        res = pipeline.regularize_attention(
            vit, x, arb_keys, n_boot=n_boot, sampler=cfg.sampler, width=width,
            pvalue=cfg.pvalue, boot_chunk=cfg.boot_chunk, mesh=mesh)
        ev = evaluate(res.attn, res.z, res.p, res.lfdr, res.maps["z"], res.maps["pi0"], weights,
                      thresholds, patch=patch, roi_pixels=noise_size * noise_size,
                      z_th=res.options.z_th)
        passed = np.asarray(simulate.passes_z_filter(ev["mean_z_roi"], cfg.z_filter))
        pi0 = np.asarray(res.pi0)
        for i, (item, _) in enumerate(good):
            for j, (alpha, beta) in enumerate(thresholds):
                if not wanted[i][j]:
                    continue
                row = {"image_id": item.image_id, "class": item.label, "seed": cfg.seed,
                       "n_boot": n_boot, "width": float(width), "alpha": float(alpha),
                       "beta": float(beta), "noise": cfg.noise, "noise_size": noise_size,
                       "roi_row": corners[i][0], "roi_col": corners[i][1],
                       "mean_z_roi": ev["mean_z_roi"][i], "passed": bool(passed[i]),
                       "pi0": pi0[i], "perc_before": ev["perc_before"][i],
                       "nonzero_before": ev["nonzero_before"][i], "srmsd_roi": ev["srmsd_roi"][i]}
                for m in METHODS:
                    for name in ("perc_after", "nonzero_after", "sens", "spec"):
                        row[f"{name}_{m}"] = ev[f"{name}_{m}"][i, j]
                rows.append(row)
    return rows


# ============================================================================ command line

EPILOG = """examples:
  arb sweep imagenette2/val --model dino_vits8 --size 488 --out results/square
  arb sweep tfds:imagenette/320px-v2:validation --model dino_vits8 --out results/tfds
  arb sweep photos/ --model demo --noise diffuse --limit 100 --out results/diffuse
  arb sweep photos/ --out results/grid --grid "n_boot=1,4,16 width=0.5,1,2"
  arb sweep photos/ --out results/fig5 --grid "alpha=0.02:1:50 beta=0.02:1:50"
  arb sweep photos/ --out results/pod --distributed      # on every host of a TPU pod / SLURM job

DATA is an image folder (class/*.JPEG → class = folder name; images directly inside → class "")
or tfds:NAME[/CONFIG][:SPLIT] (needs: pip install 'arb-jax[tfds]'). Rows are appended to
RESULTS/rows.csv as they are produced; run the same command again to resume an interrupted sweep
(done images are skipped). Each image's noise and bootstrap come from fold_in(key(SEED),
crc32(image id)), so results do not depend on batching, devices or hosts. --grid runs ARB once per
(n_boot, width) and scores every run at the (alpha, beta) pairs. Summarise with: arb report RESULTS.
"""


def _z_filter(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _host(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected k/K with 0 <= k < K, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb sweep`` (options inherit ``common``: --quiet, --debug)."""
    p = subparsers.add_parser("sweep", parents=[common], epilog=EPILOG,
                              help="the simulation study: noise in, ARB, one CSV row per image",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="image folder or tfds:NAME[:SPLIT]")
    p.add_argument("--model", default="demo",
                   help="name or path (default: demo, this project's ViT)")
    p.add_argument("--out", required=True, metavar="RESULTS", help="results folder")
    p.add_argument("--noise", default="square", choices=NOISES)
    p.add_argument("--noise-size", type=int, default=None, metavar="PX",
                   help="side of the noise square (default: 100 px scaled from 488 to --size)")
    p.add_argument("--n-boot", type=int, default=None,
                   help="bootstrap images per input B (default 1)")
    p.add_argument("--width", type=float, default=None, help="width of the normal bootstrap (1)")
    p.add_argument("--sampler", default="normal", choices=SAMPLERS)
    p.add_argument("--pvalue", default="upper", choices=PVALUES)
    p.add_argument("--p", dest="alpha", type=float, default=None, help="p-value threshold α (0.3)")
    p.add_argument("--lfdr", dest="beta", type=float, default=None, help="LFDR threshold β (0.3)")
    p.add_argument("--z-filter", type=_z_filter, default=1.0, metavar="BOUND|none",
                   help="keep images with |mean z in ROI| <= BOUND (default 1.0; none: keep all)")
    p.add_argument("--grid", default=None, metavar="SPEC",
                   help='e.g. "n_boot=1,4,16 width=0.5,1,2 alpha=0.1,0.3 beta=0.1,0.3"')
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8,
                   help="images per device per step (default 8); results are bit-identical for "
                        "the same --batch on any number of devices")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="images are resized to PX x PX (default: the model's size)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--boot-chunk", type=int, default=None, help="null forwards run at once")
    p.add_argument("--workers", type=int, default=None, help="image loading threads")
    p.add_argument("--distributed", action="store_true",
                   help="jax.distributed.initialize() from the environment; host k takes ids[k::K]")
    p.add_argument("--host", type=_host, default=None, metavar="k/K",
                   help="take share k of K without jax.distributed (e.g. a SLURM job array)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """A `SweepConfig` from parsed ``arb sweep`` arguments."""
    grid = parse_grid(args.grid, n_boot=args.n_boot, width=args.width, alpha=args.alpha,
                      beta=args.beta)
    host, n_hosts = args.host if args.host else (None, None)
    return SweepConfig(
        data=args.data, model=args.model, out=args.out, noise=args.noise,
        noise_size=args.noise_size, grid=grid, sampler=args.sampler, pvalue=args.pvalue,
        z_filter=args.z_filter, limit=args.limit, seed=args.seed, batch=args.batch,
        size=args.size, dtype=args.dtype, host=host, n_hosts=n_hosts,
        distributed=args.distributed, workers=args.workers, boot_chunk=args.boot_chunk)


def run(args: argparse.Namespace) -> int:
    """``arb sweep``: run or resume; 0 on success, 1 if some images could not be read."""
    cfg = config_from_args(args)
    quiet = getattr(args, "quiet", False)

    def log(msg: str) -> None:
        if msg.startswith("arb: error:"):
            print(msg, file=sys.stderr)
        elif not quiet:
            print(msg)

    summary = run_sweep(cfg, progress=not quiet, log=log)
    if not quiet:
        print(f"arb: sweep: {summary.written} rows written to {summary.rows_path} "
              f"({summary.skipped} already there, {summary.failed} images failed)")
    if summary.failed:
        print(f"arb: error: {summary.failed} images could not be read (see above)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m arb_jax.sweep ...`` (the same as ``arb sweep ...``)."""
    from arb_jax.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
