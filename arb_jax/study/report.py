"""Tables and figures of a simulation-study sweep (paper Figs. 3-5, S7, S11) from its CSV rows.

``arb report RESULTS --out DIR`` reads every ``RESULTS/rows*.csv`` written by ``arb sweep`` (one
file per host), drops rows that failed the mean-z filter (Appendix B; rows of a sweep run with
``--z-filter none`` all pass), and writes:

- ``summary.md``: the suppression factor D ± error (eq. 8, `arb_jax.study.metrics.suppression_factor`)
  per class and method, one table per grid point, and D over the grid;
- ``suppression.csv``: the same numbers at full precision;
- ``fig3_before_after.png``: mean percentile and non-zero % in the ROI, after against before;
- ``fig4_suppression.png``: D per class and method, with error bars;
- ``fig5_sens_spec.png``: sensitivity against specificity per image over the grid's thresholds,
  with the median curve and the diagonal of uniform shrinkage;
- ``figS7_srmsd.png``: sRMSD of the ROI's p-values against the mean percentile before;
- ``figS11_grid.png``: D against B and against the bootstrap width (when the grid varies them).

Figures 3-5 and S7 use the main grid point: the one closest to the paper's (B = 1, width 1,
α = β = 0.3); Fig. 5 uses every (α, β) of the main (B, width).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from arb_jax.io.plotting import subplots
from arb_jax.study import metrics
from arb_jax.study.rows import COLUMNS, METHODS, read_rows, row_key

__all__ = [
    "PAPER_POINT",
    "grid_points",
    "main_point",
    "make_report",
    "read_results",
    "suppression_table",
    "summary_markdown",
]

PAPER_POINT = (1, 1.0, 0.3, 0.3)
"""(n_boot, width, alpha, beta) of the paper's main study (Fig. 4)."""

METHOD_LABELS = {"p": "p-value", "lfdr": "LFDR", "pi0": "π₀", "z": "z only"}
ALL = "all"
_INT = ("seed", "n_boot", "noise_size")
_OPTIONAL_INT = ("roi_row", "roi_col")
_TEXT = ("image_id", "class", "noise")

Point = tuple[int, float, float, float]


# ============================================================================ reading


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in COLUMNS:
        v = row[c]
        if c in _TEXT:
            out[c] = v
        elif c in _INT:
            out[c] = int(v)
        elif c in _OPTIONAL_INT:
            out[c] = int(v) if v != "" else None
        elif c == "passed":
            out[c] = v == "1"
        else:
            out[c] = float(v)
    return out


def read_results(results: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a sweep: every ``rows*.csv`` of the folder ``results`` (or one CSV file), merged.

    Returns ``(rows, duplicates)``: typed rows (numbers as int/float, ``passed`` as bool,
    ``roi_row``/``roi_col`` None for diffuse noise), sorted by file then line, the first of rows
    with the same (image, seed, grid point) kept; ``duplicates`` counts those dropped.

    Raises
    ------
    ValueError
        no such folder/file, or no ``rows*.csv`` in it.
    """
    path = Path(results).expanduser()
    if path.is_dir():
        files = sorted(path.glob("rows*.csv"))
        if not files:
            raise ValueError(f"no rows*.csv in {path} (is it the --out folder of 'arb sweep'?)")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"results not found: {path}")
    rows, seen, dups = [], set(), 0
    for f in files:
        for raw in read_rows(f):
            key = row_key(raw)
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            try:
                rows.append(_typed(raw))
            except ValueError as e:
                raise ValueError(f"{f}: bad value in the row of {raw['image_id']!r}: {e}") from None
    return rows, dups


def _point(row: dict[str, Any]) -> Point:
    return (row["n_boot"], row["width"], row["alpha"], row["beta"])


def grid_points(rows: Iterable[dict[str, Any]]) -> list[Point]:
    """Sorted distinct grid points ``(n_boot, width, alpha, beta)`` of the rows."""
    return sorted({_point(r) for r in rows})


def main_point(points: Sequence[Point]) -> Point:
    """The grid point closest to the paper's `PAPER_POINT` (B first, then width, α, β)."""
    if not points:
        raise ValueError("no grid points")
    return min(points, key=lambda pt: tuple(abs(a - b) for a, b in zip(pt, PAPER_POINT, strict=True)) + pt)


# ============================================================================ D values


def _d(rows: Sequence[dict[str, Any]], method: str) -> tuple[float, float, int]:
    """(D, err, n) over the rows with finite percentiles; NaN D and err if n < 2."""
    b = np.array([r["perc_before"] for r in rows], np.float64)
    a = np.array([r[f"perc_after_{method}"] for r in rows], np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 2 or b[ok].sum() == 0:
        return math.nan, math.nan, n
    d, err = metrics.suppression_factor(b[ok], a[ok])
    return d, err, n


def suppression_table(
    rows: Sequence[dict[str, Any]], methods: Sequence[str] = METHODS
) -> list[dict[str, Any]]:
    """D ± error (eq. 8) per grid point, class (and ``"all"`` classes pooled) and method.

    Returns one dict per (point, class, method): ``n_boot``, ``width``, ``alpha``, ``beta``,
    ``class``, ``method``, ``n`` (images used), ``D``, ``err`` (NaN when n < 2).
    """
    groups: dict[tuple[Point, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(_point(r), r["class"])].append(r)
        groups[(_point(r), ALL)].append(r)
    out = []
    for pt in grid_points(rows):
        classes = sorted({c for (p, c) in groups if p == pt and c != ALL})
        for cls in classes + [ALL]:
            for m in methods:
                d, err, n = _d(groups[(pt, cls)], m)
                out.append(
                    {
                        "n_boot": pt[0],
                        "width": pt[1],
                        "alpha": pt[2],
                        "beta": pt[3],
                        "class": cls,
                        "method": m,
                        "n": n,
                        "D": d,
                        "err": err,
                    }
                )
    return out


def _fmt_d(d: float, err: float, n: int) -> str:
    return f"n/a (n={n})" if not math.isfinite(d) else f"{d:.3f} ± {err:.3f}"


def _class_name(c: str) -> str:
    return c if c else "(no class)"


def _point_text(pt: Point) -> str:
    return f"B = {pt[0]}, width = {pt[1]:g}, α = {pt[2]:g}, β = {pt[3]:g}"


def summary_markdown(table: Sequence[dict[str, Any]], *, header: str = "") -> str:
    """Markdown: for each grid point a table class × method of ``D ± err`` (3 decimals), then,
    with several grid points, D over the grid for all classes pooled."""
    methods = list(dict.fromkeys(t["method"] for t in table))
    by_point: dict[Point, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for t in table:
        by_point[(t["n_boot"], t["width"], t["alpha"], t["beta"])][t["class"]][t["method"]] = t
    lines = ["# Suppression factor D (eq. 8)", ""]
    if header:
        lines += [header, ""]
    lines += [
        "D = Σ mean percentile in ROI after / Σ before, over the images (1: no effect, "
        "0: noise fully suppressed); ± the reference code's error.",
        "",
    ]
    cols = "| class | n | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |"
    rule = "|---|---:|" + "---:|" * len(methods)
    for pt, classes in by_point.items():
        lines += [f"## {_point_text(pt)}", "", cols, rule]
        for cls, cells in classes.items():
            n = max(c["n"] for c in cells.values())
            name = f"**{ALL}**" if cls == ALL else _class_name(cls)
            lines.append(
                f"| {name} | {n} | "
                + " | ".join(_fmt_d(cells[m]["D"], cells[m]["err"], cells[m]["n"]) for m in methods)
                + " |"
            )
        lines.append("")
    if len(by_point) > 1:
        lines += [
            "## D over the grid (all classes)",
            "",
            "| B | width | α | β | n | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |",
            "|---:|---:|---:|---:|---:|" + "---:|" * len(methods),
        ]
        for pt, classes in by_point.items():
            cells = classes[ALL]
            n = max(c["n"] for c in cells.values())
            lines.append(
                f"| {pt[0]} | {pt[1]:g} | {pt[2]:g} | {pt[3]:g} | {n} | "
                + " | ".join(_fmt_d(cells[m]["D"], cells[m]["err"], cells[m]["n"]) for m in methods)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


# ============================================================================ figures


def _class_colors(classes: Sequence[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def plot_suppression(
    table: Sequence[dict[str, Any]], pt: Point, path: Path, methods: Sequence[str] = METHODS
) -> Path:
    """Fig. 4: bars of D ± err per class (and all classes), one colour per method."""
    sel = [t for t in table if (t["n_boot"], t["width"], t["alpha"], t["beta"]) == pt]
    classes = list(dict.fromkeys(t["class"] for t in sel))
    fig, ax = subplots(layout="tight", figsize=(max(5.0, 1.0 + 0.9 * len(classes)), 3.6))
    width = 0.8 / len(methods)
    x = np.arange(len(classes))
    for k, m in enumerate(methods):
        cells = {t["class"]: t for t in sel if t["method"] == m}
        d = [cells[c]["D"] for c in classes]
        e = [cells[c]["err"] for c in classes]
        ax.bar(
            x + (k - (len(methods) - 1) / 2) * width,
            d,
            width,
            yerr=e,
            capsize=2,
            label=METHOD_LABELS.get(m, m),
        )
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, [_class_name(c) for c in classes], rotation=30, ha="right")
    ax.set_ylabel("suppression factor D")
    ax.set_title(f"D per class ({_point_text(pt)})", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def plot_before_after(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 3: mean percentile (top) and non-zero % (bottom) in the ROI, after vs before."""
    classes = sorted({r["class"] for r in rows})
    colors = _class_colors(classes)
    fig, axes = subplots(2, len(METHODS), layout="tight", figsize=(3.0 * len(METHODS), 6.0), squeeze=False)
    for k, m in enumerate(METHODS):
        for i, (stat, label) in enumerate(
            (("perc", "mean percentile in ROI"), ("nonzero", "non-zero % in ROI"))
        ):
            ax = axes[i, k]
            for c in classes:
                sub = [r for r in rows if r["class"] == c]
                ax.scatter(
                    [r[f"{stat}_before"] for r in sub],
                    [r[f"{stat}_after_{m}"] for r in sub],
                    s=8,
                    alpha=0.7,
                    color=colors[c],
                    label=_class_name(c),
                )
            ax.plot([0, 100], [0, 100], color="gray", lw=0.8, ls="--")
            ax.set_xlim(-2, 102)
            ax.set_ylim(-2, 102)
            ax.set_xlabel(f"{label}, before", fontsize=8)
            ax.set_ylabel("after", fontsize=8)
            ax.set_title(METHOD_LABELS.get(m, m), fontsize=9)
    if len(classes) > 1:
        axes[0, -1].legend(fontsize=6, markerscale=1.5)
    fig.savefig(path, dpi=110)
    return path


def plot_sens_spec(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 5: per image, sensitivity against specificity over the thresholds (α for p, β for
    LFDR); black: the median over images at each threshold; dots: π₀-thresholding; dashed:
    uniform shrinkage (sensitivity = 1 − specificity)."""
    classes = sorted({r["class"] for r in rows})
    colors = _class_colors(classes)
    by_image: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_image[(r["image_id"], r["seed"])].append(r)
    fig, axes = subplots(1, 2, layout="tight", figsize=(8.0, 4.0))
    for ax, m, th in ((axes[0], "p", "alpha"), (axes[1], "lfdr", "beta")):
        per_t: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for img_rows in by_image.values():
            pts = sorted({(r[th], r[f"spec_{m}"], r[f"sens_{m}"]) for r in img_rows})
            for t, sp, se in pts:
                per_t[t].append((sp, se))
            if len(pts) > 1:
                ax.plot(
                    [p[1] for p in pts],
                    [p[2] for p in pts],
                    lw=0.6,
                    alpha=0.5,
                    color=colors[img_rows[0]["class"]],
                )
            r0 = img_rows[0]
            ax.scatter([r0["spec_pi0"]], [r0["sens_pi0"]], s=10, color=colors[r0["class"]], zorder=3)
        ts = sorted(per_t)
        med = np.array([np.nanmedian(np.array(per_t[t]), axis=0) for t in ts])
        ax.plot(med[:, 0], med[:, 1], "k-o" if len(ts) > 1 else "ko", lw=2, ms=3, label="median")
        ax.plot([0, 1], [1, 0], "b--", lw=1, label="uniform shrinkage")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"{METHOD_LABELS[m]} thresholding ({len(ts)} thresholds; dots: π₀)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.savefig(path, dpi=110)
    return path


def plot_srmsd(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. S7: sRMSD of the ROI's p-values against the mean percentile in ROI before."""
    classes = sorted({r["class"] for r in rows})
    colors = _class_colors(classes)
    fig, ax = subplots(layout="tight", figsize=(5.0, 3.8))
    for c in classes:
        sub = [r for r in rows if r["class"] == c]
        ax.scatter(
            [r["perc_before"] for r in sub],
            [r["srmsd_roi"] for r in sub],
            s=8,
            color=colors[c],
            label=_class_name(c),
        )
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("mean percentile in ROI before regularisation")
    ax.set_ylabel("sRMSD of p-values in ROI")
    if len(classes) > 1:
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)
    return path


def plot_grid(
    table: Sequence[dict[str, Any]], pt: Point, path: Path, methods: Sequence[str] = METHODS
) -> Path:
    """Fig. S11: D (all classes) against B at the main width, and against the width at the main
    B, at the main (α, β) — one panel for each of the two that the grid varies. Error bars are
    the reference code's ± error, cut at D = 0 below (asymmetric where they would cross 0)."""
    sel = [t for t in table if t["class"] == ALL and (t["alpha"], t["beta"]) == pt[2:]]
    panels = [
        (key, fixed, label)
        for key, fixed, label in (
            ("n_boot", ("width", pt[1]), "B (bootstrap images)"),
            ("width", ("n_boot", pt[0]), "bootstrap width w"),
        )
        if len({t[key] for t in sel if t[fixed[0]] == fixed[1]}) > 1
    ]
    fig, axes = subplots(1, max(1, len(panels)), layout="tight", figsize=(4.2 * max(1, len(panels)), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (key, fixed, label) in zip(axes, panels, strict=False):
        for m in methods:
            cells = sorted(
                (t[key], t["D"], t["err"]) for t in sel if t["method"] == m and t[fixed[0]] == fixed[1]
            )
            if cells:
                x, d, e = (np.asarray(v, float) for v in zip(*cells, strict=True))
                ax.errorbar(
                    x,
                    d,
                    yerr=[np.minimum(e, np.maximum(d, 0)), e],
                    marker="o",
                    capsize=2,
                    label=METHOD_LABELS.get(m, m),
                )
        ax.set_xlabel(label)
        ax.set_ylabel("suppression factor D (0: noise removed)")
        ax.set_ylim(bottom=0)
        other = "width" if key == "n_boot" else "B"
        ax.set_title(
            f"D against {label.split(' (')[0]} ({other} = {fixed[1]:g}, α = {pt[2]:g}, β = {pt[3]:g})",
            fontsize=9,
        )
        if key == "n_boot":
            ax.set_xscale("log", base=2)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=110)
    return path


# ============================================================================ the report


def _write_table_csv(table: Sequence[dict[str, Any]], path: Path) -> Path:
    fields = ["n_boot", "width", "alpha", "beta", "class", "method", "n", "D", "err"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields, lineterminator="\n")
        w.writeheader()
        for t in table:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in t.items()})
    return path


def make_report(results: str | Path, out: str | Path, *, include_filtered: bool = False) -> dict[str, Path]:
    """Write the tables and figures of a sweep's results (see the module docstring).

    Parameters
    ----------
    results : str | Path
        the sweep's ``--out`` folder (all ``rows*.csv`` merged) or one rows CSV.
    out : str | Path
        output folder (created).
    include_filtered : bool, default False
        also use the rows that failed the mean-z filter.

    Returns
    -------
    dict[str, Path]
        ``{name: path}`` of the files written (``summary``, ``suppression_csv``, ``fig3``,
        ``fig4``, ``fig5``, ``figS7`` and, when the grid varies B or the width, ``figS11``).
    """
    rows, dups = read_results(results)
    kept = rows if include_filtered else [r for r in rows if r["passed"]]
    if not kept:
        raise ValueError(
            f"no rows to report in {results}: {len(rows)} rows, none passed the "
            "mean-z filter (use --all to include them)"
            if rows
            else f"no rows in {results}"
        )
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    table = suppression_table(kept)
    points = grid_points(kept)
    pt = main_point(points)
    images = {(r["image_id"], r["seed"]) for r in rows}
    passed = {(r["image_id"], r["seed"]) for r in rows if _point(r) == pt and r["passed"]}
    at_pt = {(r["image_id"], r["seed"]) for r in rows if _point(r) == pt}
    noise = sorted({f"{r['noise']} {r['noise_size']} px" for r in rows})
    header = (
        f"Source: `{results}`: {len(rows)} rows, {len(images)} images (× seeds), noise "
        f"{', '.join(noise)}; {len(kept)} rows used "
        + (
            "(filter ignored: --all)"
            if include_filtered
            else f"(mean-z filter: {len(passed)} of {len(at_pt)} images pass at the main point)"
        )
        + (f"; {dups} duplicate rows dropped" if dups else "")
        + "."
    )
    files = {"summary": out / "summary.md"}
    files["summary"].write_text(summary_markdown(table, header=header), encoding="utf-8")
    files["suppression_csv"] = _write_table_csv(table, out / "suppression.csv")
    main_rows = [r for r in kept if _point(r) == pt]
    files["fig3"] = plot_before_after(main_rows, out / "fig3_before_after.png")
    files["fig4"] = plot_suppression(table, pt, out / "fig4_suppression.png")
    files["fig5"] = plot_sens_spec([r for r in kept if _point(r)[:2] == pt[:2]], out / "fig5_sens_spec.png")
    files["figS7"] = plot_srmsd(main_rows, out / "figS7_srmsd.png")
    if len({p[0] for p in points}) > 1 or len({p[1] for p in points}) > 1:
        files["figS11"] = plot_grid(table, pt, out / "figS11_grid.png")
    return files
