"""``arb sweep``: the simulation study from the command line (`arb_jax.study.sweep.run_sweep`)."""

from __future__ import annotations

import argparse
import math
import re
import sys

from arb_jax.cli.arb_options import add_arb_options, add_compute_options
from arb_jax.cli.common import MAX_N_BOOT, MAX_SIDE, HelpFormatter, count, fraction, positive_float, seed
from arb_jax.study.grid import parse_grid
from arb_jax.study.sweep import NOISES, SweepConfig, run_sweep

EPILOG = """examples:
  arb sweep imagenette2/val --model dino_vits8 --size 488 --out results/square
  arb sweep tfds:imagenette/320px-v2:validation --model dino_vits8 --out results/tfds
  arb sweep photos/ --model demo --noise diffuse --limit 100 --out results/diffuse
  arb sweep photos/ --out results/grid --grid "n_boot=1,4,16 width=0.5,1,2"
  arb sweep photos/ --out results/fig5 --grid "alpha=0.02:1:50 beta=0.02:1:50"
  arb sweep photos/ --out results/pod --distributed      # on every host of a TPU pod / SLURM job
  arb sweep photos/ --model dino_vits8 --preset attnreg --out results/authors   # their pipeline

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
    p = subparsers.add_parser(
        "sweep",
        parents=[common],
        epilog=EPILOG,
        help="the simulation study: noise in, ARB, one CSV row per image",
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="image folder or tfds:NAME[:SPLIT]")
    p.add_argument("--model", default="demo", help="name or path (default: demo, this project's ViT)")
    p.add_argument("--out", required=True, metavar="RESULTS", help="results folder")
    p.add_argument(
        "--noise",
        default="square",
        choices=NOISES,
        help="square: a square of Gaussian noise at a random place; diffuse: a smooth random blob "
        "of the same noise (the paper's Appendix G)",
    )
    p.add_argument(
        "--noise-size",
        type=count("--noise-size", 1, MAX_SIDE),
        default=None,
        metavar="PX",
        help="side of the noise square (default: 100 px scaled from 488 to --size)",
    )
    p.add_argument(
        "--n-boot",
        type=count("--n-boot", 1, MAX_N_BOOT),
        default=None,
        help=f"bootstrap images per input B (default 1, at most {MAX_N_BOOT})",
    )
    p.add_argument(
        "--width",
        type=positive_float("--width"),
        default=None,
        help="width w of the normal bootstrap (default 1)",
    )
    add_arb_options(p, resize=False)
    add_compute_options(p)
    p.add_argument(
        "--p", dest="alpha", type=fraction("--p"), default=None, help="p-value threshold alpha (default 0.3)"
    )
    p.add_argument(
        "--lfdr", dest="beta", type=fraction("--lfdr"), default=None, help="LFDR threshold beta (default 0.3)"
    )
    p.add_argument(
        "--z-filter",
        type=_z_filter,
        default=1.0,
        metavar="BOUND|none",
        help="keep images with |mean z in ROI| <= BOUND (default 1.0; none: keep all)",
    )
    p.add_argument(
        "--grid",
        default=None,
        metavar="SPEC",
        help='e.g. "n_boot=1,4,16 width=0.5,1,2 alpha=0.1,0.3 beta=0.1,0.3"',
    )
    p.add_argument("--limit", type=count("--limit"), default=None, metavar="N", help="at most N images")
    p.add_argument(
        "--placements",
        type=count("--placements", 1, 10_000),
        default=1,
        metavar="K",
        help="noise placements per image, each a row with its own key (default 1)",
    )
    p.add_argument(
        "--gallery",
        type=count("--gallery", 0, 10_000),
        default=12,
        metavar="N",
        help="keep the maps of the first N images in OUT/gallery, for the report (default 12; 0: none)",
    )
    p.add_argument("--seed", type=seed, default=0, help="base seed, 0 … 2**63 - 1")
    p.add_argument(
        "--batch",
        type=count("--batch", 1, 4096),
        default=8,
        help="images per device per step (default 8); results are bit-identical for "
        "the same --batch on any number of devices",
    )
    p.add_argument(
        "--size",
        type=count("--size", 1, MAX_SIDE),
        default=None,
        metavar="PX",
        help="the short side in pixels: images are resized to PX x PX (the aspect ratio is not kept, "
        "as in the paper's study), then centre-cropped to multiples of the patch (default: the "
        "preset's, 488 for attnreg, else the model's size)",
    )
    p.add_argument("--workers", type=count("--workers", 1, 256), default=None, help="image loading threads")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() from the environment; host k takes ids[k::K]",
    )
    p.add_argument(
        "--host",
        type=_host,
        default=None,
        metavar="k/K",
        help="take share k of K without jax.distributed (e.g. a SLURM job array)",
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """A `SweepConfig` from parsed ``arb sweep`` arguments."""
    grid = parse_grid(args.grid, n_boot=args.n_boot, width=args.width, alpha=args.alpha, beta=args.beta)
    host, n_hosts = args.host if args.host else (None, None)
    return SweepConfig(
        data=args.data,
        model=args.model,
        out=args.out,
        noise=args.noise,
        noise_size=args.noise_size,
        grid=grid,
        preset=args.preset,
        sampler=args.sampler,
        pvalue=args.pvalue,
        pi0_method=args.pi0_method,
        lfdr_pi0=args.lfdr_pi0,
        lfdr_null=args.lfdr_null,
        z_th=args.z_th,
        z_filter=args.z_filter,
        limit=args.limit,
        seed=args.seed,
        batch=args.batch,
        size=args.size,
        dtype=args.dtype,
        host=host,
        n_hosts=n_hosts,
        distributed=args.distributed,
        workers=args.workers,
        boot_chunk=args.boot_chunk,
        placements=args.placements,
        gallery=args.gallery,
    )


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
        if cfg.z_filter is None:
            kept = "the mean-z filter is off (--z-filter none)"
        else:
            run = summary.filter_run
            at = f" at B = {run[0]}, width {run[1]:g}" if run else ""
            kept = (
                f"the mean-z filter (|mean z in ROI| <= {cfg.z_filter:g}) drops {summary.filtered} of "
                f"the {summary.scored} images in {summary.rows_path.name}{at} (arb report leaves them "
                "out; --all keeps them)"
            )
        print(
            f"arb: sweep: {summary.written} rows written to {summary.rows_path} "
            f"({summary.skipped} already there, {summary.failed} images failed); {kept}"
        )
    if summary.failed:
        print(f"arb: error: {summary.failed} images could not be read (see above)", file=sys.stderr)
        return 1
    return 0
