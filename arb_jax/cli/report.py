"""``arb report``: tables and figures of a sweep (`arb_jax.study.report.make_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from arb_jax.cli.common import HelpFormatter
from arb_jax.study.report import make_report

EPILOG = """examples:
  arb report results/square --out report/square
  arb report results/pod                 # merges rows.host0.csv, rows.host1.csv, ...
  arb report results/nofilter --all      # also rows failing the mean-z filter

RESULTS is the --out folder of 'arb sweep' (every rows*.csv in it is merged) or one rows CSV.
Writes summary.md (D ± error per class and method), suppression.csv, the figures
fig3_before_after, fig4_suppression, fig5_sens_spec, figS7_srmsd (.png), figS11_grid.png
(only after a --grid sweep that varies n_boot or width), gallery/*.png (the maps the sweep kept,
see 'arb sweep --gallery'), and index.html: all of it on one static page (open it in a browser).
"""


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``arb report`` (options inherit ``common``: --quiet, --debug)."""
    p = subparsers.add_parser(
        "report",
        parents=[common],
        epilog=EPILOG,
        help="tables and figures of a sweep (D per class; Figs. 3-5, S7, S11)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS", help="the --out folder of 'arb sweep'")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default RESULTS/report)")
    p.add_argument(
        "--all",
        dest="include_filtered",
        action="store_true",
        help="include rows that failed the mean-z filter",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``arb report``: write the report; prints the summary table unless --quiet."""
    results = Path(args.results)
    base = results if results.is_dir() else results.parent
    out = Path(args.out) if args.out else base / "report"
    files = make_report(results, out, include_filtered=args.include_filtered)
    if not getattr(args, "quiet", False):
        print(files["summary"].read_text(encoding="utf-8"))
        print(f"arb: report: {len(files)} files in {out}; open {out / 'index.html'} in a browser")
    return 0
