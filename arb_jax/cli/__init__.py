"""The ``arb`` command line: one module per command; nothing outside this package imports it."""

from arb_jax.cli.main import CLIError, build_parser, entry, main

__all__ = ["CLIError", "build_parser", "entry", "main"]
