"""``arb train-demo``: retrain the shipped demo ViT (`arb_jax.demo.train.train`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from arb_jax.cli.common import HelpFormatter, count, seed
from arb_jax.demo.train import SMOKE, TrainSettings, save_demo, train

EPILOG = """examples:
  arb train-demo --out my_demo/            # the full recipe (about 8 minutes on 2 CPU cores)
  arb train-demo --smoke --out /tmp/x      # a tiny configuration that runs in seconds

The model is NOT DINO: a small ViT trained by this project on procedural composites of
scikit-image photographs (objects pasted on textures, classified by object). The shipped copy
lives in arb_jax/assets/; pass --out arb_jax/assets to replace it deliberately.
"""


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb train-demo`` (options inherit ``common``: --quiet, --debug)."""
    p = subparsers.add_parser(
        "train-demo",
        parents=[common],
        epilog=EPILOG,
        help="train the embedded demo ViT (not DINO) offline",
        description="Train the embedded demo ViT (NOT DINO) on procedural composites of "
        "scikit-image photographs, offline, and write demo_vit.msgpack + .json.",
        formatter_class=HelpFormatter,
    )
    d = TrainSettings()
    p.add_argument(
        "--steps",
        type=count("--steps", 1, 10_000_000),
        default=None,
        help=f"optimisation steps (default {d.steps})",
    )
    p.add_argument("--out", default="demo_vit", help="output folder (default: ./demo_vit)")
    p.add_argument("--seed", type=seed, default=d.seed, help=f"base seed (default {d.seed})")
    p.add_argument("--smoke", action="store_true", help="tiny configuration that runs in seconds (for tests)")
    p.add_argument(
        "--log-every",
        type=count("--log-every", 0),
        default=0,
        help="evaluate on 256 held-out images every N steps",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb train-demo``: train, evaluate, write the files, print the figures. Returns 0."""
    base = SMOKE if args.smoke else TrainSettings()
    changes: dict[str, Any] = {"seed": args.seed}
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        changes["steps"] = args.steps
        changes["warmup_steps"] = min(base.warmup_steps, max(0, args.steps // 10))
    settings = dataclasses.replace(base, **changes)
    config, params, record = train(settings, progress=not args.quiet, log_every=args.log_every)
    weights, meta = save_demo(args.out, config, params, record)
    ho = record["held_out"]
    print(
        f"trained {settings.steps} steps in {record['wall_time_s']:.0f} s; held-out "
        f"accuracy {ho['accuracy']:.3f}, attention-on-object ratio "
        f"{ho['attention_on_object_ratio']:.2f} (n={ho['n']}); wrote {weights} and {meta}"
    )
    return 0
