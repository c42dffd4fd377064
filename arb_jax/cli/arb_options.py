"""The ARB options ``arb regularize`` and ``arb sweep`` share: one definition, one help text.

Every statistical option of `arb_jax.core.options.ARBOptions` has a flag here. The flags a
preset sets (``--preset``) default to "from the preset" (argparse default None); `resolve`
turns the parsed flags into ``ARBOptions`` keyword arguments, with a flag overriding its
preset.
"""

from __future__ import annotations

import argparse
from typing import Any

from arb_jax.core.options import (
    LFDR_NULLS,
    LFDR_PI0_CHOICES,
    PI0_METHODS,
    PRESET_IMAGES,
    PRESETS,
    PVALUE_METHODS,
    SAMPLERS,
    SCALES,
    preset_help,
    preset_options,
)
from arb_jax.io.options import MAX_N_BOOT, count, number, number_or
from arb_jax.study.sweep import DEFAULT_BOOT_CHUNK

__all__ = ["add_arb_options", "add_compute_options", "preset_image", "resolve"]


def add_arb_options(p: argparse.ArgumentParser, *, resize: bool = True) -> None:
    """Add --preset, --sampler, --pvalue, --pi0-method, --lfdr-pi0, --lfdr-null and --z-th
    (``resize=False``: the command always resizes to a square; its help leaves that out)."""
    p.add_argument(
        "--preset",
        default="paper",
        choices=list(PRESETS),
        help="the statistical choices, by name (default: paper). "
        + " ".join(preset_help(name, resize) + "." for name in PRESETS)
        + " A flag given with a preset overrides it.",
    )
    p.add_argument(
        "--sampler",
        default="normal",
        choices=list(SAMPLERS),
        help="the bootstrap null images (default: normal). " + SAMPLERS.help(),
    )
    p.add_argument(
        "--pvalue",
        default=None,
        choices=list(PVALUE_METHODS),
        help="the empirical p-value (default: the preset's). " + PVALUE_METHODS.help(),
    )
    p.add_argument(
        "--pi0-method",
        default=None,
        choices=list(PI0_METHODS),
        help="the estimator of pi0 (default: the preset's). " + PI0_METHODS.help(),
    )
    p.add_argument(
        "--lfdr-pi0",
        type=number_or("--lfdr-pi0", LFDR_PI0_CHOICES, 0.0, 1.0, lo_open=True),
        default=None,
        metavar="PI0|estimate|shared",
        help="pi0 in the lfdr (default: the preset's; paper: 1, attnreg: shared): a number in (0, 1]; "
        "estimate: --pi0-method on the attnreg p-values; shared: the pi0 of the pi0 map",
    )
    p.add_argument(
        "--lfdr-null",
        default=None,
        choices=list(LFDR_NULLS),
        help="the lfdr's null density (default: the preset's, theoretical). " + LFDR_NULLS.help(),
    )
    p.add_argument(
        "--percentile-decimals",
        type=count("--percentile-decimals", 0, 12),
        default=None,
        metavar="K",
        help="round percentile thresholds (--p-percentile, --lfdr-percentile) to K decimals "
        "(default: the preset's; paper: none, attnreg: 2)",
    )
    p.add_argument(
        "--scale",
        default=None,
        choices=list(SCALES),
        help="the transform before the z-scores (default: log; identity for a signed --map). "
        + SCALES.help(),
    )
    p.add_argument(
        "--z-th",
        type=number("--z-th"),
        default=None,
        metavar="Z",
        help="z-threshold every rule starts from (default: the preset's, 0)",
    )


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """Add --dtype and --boot-chunk: how the forwards run (the statistics do not change with
    --boot-chunk; --dtype changes the attention by bfloat16 rounding)."""
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="matmul precision of the ViT forward (the statistics are always float32)",
    )
    p.add_argument(
        "--boot-chunk",
        type=count("--boot-chunk", 1, MAX_N_BOOT),
        default=None,
        help="images per input per forward: the input and its null images, the input in the "
        f"first (default: all 1 + B up to B = {DEFAULT_BOOT_CHUNK - 1}, then {DEFAULT_BOOT_CHUNK} "
        "at a time: memory stays bounded for any B)",
    )


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """ARBOptions keyword arguments from parsed flags: the preset, then every flag given."""
    names = ("pvalue", "pi0_method", "lfdr_pi0", "lfdr_null", "z_th", "percentile_decimals", "scale")
    return preset_options(args.preset, sampler=args.sampler, **{k: getattr(args, k, None) for k in names})


def preset_image(args: argparse.Namespace) -> dict[str, Any]:
    """How the preset prepares images: {"resize": "crop" | "square", "size": int | None}."""
    return dict(PRESET_IMAGES[args.preset])
