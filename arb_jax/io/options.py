"""Range-checked option types for the command lines (argparse ``type=``): each refuses a value
out of its range with a message argparse prefixes with the option's name."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "MAX_N_BOOT",
    "MAX_SEED",
    "MAX_SIDE",
    "count",
    "fraction",
    "number",
    "number_or",
    "positive_float",
    "seed",
]

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


def number(
    option: str, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value > hi or value < lo or (lo_open and value == lo):
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"must lie in {left}{lo:g}, {hi:g}], got {text}")
        return value

    return parse


def number_or(
    option: str, names: tuple[str, ...], lo: float, hi: float, *, lo_open: bool = False
) -> Callable[[str], float | str]:
    """An argparse ``type``: one of ``names``, or a number as `number` checks it."""
    as_number = number(option, lo, hi, lo_open=lo_open)

    def parse(text: str) -> float | str:
        if text in names:
            return text
        try:
            float(text)
        except ValueError:
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(
                f"expected a number in {left}{lo:g}, {hi:g}] or one of {', '.join(names)}, got {text!r}"
            ) from None
        return as_number(text)

    return parse
