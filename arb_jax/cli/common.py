"""What the command modules share: the error a user can cause, reported as one line, and the
range-checked option types (`arb_jax.io.options`)."""

from __future__ import annotations

import argparse

from arb_jax.io.options import MAX_N_BOOT, MAX_SEED, MAX_SIDE, count, fraction, number, positive_float, seed

__all__ = [
    "MAX_N_BOOT",
    "MAX_SEED",
    "MAX_SIDE",
    "CLIError",
    "HelpFormatter",
    "count",
    "fraction",
    "number",
    "positive_float",
    "seed",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The epilog as written, and every option's default in its help line.

    "(default: X)" is appended unless the help already says "default" or the default is None
    or False (a flag that is off, or a value the help explains).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class CLIError(Exception):
    """An error to report as one line (no traceback)."""
