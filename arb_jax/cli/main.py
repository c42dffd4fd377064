"""The ``arb`` program: the parser built from the command modules, and error reporting.

Commands (one module each in `arb_jax.cli`): regularize, models, convert, sweep, report,
finetune, train-demo, photos, photo-study. Errors a user can cause print one line
``arb: error: …`` and exit with status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from arb_jax import __version__
from arb_jax.cli import (
    convert,
    finetune,
    models,
    photo_study,
    photos,
    regularize,
    report,
    sweep,
    train_demo,
)
from arb_jax.io.text import escape

COMMANDS = (regularize, models, convert, sweep, report, finetune, train_demo, photos, photo_study)
"""Command modules, each with ``add_parser(subparsers, common)`` (it sets ``func``)."""


class UsageError(SystemExit):
    """A bad option or value, already reported in one line; exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error contract: a bad option or value is one line
    ``arb COMMAND: error: …`` (escaped) and exit status 1, not a usage block and status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {escape(message)} (see '{self.prog} --help')", file=sys.stderr)
        raise UsageError(1)


def build_parser() -> argparse.ArgumentParser:
    """The ``arb`` argument parser, with every command of `COMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        Parsed arguments carry ``func``, the command's ``run(args) -> int``.
    """
    parser = _Parser(
        prog="arb",
        description="Attention Regularization by the Bootstrap for vision transformers.",
        epilog="Run 'arb COMMAND --help' for examples.",
    )
    parser.add_argument("--version", action="version", version=f"arb-jax {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return int(e.code)
    debug = args.debug
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("arb: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line unless --debug
        if debug:
            raise
        print(f"arb: error: {escape(str(exc) or type(exc).__name__)}", file=sys.stderr)
        return 1


JAX_COMMANDS = ("regularize", "sweep", "finetune", "train-demo", "photo-study")  # that compile


def use_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache in ``<arb cache>/xla`` (``hub.cache_dir``), so
    a rerun (a resumed sweep, the same command on other images) skips the XLA compiles it did
    already. ``JAX_COMPILATION_CACHE_DIR``, when set, wins; ``JAX_ENABLE_COMPILATION_CACHE=false``
    turns it off; a cache folder that cannot be made leaves it off. Returns the folder in use
    (None: JAX's own setting)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None
    from arb_jax.checkpoints import hub

    path = hub.cache_dir() / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def entry() -> int:
    """The ``arb`` program: ``main`` on ``sys.argv``, with the persistent compilation cache on
    for the commands that compile."""
    argv = sys.argv[1:]
    if argv and argv[0] in JAX_COMMANDS:
        use_compilation_cache()
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry())
