"""Every registry of named choices, for the docs: ``python -m arb_jax.core.choices`` prints
docs/choices.md (a test keeps the committed page equal to it)."""

from __future__ import annotations

from arb_jax.core import bootstrap, functional, stats
from arb_jax.models.maps import MAPS
from arb_jax.registry import Registry, markdown

__all__ = ["REGISTRIES", "page"]

REGISTRIES: dict[str, Registry] = {
    "Samplers (`sampler`, `--sampler`)": bootstrap.SAMPLERS,
    "p-values (`pvalue`, `--pvalue`)": stats.PVALUE_METHODS,
    "π₀ estimators (`pi0_method`, `--pi0-method`)": stats.PI0_METHODS,
    "lfdr null densities (`lfdr_null`, `--lfdr-null`)": stats.LFDR_NULLS,
    "Scales before the z-scores (`scale`)": functional.SCALES,
    "Maps (`arb_jax.models.MAPS`, `--map`)": MAPS,
}


def page() -> str:
    """The text of docs/choices.md."""
    return markdown(REGISTRIES)


if __name__ == "__main__":
    print(page(), end="")
