"""Range-checked option types for the command lines (argparse ``type=``): each refuses a value
out of its range with a message argparse prefixes with the option's name."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["MAX_N_BOOT", "MAX_SEED", "MAX_SIDE", "count", "fraction", "positive_float", "seed"]

MAX_N_BOOT = 100_000
"""The most bootstrap images per input an option accepts (memory stays bounded by --boot-chunk;
the time is (1 + B) forwards)."""

MAX_SIDE = 8192
"""The largest image side in pixels an option accepts (``arb_jax.io.images.MAX_PIXELS`` is
8192²)."""

MAX_SEED = 2**63 - 1
"""Seeds are 0 … 2⁶³ − 1, what ``jax.random.key`` accepts."""


def count(option: str, lo: int = 1, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lo, hi]`` (argparse names ``option`` in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def seed(text: str) -> int:
    """An argparse ``type`` for ``--seed``: an integer in ``[0, MAX_SEED]``."""
    return count("--seed", 0, MAX_SEED)(text)


def positive_float(option: str) -> Callable[[str], float]:
    """An argparse ``type``: a finite number > 0; the error names ``option``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (value > 0 and value < float("inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value

    return parse


def fraction(option: str) -> Callable[[str], float]:
    """An argparse ``type``: a number in ``[0, 1]``; the error names ``option``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{option} must lie in [0, 1], got {text}")
        return value

    return parse
