"""The ``arb`` command line: one module per command; nothing outside this package imports it.

`main` parses and runs a command line; `entry` is the installed ``arb`` program.
"""

from arb_jax.cli.common import CLIError
from arb_jax.cli.main import build_parser, entry, main

__all__ = ["CLIError", "build_parser", "entry", "main"]
