"""The options of an ARB run (`ARBOptions`): checked, normalised, hashable.

`split_options` separates what the compiled function is keyed on (methods, sizes, flags) from
the numbers it takes as traced values (`DYNAMIC`: width, alpha, beta, z_th, lfdr_pi0), so a new
threshold does not compile again.

Presets (`PRESETS`) name a whole set of statistical choices: "paper" (the default: the paper's
equations, eq. 4 p-values and π₀ = 1 in the lfdr) and "attnreg" (the reference code's pipeline:
its two-sided pooled p-value, its own π₀ estimator, one π₀ for the lfdr and the π₀ map, and its
percentile thresholds rounded to 2 decimals). Options given alongside a preset override it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from arb_jax.checks import as_int
from arb_jax.core import bootstrap, functional, stats
from arb_jax.core.regularize import Percentile

__all__ = [
    "DYNAMIC",
    "LFDR_NULLS",
    "LFDR_PI0_CHOICES",
    "PI0_METHODS",
    "PRESETS",
    "PRESET_IMAGES",
    "PVALUE_METHODS",
    "SAMPLERS",
    "SCALES",
    "ARBOptions",
    "preset_help",
    "preset_options",
    "split_options",
]

SAMPLERS = bootstrap.SAMPLERS
PVALUE_METHODS = stats.PVALUE_METHODS
PI0_METHODS = stats.PI0_METHODS
LFDR_NULLS = stats.LFDR_NULLS
SCALES = functional.SCALES
LFDR_PI0_CHOICES = ("estimate", "shared")  # besides a number in (0, 1]

# What each preset sets (every field it names; the rest keep their defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "pvalue": "upper",
        "lfdr_pi0": 1.0,
        "pi0_method": "smoother",
        "lfdr_null": "theoretical",
        "z_th": 0.0,
        "percentile_decimals": None,
    },
    "attnreg": {
        "pvalue": "attnreg",
        "lfdr_pi0": "shared",
        "pi0_method": "attnreg",
        "lfdr_null": "theoretical",
        "z_th": 0.0,
        "percentile_decimals": 2,
    },
}
# How each preset's images are prepared by the command line and the sweep (the Python API takes
# prepared images): "crop" keeps the aspect ratio (short side = size, centre crop to patch
# multiples); "square" resizes to size × size, as the reference's ViTWrapper.load_img (488 px).
PRESET_IMAGES: dict[str, dict[str, Any]] = {
    "paper": {"resize": "crop", "size": None},
    "attnreg": {"resize": "square", "size": 488},
}
PRESET_NOTES = {
    "paper": "the paper's equations (eq. 4 p-values, π₀ = 1 in the lfdr, R qvalue's smoother π₀ "
    "for the π₀ map)",
    "attnreg": "the authors' code (two-sided pooled p-values, their π₀ estimator, one π₀ for the "
    "lfdr and the π₀ map, percentile thresholds rounded to 2 decimals)",
}


def preset_help(name: str, resize: bool = True) -> str:
    """One line: what preset ``name`` stands for and every option it sets (``resize=False``:
    leave out how it resizes images, for a command that always resizes to a square)."""
    image = PRESET_IMAGES[name]
    sets = ", ".join(f"{k}={v}" for k, v in PRESETS[name].items())
    shown = ([f"resize={image['resize']}"] if resize else []) + (
        [f"size={image['size']}"] if image["size"] else []
    )
    if shown:
        sets += "; images: " + ", ".join(shown)
    return f"{name}: {PRESET_NOTES[name]}; sets {sets}"


class _FromPreset:
    """Default of the fields a preset sets: the preset's value is used."""

    def __repr__(self) -> str:
        return "<from preset>"


FROM_PRESET: Any = _FromPreset()


def _check_number(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return value


def _check_threshold(
    value: Any, name: str, lo: float, hi: float, decimals: int | None = None
) -> float | Percentile:
    """A number in [lo, hi] or a scalar ``Percentile`` (q normalised to a float: hashable);
    ``decimals`` (when not None) is given to a ``Percentile`` that has none of its own."""
    if isinstance(value, Percentile):
        q = value.q
        if isinstance(q, jax.core.Tracer) or np.ndim(q) != 0:
            raise TypeError(
                f"{name}: a pipeline Percentile needs one concrete number q "
                f"(one threshold for every image), got {q!r}"
            )
        return Percentile(
            _check_number(q.item() if hasattr(q, "item") else q, f"{name} Percentile q", 0.0, 100.0),
            value.decimals if value.decimals is not None else decimals,
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
        Images per input per forward: the input and its B null images run boot_chunk at a
        time, the input in the first forward (None: all 1 + B at once, or split over a "boot"
        mesh axis); memory grows with it, the null images do not change.
    image_chunk : int or None, default None
        Images per step on each device (None: all of a device's images at once); fixing it makes
        results independent of the batch size and the device count, and bounds memory.
    sampler : {"normal", "pixel", "patch", "uniform"} or callable, default "normal"
        The bootstrap (docs/method.md §2), or a function ``(key, image) -> null image``.
        Wherever a name is accepted (sampler, pvalue, pi0_method, lfdr_null, scale) a function
        with the registry's signature is too (`arb_jax.registry`).
    width : float, default 1.0
        Width of the normal bootstrap (> 0; "normal" only).
    pvalue : {"upper", "plus_one", "two_sided", "attnreg"}, default "upper"
        The p-value (docs/method.md §3, eq. 4 and its variants).
    alpha, beta : float in [0, 1] or Percentile, default 0.3
        The p- and lfdr-thresholds, or ``Percentile(q)`` of each map's p / lfdr.
    z_th : float or Percentile, default 0.0
        The z-threshold every rule starts from.
    lfdr_pi0 : float in (0, 1], "estimate" or "shared", default 1.0
        π₀ in the lfdr: a number (1.0 as the paper); "estimate": ``pi0_method``'s π₀ of the
        attnreg p-values; "shared": the π₀ of the π₀ map itself (one π₀ for both, as the
        reference code, whose p-values are the attnreg ones).
    lfdr_null : {"theoretical", "empirical"}, default "theoretical"
        The lfdr's null density: N(0, 1), or fitted to z_null.
    pi0_method : {"smoother", "bootstrap", "attnreg"}, default "smoother"
        The π₀ estimator (of the π₀ map, and of the lfdr's π₀ unless it is a number): R
        qvalue's "smoother" or "bootstrap", or "attnreg", the reference code's
        (`arb_jax.core.stats.pi0_attnreg`).
    percentile_decimals : int or None, default None
        Round ``Percentile`` thresholds of alpha and beta to this many decimals (2 in the
        reference code); None: no rounding.
    scale : {"log", "identity"} or callable, default "log"
        The transform before the z-scores: log for attention (scores > 0), identity for signed
        maps (`arb_jax.core.functional.SCALES`).
    preset : {"paper", "attnreg"}, default "paper"
        Where the fields it sets (`PRESETS`) that are not given take their values from.
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
    sampler: str | Callable[..., Any] = "normal"
    width: float = 1.0
    pvalue: str | Callable[..., Any] = FROM_PRESET
    alpha: float | Percentile = 0.3
    beta: float | Percentile = 0.3
    lfdr_pi0: float | str = FROM_PRESET
    lfdr_null: str | Callable[..., Any] = FROM_PRESET
    pi0_method: str | Callable[..., Any] = FROM_PRESET
    z_th: float | Percentile = FROM_PRESET
    percentile_decimals: int | None = FROM_PRESET
    scale: Any = "log"
    heads: bool = False
    return_null: bool = False
    preset: str = dataclasses.field(default="paper", compare=False)

    def __post_init__(self):
        put = object.__setattr__
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is FROM_PRESET:
                put(self, name, value)
        put(self, "n_boot", as_int(self.n_boot, "n_boot"))
        put(self, "boot_chunk", as_int(self.boot_chunk, "boot_chunk", allow_none=True))
        put(self, "image_chunk", as_int(self.image_chunk, "image_chunk", allow_none=True))
        for name, registry in (
            ("sampler", SAMPLERS),
            ("pvalue", PVALUE_METHODS),
            ("pi0_method", PI0_METHODS),
            ("lfdr_null", LFDR_NULLS),
            ("scale", SCALES),
        ):
            value = getattr(self, name)
            if not (callable(value) or (isinstance(value, str) and value in registry)):
                raise ValueError(
                    f"unknown {name} {value!r}; choose one of {', '.join(registry)} (or a function "
                    f"{registry.contract})"
                )
        put(self, "width", _check_number(self.width, "width", 0.0))
        if self.width == 0:
            raise ValueError("width must be > 0, got 0.0")
        if isinstance(self.lfdr_pi0, str):
            if self.lfdr_pi0 not in LFDR_PI0_CHOICES:
                raise ValueError(
                    f"lfdr_pi0 must be a number in (0, 1], 'estimate' or 'shared', got {self.lfdr_pi0!r}"
                )
        else:
            put(self, "lfdr_pi0", _check_number(self.lfdr_pi0, "lfdr_pi0", 0.0, 1.0))
            if self.lfdr_pi0 == 0:
                raise ValueError("lfdr_pi0 must lie in (0, 1], got 0.0")
        d = self.percentile_decimals
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 12):
            raise ValueError(f"percentile_decimals must be None or an int in [0, 12], got {d!r}")
        put(self, "alpha", _check_threshold(self.alpha, "alpha", 0.0, 1.0, d))
        put(self, "beta", _check_threshold(self.beta, "beta", 0.0, 1.0, d))
        put(self, "z_th", _check_threshold(self.z_th, "z_th", -math.inf, math.inf))
        for name in ("heads", "return_null"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def chunk(self) -> int:
        """Images per input per forward (the input and its null images): min(boot_chunk or 1 + B, 1 + B)."""
        return min(self.boot_chunk or 1 + self.n_boot, 1 + self.n_boot)

    @classmethod
    def from_kwargs(cls, **options: Any) -> ARBOptions:
        """``ARBOptions(**options)`` with a clear error naming unknown options."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown ARB option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


def preset_options(preset: str = "paper", **given: Any) -> dict[str, Any]:
    """The keyword arguments of a run with a preset: ``preset``, the options given (those not
    None), and every option the preset sets, with what was given in its place (checked by
    `ARBOptions`). For a command line, whose unset flags are None, and for records of a run.
    """
    given = {k: v for k, v in given.items() if v is not None}
    opts = ARBOptions(preset=preset, **given)
    return {"preset": preset, **given, **{k: getattr(opts, k) for k in PRESETS[preset]}}


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
        return Percentile(0.0, v.decimals) if isinstance(v, Percentile) else v if isinstance(v, str) else 1.0

    def traced(v):
        return Percentile(np.float32(v.q), v.decimals) if isinstance(v, Percentile) else np.float32(v)

    static = dataclasses.replace(opts, **{k: placeholder(getattr(opts, k)) for k in DYNAMIC})
    values = {k: traced(getattr(opts, k)) for k in DYNAMIC if not isinstance(getattr(opts, k), str)}
    return static, values
