"""``arb finetune``: a linear head on a frozen ViT (`arb_jax.study.finetune.finetune`)."""

from __future__ import annotations

import argparse

from arb_jax.checkpoints import loading
from arb_jax.cli.common import MAX_SIDE, HelpFormatter, count, fraction, positive_float, seed
from arb_jax.study.finetune import DEFAULT_LR, FinetuneError, finetune

EPILOG = """examples:
  arb finetune imagenette2-320/ --model dino_vits8 --out heads/vits8   # the paper's backbone
  arb finetune photos/ --model demo --out heads/demo --epochs 20 --size 112
  arb finetune tfds:imagenette/320px-v2 --model dino_vits8 --out heads/tfds
  arb finetune photos/ --model ./converted_vits8 --out heads/x --resume --epochs 30

DATA is an image folder with one folder per class (CLASS/*.jpg), or with train/ and val/ folders
of class folders (the Imagenette layout); without val/ a stratified split by --seed holds out
--val-fraction of each class. The backbone is frozen: its CLS features are computed once and
cached in OUT/features.npz; a linear head is trained with Adam (softmax cross-entropy). A
checkpoint is written after every epoch (OUT/checkpoints); running the same command again
continues from the last one (more --epochs train further). Each epoch prints one line and adds
a row to OUT/metrics.csv. Load the result with arb_jax.load_vit(OUT) (ViT.logits, meta["classes"])
or pass --model OUT to the other commands.
"""


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb finetune`` (options inherit ``common``: --quiet, --debug)."""
    p = subparsers.add_parser(
        "finetune",
        parents=[common],
        epilog=EPILOG,
        help="train a linear head on a frozen ViT (the paper's backbone)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="image folder (CLASS/*.jpg) or tfds:NAME[:SPLIT]")
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME|PATH",
        help="backbone: a name (dino_vits8, demo, ...) or a path (see arb models)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--epochs", type=count("--epochs", 1, 100_000), default=10, help="total epochs (default 10)"
    )
    p.add_argument(
        "--lr",
        type=positive_float("--lr"),
        default=DEFAULT_LR,
        help=f"Adam learning rate (default {DEFAULT_LR:g}, the paper's)",
    )
    p.add_argument(
        "--batch", type=count("--batch", 1, 65_536), default=64, help="minibatch size (default 64)"
    )
    p.add_argument(
        "--size",
        type=count("--size", 1, MAX_SIDE),
        default=None,
        metavar="PX",
        help="images are resized to PX x PX (default: the model's size)",
    )
    p.add_argument("--seed", type=seed, default=0, help="init, minibatch order and split (0)")
    p.add_argument(
        "--val-fraction",
        type=fraction("--val-fraction"),
        default=0.2,
        metavar="F",
        help="share of each class held out when DATA has no val/ folder (0.2)",
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype of the backbone"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="require a previous run in --out to continue (it is continued anyway when its settings match)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb finetune``: train (or resume) and write the model; 0 on success."""
    quiet = getattr(args, "quiet", False)
    if args.size is not None and args.size < 1:
        raise FinetuneError(f"--size must be a positive number of pixels, got {args.size}")
    vit = loading.load_vit(args.model, image_size=args.size, dtype=args.dtype, progress=not quiet)
    if vit.meta.get("random_init") and not quiet:
        print(f"arb: finetune: {args.model} is a RANDOM-INIT fixture, not a trained backbone")
    result = finetune(
        vit,
        args.data,
        args.out,
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        val_fraction=args.val_fraction,
        resume=args.resume,
        model=args.model,
        progress=not quiet,
        log=None if quiet else print,
    )
    if not quiet:
        last = result.history[-1] if result.history else {}
        acc = last.get("val_acc")
        acc_text = f", val acc {100 * acc:.1f}%" if acc is not None else ""
        print(
            f"arb: finetune: {len(result.classes)} classes{acc_text}; model written to "
            f"{result.out_dir} (load_vit({str(result.out_dir)!r}))"
        )
    return 0
