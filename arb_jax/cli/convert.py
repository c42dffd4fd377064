"""``arb convert SRC DST``: a PyTorch / safetensors checkpoint → Orbax params + ``arb_model.json``.

The arguments and the run live with the converter (`arb_jax.convert.convert`), which
``python -m arb_jax.convert`` (and ``python -m weights_convert``) also runs without this package.
"""

from __future__ import annotations

import argparse

from arb_jax.cli.common import HelpFormatter
from arb_jax.convert.convert import DESCRIPTION, EPILOG, add_arguments
from arb_jax.convert.convert import run as run_convert


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb convert`` (options inherit ``common``: --quiet, --debug)."""
    p = sub.add_parser(
        "convert",
        parents=[common],
        help="PyTorch/safetensors checkpoint -> Orbax + JSON",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run_convert)
