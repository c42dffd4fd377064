"""``arb models``: the known checkpoints, where each comes from, and whether it is cached."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb models``."""
    p = sub.add_parser("models", parents=[common], help="known checkpoints, their sources, and the cache",
                       epilog="example:\n  arb models", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb models``: the known names, where each comes from, whether it is cached. Returns 0."""
    from arb_jax.checkpoints import hub, loading

    print(f"{'name':22s} {'cached':8s} source")
    print(f"{loading.DEMO:22s} {'shipped':8s} trained by this project on synthetic composites "
          "(arb_jax/assets/demo_vit.json); not DINO")
    for name, ck in hub.CHECKPOINTS.items():
        state = "yes" if hub.is_cached(name) else "no"
        print(f"{name:22s} {state:8s} {ck.url}")
    print(f"cache: {hub.cache_dir()}  (set ARB_CACHE to move it)")
    return 0
