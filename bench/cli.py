"""Command line of ``python -m bench``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.cases import PRESETS, get_preset, select


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="ARB throughput, MFU and scaling: ours (JAX) against the PyTorch / numpy / "
        "statsmodels baseline, measured in one run on one device.",
    )
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), help="default: gpu when JAX sees a GPU, else cpu-quick"
    )
    ap.add_argument("--json", metavar="OUT", help="write the records (one per case) as JSON here")
    ap.add_argument("--md", metavar="OUT", help="write the markdown tables here (always printed)")
    ap.add_argument(
        "--cases",
        metavar="NAMES",
        help="comma-separated case-name prefixes to run (default: all of the preset)",
    )
    ap.add_argument("--no-ablations", action="store_true", help="skip the what-each-change-bought runs")
    ap.add_argument(
        "--no-baseline",
        action="store_true",
        help="ours against the peers only: no HF reference baseline (nor its check) in any case",
    )
    ap.add_argument("--list", action="store_true", help="list the preset's cases and exit")
    ap.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    ap.add_argument(
        "--budget-s",
        type=float,
        metavar="S",
        help="start no case or ablation after S seconds (default: the preset's: "
        "540 for cpu-quick, 420 for gpu, none for the others)",
    )
    return ap


def _check_out(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise SystemExit(f"{flag} {path}: is a directory, give a file name")
    if not p.parent.exists():
        raise SystemExit(f"{flag} {path}: the folder {p.parent} does not exist")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    json_out, md_out = _check_out(args.json, "--json"), _check_out(args.md, "--md")
    import jax

    name = args.preset or ("gpu" if jax.default_backend() == "gpu" else "cpu-quick")
    preset = get_preset(name)
    try:
        cases = select(preset, args.cases)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.no_baseline:
        import dataclasses

        cases = tuple(dataclasses.replace(c, baseline=False, check=False) for c in cases)
    if args.list:
        for c in cases:
            print(
                f"{c.name}: {c.model} @ {c.image_size}, B={c.n_boot}, {c.n_images} image(s), "
                f"{c.dtype}, baseline={c.baseline}, check={c.check}, peers={c.peers}"
            )
        return 0

    from arb_jax.io.files import write_text_atomic
    from bench.run import jsonable, run_preset
    from bench.tables import to_markdown

    def write(result: dict) -> None:  # after every case: a killed run keeps what it measured
        result = jsonable(result)
        if json_out is not None:
            write_text_atomic(json_out, json.dumps(result, indent=1) + "\n")
        if md_out is not None:
            write_text_atomic(md_out, to_markdown(result) + "\n")

    result = run_preset(
        preset,
        cases,
        ablations=not args.no_ablations,
        quiet=args.quiet,
        budget_s=args.budget_s,
        on_result=write,
    )
    write(result)
    result = jsonable(result)
    print(to_markdown(result))
    if result["skipped"]:
        print(
            f"{len(result['skipped'])} case(s) or ablation(s) not run: the {result['budget_s']:.0f} s "
            "budget was spent (--budget-s to change it)",
            file=sys.stderr,
        )
    if result["errors"]:
        print(f"{len(result['errors'])} case(s) or ablation(s) failed: {result['errors']}", file=sys.stderr)
        return 1
    return 0
