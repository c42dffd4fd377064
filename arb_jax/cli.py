"""The ``arb`` command line: regularize, models, convert, train-demo, sweep, report, finetune.

Errors a user can cause print one line ``arb: error: …`` and exit with status 1 (``--debug``
shows the traceback). In a batch, a bad image is reported and the others are still processed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from arb_jax import __version__

EPILOG_REGULARIZE = """examples:
  arb regularize skimage:astronaut --inject-noise 40 --out out/
  arb regularize photos/ --model dino_vits8 --size 488 --n-boot 16
  arb regularize 'shots/*.jpg' --model ./converted_vits8 --sampler pixel --p 0.1 --lfdr 0.2

IMAGE is a file, a folder, a glob, or skimage:NAME (a photo that ships with scikit-image:
astronaut, chelsea, coffee, rocket, ...). Without --model the demo ViT trained by this project
is used (NOT DINO). The ARB key of image i is fold_in(key(SEED), i), as in the Python API; the
noise square of --inject-noise uses split(fold_in(key(SEED), i))[1].
"""


class CLIError(Exception):
    """An error to report as one line (no traceback)."""


def _add_regularize(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("regularize", parents=[common], help="ARB on images: figures (.png) and arrays (.npz)",
                       epilog=EPILOG_REGULARIZE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="demo", help="name or path (default: demo, this project's ViT)")
    p.add_argument("--size", type=int, default=None,
                   help="short side in pixels (default: the model's training size)")
    p.add_argument("--n-boot", type=int, default=1, help="bootstrap images per input (B)")
    p.add_argument("--boot-chunk", type=int, default=None, help="null forwards run at once")
    p.add_argument("--sampler", default="normal", choices=["normal", "pixel", "patch", "uniform"])
    p.add_argument("--width", type=float, default=1.0, help="width of the normal bootstrap")
    p.add_argument("--p", dest="alpha", type=float, default=0.3, help="p-value threshold α")
    p.add_argument("--lfdr", dest="beta", type=float, default=0.3, help="LFDR threshold β")
    p.add_argument("--pvalue", default="upper", choices=["upper", "plus_one", "two_sided", "attnreg"])
    p.add_argument("--heads", action="store_true", help="also store per-head maps")
    p.add_argument("--inject-noise", type=int, default=None, metavar="PX",
                   help="paste a PX-sided square of Gaussian noise (SPEC §5) and outline it")
    p.add_argument("--out", default="arb_out", help="output folder (default: arb_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.set_defaults(func=cmd_regularize)


def _read_inputs(items: Sequence[str]) -> tuple[list[tuple[str, object]], list[str]]:
    """([(name, path-or-array)], [error lines]) for files, folders, globs and skimage:NAME photos.

    Each argument is expanded on its own, so one bad argument is reported and the rest still run.
    Output names are file stems, made unique with a ``_2``, ``_3``, ... suffix.
    """
    from arb_jax import images

    found: list[tuple[str, object]] = []
    errors: list[str] = []
    photos = None
    for item in items:
        if item.startswith("skimage:"):
            name = item.split(":", 1)[1]
            photos = photos or images.sample_images()
            if name in photos:
                found.append((name, photos[name]))
            else:
                errors.append(f"{item}: unknown scikit-image photo {name!r}; known: {', '.join(photos)}")
            continue
        try:
            found.extend((Path(path).stem, Path(path)) for path in images.expand_paths([item]))
        except (images.ImageError, OSError) as exc:
            errors.append(str(exc))
    seen: dict[str, int] = {}
    unique = []
    for name, src in found:
        seen[name] = seen.get(name, 0) + 1
        unique.append((name if seen[name] == 1 else f"{name}_{seen[name]}", src))
    return unique, errors


def cmd_regularize(args: argparse.Namespace) -> int:
    import jax
    from tqdm import tqdm

    from arb_jax import images, loading, pipeline, plotting, simulate

    inputs, input_errors = _read_inputs(args.images)
    for line in input_errors:
        print(f"arb: error: {line}", file=sys.stderr)
    if not inputs:
        raise CLIError("no images to process")
    if args.model == loading.DEMO and not args.quiet:
        print("arb: using the demo ViT trained by this project on synthetic composites (not DINO); "
              "pass --model dino_vits8 for the real DINO")
    base = loading.load_vit(args.model, dtype=args.dtype, progress=not args.quiet)
    patch = base.config.patch
    size = args.size or min(base.image_size)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[tuple[int, int], object] = {}
    key = jax.random.key(args.seed)
    failures = len(input_errors)
    said_crop = False
    for i, (name, src) in enumerate(tqdm(inputs, desc="images", unit="img", disable=args.quiet)):
        t0 = time.perf_counter()
        try:
            if isinstance(src, Path):
                img, note = images.read_image(src)
                if note and not args.quiet:
                    tqdm.write(f"arb: {name}: converted to RGB ({note})")
            else:
                img = src
            x = images.prepare(img, size, patch)
            if not said_crop and not args.quiet and tuple(img.shape[:2]) != tuple(x.shape[:2]):
                tqdm.write(f"arb: images are resized to a short side of {size} px and centre-cropped "
                           f"to multiples of the patch ({patch} px)")
                said_crop = True
            hw = tuple(x.shape[:2])
            if hw not in models:
                models[hw] = base.at_size(hw)
            vit = models[hw]
            key_i = jax.random.fold_in(key, i)
            roi = None
            if args.inject_noise:
                if args.inject_noise > min(hw):
                    raise CLIError(f"--inject-noise {args.inject_noise} is larger than the image {hw}")
                noisy, roi = simulate.square_noise(jax.random.split(key_i)[1], x, args.inject_noise)
                x, roi = np.asarray(noisy), np.asarray(roi)
            res = pipeline.regularize_attention(
                vit, x[None], key_i[None], n_boot=args.n_boot, sampler=args.sampler,
                width=args.width, pvalue=args.pvalue, alpha=args.alpha, beta=args.beta,
                heads=args.heads, return_null=True, boot_chunk=args.boot_chunk)
            arrays = {k: v[0] if np.ndim(v) else v for k, v in res.to_numpy().items()}
            arrays["image"] = x
            if roi is not None:
                arrays["roi"] = roi
            np.savez_compressed(out_dir / f"{name}.npz", **arrays)
            zeroed = {m: 100.0 * float(np.mean(arrays[f"map_{m}"] == 0)) for m in ("p", "lfdr", "pi0")}
            pi0 = float(arrays["pi0"])
            title = (f"{name} — {vit.meta.get('name', args.model)}, B={args.n_boot}, "
                     f"{args.sampler} bootstrap, π₀={pi0:.2f}")
            plotting.plot_result(res, images=x[None], path=out_dir / f"{name}.png", roi=roi,
                                 title=title)
            dt = time.perf_counter() - t0
            if not args.quiet:
                tqdm.write(f"{name}: pi0={pi0:.3f} zeroed p={zeroed['p']:.0f}% "
                           f"lfdr={zeroed['lfdr']:.0f}% pi0={zeroed['pi0']:.0f}% ({dt:.1f} s) "
                           f"-> {out_dir / (name + '.png')}")
        except (CLIError, ValueError, OSError) as exc:
            if args.debug:
                raise
            failures += 1
            print(f"arb: error: {name}: {exc}", file=sys.stderr)
    return 1 if failures else 0


def cmd_models(args: argparse.Namespace) -> int:
    from arb_jax import hub, loading

    print(f"{'name':22s} {'cached':8s} source")
    print(f"{loading.DEMO:22s} {'shipped':8s} trained by this project on synthetic composites "
          "(arb_jax/assets/demo_vit.json); not DINO")
    for name, ck in hub.CHECKPOINTS.items():
        state = "yes" if hub.is_cached(name) else "no"
        print(f"{name:22s} {state:8s} {ck.url}")
    print(f"cache: {hub.cache_dir()}  (set ARB_CACHE to move it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arb", description="Attention Regularization by the Bootstrap for vision transformers.",
        epilog="Run 'arb COMMAND --help' for examples.")
    parser.add_argument("--version", action="version", version=f"arb-jax {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_regularize(sub, common)
    p = sub.add_parser("models", parents=[common], help="known checkpoints, their sources, and the cache",
                       epilog="example:\n  arb models", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_models)
    from weights_convert.convert import DESCRIPTION, EPILOG, add_arguments
    from weights_convert.convert import run as run_convert

    p = sub.add_parser("convert", parents=[common], help="PyTorch/safetensors checkpoint -> Orbax + JSON",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_convert)
    from arb_jax import finetune, report, sweep, train_demo

    for module in (sweep, report, finetune, train_demo):
        module.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("arb: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line unless --debug
        if debug:
            raise
        print(f"arb: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
