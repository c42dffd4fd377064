"""``arb photo-study``: the simulation study on the offline real photos
(`arb_jax.study.photo_study.run_study`)."""

from __future__ import annotations

import argparse

from arb_jax.cli.common import HelpFormatter, count
from arb_jax.study.photo_study import RUNS, run_study

EPILOG = """example:
  arb photo-study --out results/photo_study --figures docs/real_model_study   # ~40 min, 2 cores
  arb photo-study --out results/photo_study --placements 10 --model dino_vits8

Writes DIR/data (the photos), DIR/RUN/{rows.csv,report/,report_all/} for the runs square_224,
square_224_width, diffuse_224, square_448, diffuse_448, and DIR/study.md. Rerun the same
command to resume.
"""


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb photo-study``."""
    p = subparsers.add_parser(
        "photo-study",
        parents=[common],
        epilog=EPILOG,
        help="the simulation study on the offline real photos",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="study folder")
    p.add_argument(
        "--model", default="imgfocus_dinov2_vits14", help="name or path (default: imgfocus_dinov2_vits14)"
    )
    p.add_argument(
        "--placements",
        type=count("--placements", 1, 10_000),
        default=5,
        metavar="K",
        help="noise placements per photo (default 5)",
    )
    p.add_argument(
        "--batch", type=count("--batch", 1, 4096), default=4, help="images per ARB call (default 4)"
    )
    p.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="also copy the study's main figures and study.md to DIR",
    )
    p.add_argument(
        "--runs",
        default=None,
        metavar="NAMES",
        help=f"comma-separated subset of {', '.join(r.name for r in RUNS)}",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb photo-study``."""
    runs = RUNS
    if args.runs:
        wanted = [n.strip() for n in args.runs.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {r.name for r in RUNS})
        if unknown:
            raise ValueError(f"unknown study runs {unknown}; known: {[r.name for r in RUNS]}")
        runs = tuple(r for r in RUNS if r.name in wanted)
    path = run_study(
        args.out,
        model=args.model,
        placements=args.placements,
        batch=args.batch,
        runs=runs,
        progress=not args.quiet,
        figures=args.figures,
        log=(lambda m: None) if args.quiet else print,
    )
    if not args.quiet:
        print(f"arb: study summary -> {path}")
    return 0
