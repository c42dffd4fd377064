"""``arb photos OUT``: the offline real photos as a class-folder data set (`arb_jax.study.photos`)."""

from __future__ import annotations

import argparse

from arb_jax.cli.common import HelpFormatter
from arb_jax.study.photos import write_photo_dataset

EPILOG = """example:
  arb photos data/photos          # then: arb sweep data/photos --out results/photos

Writes OUT/<class>/<name>.png for the 20 real photos that ship with scikit-image and
scikit-learn (classes: skimage_colour, sklearn_colour, skimage_grey). Nothing is downloaded.
"""


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb photos``."""
    p = subparsers.add_parser(
        "photos",
        parents=[common],
        epilog=EPILOG,
        help="write the offline real photos as a class-folder data set",
        formatter_class=HelpFormatter,
    )
    p.add_argument("out", metavar="OUT", help="data set folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb photos OUT``."""
    counts = write_photo_dataset(args.out)
    if not args.quiet:
        print(
            f"arb: wrote {sum(counts.values())} photos to {args.out} "
            f"({', '.join(f'{c}: {n}' for c, n in counts.items())})"
        )
    return 0
