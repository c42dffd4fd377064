"""The options of an ARB run (`ARBOptions`): checked, normalised, hashable.

`split_options` separates what the compiled function is keyed on (methods, sizes, flags) from
the numbers it takes as traced values (`DYNAMIC`: width, alpha, beta, z_th, lfdr_pi0), so a new
threshold does not compile again.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import numpy as np

from arb_jax.checks import as_int
from arb_jax.core import bootstrap, stats
from arb_jax.core.regularize import Percentile

__all__ = ["DYNAMIC", "LFDR_NULLS", "PI0_METHODS", "PVALUE_METHODS", "ARBOptions", "split_options"]

PVALUE_METHODS = stats.PVALUE_METHODS
PI0_METHODS = stats.PI0_METHODS
LFDR_NULLS = stats.LFDR_NULLS


def _check_number(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return value


def _check_threshold(value: Any, name: str, lo: float, hi: float) -> float | Percentile:
    """A number in [lo, hi] or a scalar ``Percentile`` (q normalised to a float: hashable)."""
    if isinstance(value, Percentile):
        q = value.q
        if isinstance(q, jax.core.Tracer) or np.ndim(q) != 0:
            raise TypeError(
                f"{name}: a pipeline Percentile needs one concrete number q "
                f"(one threshold for every image), got {q!r}"
            )
        return Percentile(
            _check_number(q.item() if hasattr(q, "item") else q, f"{name} Percentile q", 0.0, 100.0)
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a number or an arb_jax.regularize.Percentile, got "
            f"{type(value).__name__} {value!r}"
        )
    return _check_number(value, name, lo, hi)


@dataclasses.dataclass(frozen=True)
class ARBOptions:
    """Options of one ARB run (frozen and hashable; numbers are normalised to ``float``).

    Attributes
    ----------
    n_boot : int, default 1
        Bootstrap images per input (B >= 1).
    boot_chunk : int or None, default None
        Null forwards run this many per image at a time (None: all B at once, or B split over a
        "boot" mesh axis); memory grows with it, the null images do not change.
    image_chunk : int or None, default None
        Images per step on each device (None: all of a device's images at once); fixing it makes
        results independent of the batch size and the device count, and bounds memory.
    sampler : {"normal", "pixel", "patch", "uniform"}, default "normal"
        The bootstrap (docs/method.md §2).
    width : float, default 1.0
        Width of the normal bootstrap (> 0; "normal" only).
    pvalue : {"upper", "plus_one", "two_sided", "attnreg"}, default "upper"
        The p-value (docs/method.md §3, eq. 4 and its variants).
    alpha, beta : float in [0, 1] or Percentile, default 0.3
        The p- and lfdr-thresholds, or ``Percentile(q)`` of each map's p / lfdr.
    z_th : float or Percentile, default 0.0
        The z-threshold every rule starts from.
    lfdr_pi0 : float in (0, 1] or "estimate", default 1.0
        π₀ in the lfdr (1.0 as the paper; "estimate": Storey's π₀ of the attnreg p-values, as
        the reference code).
    lfdr_null : {"theoretical", "empirical"}, default "theoretical"
        The lfdr's null density: N(0, 1), or fitted to z_null.
    pi0_method : {"smoother", "bootstrap"}, default "smoother"
        Storey's estimator for the π₀ threshold.
    heads : bool, default False
        Also return the per-head maps.
    return_null : bool, default False
        Also return the bootstrap z, (N, B, h, w).

    Notes
    -----
    Only the structure (counts, method names, flags, number vs Percentile) selects a compiled
    function; width, alpha, beta, z_th and a numeric lfdr_pi0 are passed as traced values, so
    changing them does not recompile.
    """

    n_boot: int = 1
    boot_chunk: int | None = None
    image_chunk: int | None = None
    sampler: str = "normal"
    width: float = 1.0
    pvalue: str = "upper"
    alpha: float | Percentile = 0.3
    beta: float | Percentile = 0.3
    lfdr_pi0: float | str = 1.0
    lfdr_null: str = "theoretical"
    pi0_method: str = "smoother"
    z_th: float | Percentile = 0.0
    heads: bool = False
    return_null: bool = False

    def __post_init__(self):
        put = object.__setattr__
        put(self, "n_boot", as_int(self.n_boot, "n_boot"))
        put(self, "boot_chunk", as_int(self.boot_chunk, "boot_chunk", allow_none=True))
        put(self, "image_chunk", as_int(self.image_chunk, "image_chunk", allow_none=True))
        for name, allowed in (
            ("sampler", tuple(bootstrap.SAMPLERS)),
            ("pvalue", PVALUE_METHODS),
            ("pi0_method", PI0_METHODS),
            ("lfdr_null", LFDR_NULLS),
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        put(self, "width", _check_number(self.width, "width", 0.0))
        if self.width == 0:
            raise ValueError("width must be > 0, got 0.0")
        if isinstance(self.lfdr_pi0, str):
            if self.lfdr_pi0 != "estimate":
                raise ValueError(f"lfdr_pi0 must be a number in (0, 1] or 'estimate', got {self.lfdr_pi0!r}")
        else:
            put(self, "lfdr_pi0", _check_number(self.lfdr_pi0, "lfdr_pi0", 0.0, 1.0))
            if self.lfdr_pi0 == 0:
                raise ValueError("lfdr_pi0 must lie in (0, 1], got 0.0")
        put(self, "alpha", _check_threshold(self.alpha, "alpha", 0.0, 1.0))
        put(self, "beta", _check_threshold(self.beta, "beta", 0.0, 1.0))
        put(self, "z_th", _check_threshold(self.z_th, "z_th", -math.inf, math.inf))
        for name in ("heads", "return_null"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def chunk(self) -> int:
        """Null images per image per forward: min(boot_chunk or B, B)."""
        return min(self.boot_chunk or self.n_boot, self.n_boot)

    @classmethod
    def from_kwargs(cls, **options: Any) -> ARBOptions:
        """``ARBOptions(**options)`` with a clear error naming unknown options."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown ARB option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


DYNAMIC = ("width", "alpha", "beta", "z_th", "lfdr_pi0")


def split_options(opts: ARBOptions) -> tuple[ARBOptions, dict[str, Any]]:
    """Split options into what the compiled function is keyed on and what it takes traced.

    Parameters
    ----------
    opts : ARBOptions
        The options of a run.

    Returns
    -------
    tuple of (ARBOptions, dict)
        The static options, with placeholder numbers for the `DYNAMIC` fields, and a dict of
        those fields' values as float32 (a ``Percentile`` keeps its kind, its ``q`` traced).
    """

    def placeholder(v):
        return Percentile(0.0) if isinstance(v, Percentile) else v if isinstance(v, str) else 1.0

    def traced(v):
        return Percentile(np.float32(v.q)) if isinstance(v, Percentile) else np.float32(v)

    static = dataclasses.replace(opts, **{k: placeholder(getattr(opts, k)) for k in DYNAMIC})
    values = {k: traced(getattr(opts, k)) for k in DYNAMIC if getattr(opts, k) != "estimate"}
    return static, values
