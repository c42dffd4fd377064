"""The sweep's grid and keys: which ARB runs and thresholds a sweep scores, and each image's key.

One ARB run per ``(n_boot, width)`` of the grid; every run is scored at each threshold pair
``(alpha, beta)`` on the same forward passes. An image's key is folded from the seed and
``zlib.crc32`` of its id, never from its position, so results do not depend on where the image
falls in a batch, on the host, or on an interruption.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import zlib
from typing import Any

import jax
import numpy as np

__all__ = ["GRID_NAMES", "Grid", "image_key", "parse_grid"]

GRID_NAMES = ("n_boot", "width", "alpha", "beta")


def image_key(seed: int, image_id: str) -> jax.Array:
    """The PRNG key of an image: ``fold_in(key(seed), crc32(image_id))``.

    Independent of the image's position in the data set, the batch, the host and the device
    count: a resumed or sharded sweep draws exactly the same noise and bootstrap samples.
    The sweep splits it in two: ``(arb_key, noise_key) = jax.random.split(image_key(...))``.
    """
    return jax.random.fold_in(jax.random.key(seed), np.uint32(zlib.crc32(image_id.encode())))


@dataclasses.dataclass(frozen=True)
class Grid:
    """Grid points of a sweep.

    One ARB run per ``(n_boot, width)`` in ``runs`` (their product); every run is scored at each
    threshold pair ``(alpha_i, beta_i)`` of ``thresholds`` (alpha and beta are paired, not
    crossed: the p-map depends only on alpha and the LFDR map only on beta, so a product would
    repeat the same numbers).
    """

    n_boot: tuple[int, ...] = (1,)
    width: tuple[float, ...] = (1.0,)
    alpha: tuple[float, ...] = (0.3,)
    beta: tuple[float, ...] = (0.3,)

    def __post_init__(self):
        for name in GRID_NAMES:
            if not getattr(self, name):
                raise ValueError(f"grid {name} has no value")
        for v in self.n_boot:
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"n_boot must be an integer >= 1, got {v!r}")
        for v in self.width:
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"width must be a positive number, got {v!r}")
        for name in ("alpha", "beta"):
            for v in getattr(self, name):
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
        na, nb = len(self.alpha), len(self.beta)
        if na != nb and 1 not in (na, nb):
            raise ValueError(
                f"alpha and beta are paired: give them the same number of values "
                f"(or one of them a single value), got {na} and {nb}"
            )

    @property
    def runs(self) -> list[tuple[int, float]]:
        """``(n_boot, width)`` of each ARB run."""
        return list(itertools.product(self.n_boot, self.width))

    @property
    def thresholds(self) -> list[tuple[float, float]]:
        """``(alpha, beta)`` pairs applied to every run's results."""
        n = max(len(self.alpha), len(self.beta))
        a = self.alpha * n if len(self.alpha) == 1 else self.alpha
        b = self.beta * n if len(self.beta) == 1 else self.beta
        return list(zip(a, b, strict=True))

    def points(self) -> list[tuple[int, float, float, float]]:
        """Every grid point ``(n_boot, width, alpha, beta)``."""
        return [(n, w, a, b) for n, w in self.runs for a, b in self.thresholds]


def _parse_values(name: str, text: str) -> tuple:
    values: list[float] = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        if tok.count(":") == 2:  # start:stop:num, numpy linspace
            try:
                lo, hi, num = float(tok.split(":")[0]), float(tok.split(":")[1]), tok.split(":")[2]
                values.extend(np.linspace(lo, hi, int(num)).tolist())
            except ValueError:
                raise ValueError(f"bad range {tok!r} for {name}; expected START:STOP:NUM") from None
            continue
        try:
            values.append(float(tok))
        except ValueError:
            raise ValueError(f"bad value {tok!r} for {name} in --grid") from None
    if not values:
        raise ValueError(f"no values for {name} in --grid")
    if name == "n_boot":
        if any(v != int(v) for v in values):
            raise ValueError(f"n_boot must be integers, got {text!r}")
        values = [int(v) for v in values]
    return tuple(dict.fromkeys(values))  # drop repeats, keep order


def parse_grid(text: str | None, **fixed: Any) -> Grid:
    """Parse ``"n_boot=1,4,16 width=0.5,1,2 alpha=0.1,0.3 beta=0.1,0.3"`` into a `Grid`.

    Entries are separated by spaces or ``;``; values by commas; ``START:STOP:NUM`` expands to
    ``numpy.linspace(START, STOP, NUM)`` (e.g. ``alpha=0.02:1:50``). Names missing from ``text``
    take the single values in ``fixed`` (``n_boot=``, ``width=``, ``alpha=``, ``beta=``; None
    means the default). A name both in ``text`` and given in ``fixed`` is an error.
    """
    values: dict[str, tuple] = {}
    for entry in filter(None, re.split(r"[\s;]+", (text or "").strip())):
        name, eq, rhs = entry.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in GRID_NAMES:
            raise ValueError(
                f"bad --grid entry {entry!r}; expected NAME=V1,V2,... with NAME one "
                f"of {', '.join(GRID_NAMES)}"
            )
        if name in values:
            raise ValueError(f"{name} appears twice in --grid")
        values[name] = _parse_values(name, rhs)
    for name, value in fixed.items():
        if name not in GRID_NAMES:
            raise TypeError(f"unknown grid name {name!r}")
        if value is None:
            continue
        if name in values:
            raise ValueError(f"{name} is given both on its own and in --grid; give it once")
        values[name] = (int(value),) if name == "n_boot" else (float(value),)
    return Grid(**values)
