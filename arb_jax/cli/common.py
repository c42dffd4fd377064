"""What the command modules share: the error a user can cause, reported as one line, and the
range-checked option types (`arb_jax.io.options`)."""

from __future__ import annotations

from arb_jax.io.options import MAX_N_BOOT, MAX_SEED, MAX_SIDE, count, fraction, positive_float, seed

__all__ = ["MAX_N_BOOT", "MAX_SEED", "MAX_SIDE", "CLIError", "count", "fraction", "positive_float", "seed"]


class CLIError(Exception):
    """An error to report as one line (no traceback)."""
