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
- ``figS11_grid.png``: D against B and against the bootstrap width (only when the grid varies
  them: a ``--grid`` sweep);
- ``gallery/*.png``: maps before and after of the images the sweep kept (``arb sweep --gallery``);
- ``index.html``: a static page of the table, every figure and the gallery (no server needed).

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
    "error_bars",
    "grid_points",
    "main_point",
    "make_report",
    "read_results",
    "suppression_table",
    "summary_markdown",
    "write_html",
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
    """(D, err, n) over the rows with finite percentiles: D where n >= 1 (NaN for n = 0 or a zero
    sum before), its error where n >= 2 (it needs a sample variance; NaN otherwise)."""
    b = np.array([r["perc_before"] for r in rows], np.float64)
    a = np.array([r[f"perc_after_{method}"] for r in rows], np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n == 0 or b[ok].sum() == 0:
        return math.nan, math.nan, n
    if n == 1:
        return float(a[ok].sum() / b[ok].sum()), math.nan, n
    d, err = metrics.suppression_factor(b[ok], a[ok])
    return d, err, n


def suppression_table(
    rows: Sequence[dict[str, Any]], methods: Sequence[str] = METHODS
) -> list[dict[str, Any]]:
    """D ± error (eq. 8) per grid point, class (and ``"all"`` classes pooled) and method.

    Returns one dict per (point, class, method): ``n_boot``, ``width``, ``alpha``, ``beta``,
    ``class``, ``method``, ``n`` (images used), ``D`` (NaN when n = 0), ``err`` (NaN when n < 2).
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
    if not math.isfinite(d):
        return "no images" if n == 0 else f"n/a (n={n}, no ROI attention before)"
    return f"{d:.3f} ± {err:.3f}" if math.isfinite(err) else f"{d:.3f} (n=1: no error)"


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
        "0: noise fully suppressed); ± the reference code's error, which needs n ≥ 2 images.",
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


def _images(n: int) -> str:
    return f"{n} image" + ("" if n == 1 else "s")


def _legend_outside(ax: Any, fig_legend_title: str | None = None, **kw: Any) -> None:
    """A legend right of the axes, outside the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            title=fig_legend_title,
            title_fontsize=7,
            **kw,
        )


def error_bars(d: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) error-bar lengths of D ± err, the lower cut at D = 0 (D is never negative).

    Parameters
    ----------
    d, err : (k,) float arrays
        D and its error (NaN where there is none: n < 2).

    Returns
    -------
    (k,) float arrays
        ``min(err, D)`` and ``err``; 0 where ``err`` is NaN.
    """
    d, err = np.asarray(d, float), np.asarray(err, float)
    ok = np.isfinite(err) & np.isfinite(d)
    lower = np.where(ok, np.minimum(np.where(ok, err, 0.0), np.maximum(np.nan_to_num(d), 0.0)), 0.0)
    return lower, np.where(ok, err, 0.0)


def plot_suppression(
    table: Sequence[dict[str, Any]],
    pt: Point,
    path: Path,
    methods: Sequence[str] = METHODS,
    dropped: dict[str, int] | None = None,
) -> Path:
    """Fig. 4: bars of D ± err per class (and all classes), one colour per method.

    Error bars are the reference code's ± error, cut at D = 0 below (drawn asymmetrically there);
    a class of one image has a bar and no error bar (the error needs n >= 2), and a class whose
    images were all dropped by the mean-z filter (``dropped``: class → images dropped) is named
    with a note instead of a bar.
    """
    sel = [t for t in table if (t["n_boot"], t["width"], t["alpha"], t["beta"]) == pt]
    classes = [c for c in dict.fromkeys(t["class"] for t in sel) if c != ALL]
    empty = sorted(c for c in (dropped or {}) if c not in classes and c != ALL)
    classes = sorted(classes + empty) + [ALL]
    fig, ax = subplots(layout="constrained", figsize=(max(6.0, 2.4 + 0.9 * len(classes)), 4.2))
    width = 0.8 / len(methods)
    x = np.arange(len(classes))
    ns = {}
    for k, m in enumerate(methods):
        cells = {t["class"]: t for t in sel if t["method"] == m}
        d = np.array([cells[c]["D"] if c in cells else np.nan for c in classes], float)
        e = np.array([cells[c]["err"] if c in cells else np.nan for c in classes], float)
        for c in classes:
            if c in cells:
                ns[c] = max(ns.get(c, 0), cells[c]["n"])
        xs = x + (k - (len(methods) - 1) / 2) * width
        bars = ax.bar(xs, np.nan_to_num(d, nan=0.0), width, label=METHOD_LABELS.get(m, m))
        has = np.isfinite(e) & np.isfinite(d)
        if has.any():
            ax.errorbar(
                xs[has],
                d[has],
                yerr=error_bars(d[has], e[has]),
                fmt="none",
                ecolor="k",
                capsize=2,
                lw=1,
            )
        for xi, di in zip(xs, d, strict=True):
            if di == 0:  # a bar of height 0 is invisible: say it
                ax.text(xi, 0.01, "0", ha="center", va="bottom", fontsize=7, color=bars.patches[0].get_fc())
    top = max(1.1, float(np.nanmax([t["D"] + np.nan_to_num(t["err"]) for t in sel] or [1.0])) * 1.12)
    ax.set_ylim(0, top)
    for i, c in enumerate(classes):
        if ns.get(c, 0) == 0:
            lost = (dropped or {}).get(c)
            why = f"{lost} dropped\nby the mean-z filter" if lost else "no images"
            ax.text(i, top * 0.5, why, ha="center", va="center", fontsize=7, rotation=90, color="0.3")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--", label="D = 1: no effect")
    drops = dropped or {}
    total = sum(drops.values())
    lost = {**drops, ALL: total}
    ticks = [
        f"{_class_name(c)}\n(n = {ns.get(c, 0)}" + (f", {lost[c]} dropped)" if lost.get(c) else ")")
        for c in classes
    ]
    ax.set_xticks(x, ticks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("suppression factor D\n(0: ROI attention removed, 1: unchanged)")
    ax.set_title(
        f"Fig. 4: D per class and method ({_point_text(pt)})\n"
        "error bars: ± the reference code's error (needs n ≥ 2), cut at 0"
        + ("\ndropped: images the mean-z filter left out" if total else ""),
        fontsize=9,
    )
    _legend_outside(ax, "method")
    fig.savefig(path, dpi=120)
    return path


def plot_before_after(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 3: the mean percentile in the ROI after against before (top), and the non-zero share
    of the ROI after against before (bottom) — or, when every image's ROI is fully non-zero
    before (the usual case: attention is positive everywhere), against the mean percentile
    before, which then says more than a column of dots at 100 %."""
    classes = sorted({r["class"] for r in rows})
    colors = _class_colors(classes)
    nz_before = np.array([r["nonzero_before"] for r in rows], float)
    constant = nz_before.size > 0 and np.allclose(nz_before, nz_before[0])
    fig, axes = subplots(
        2, len(METHODS), layout="constrained", figsize=(3.0 * len(METHODS) + 1.6, 6.6), squeeze=False
    )
    for k, m in enumerate(METHODS):
        for i, (x_key, y_key, x_label, y_label) in enumerate(
            (
                ("perc_before", f"perc_after_{m}", "mean percentile in ROI, before", "mean percentile after"),
                (
                    "perc_before" if constant else "nonzero_before",
                    f"nonzero_after_{m}",
                    "mean percentile in ROI, before" if constant else "non-zero % of ROI, before",
                    "non-zero % of ROI, after",
                ),
            )
        ):
            ax = axes[i, k]
            for c in classes:
                sub = [r for r in rows if r["class"] == c]
                ax.scatter(
                    [r[x_key] for r in sub],
                    [r[y_key] for r in sub],
                    s=10,
                    alpha=0.75,
                    color=colors[c],
                    label=_class_name(c),
                )
            if i == 0 or not constant:
                ax.plot([0, 100], [0, 100], color="gray", lw=0.8, ls="--", label="after = before")
            ax.set_xlim(-2, 102)
            ax.set_ylim(-2, 102)
            ax.set_xlabel(x_label, fontsize=8)
            ax.set_ylabel(y_label, fontsize=8)
            ax.set_title(f"{METHOD_LABELS.get(m, m)} map", fontsize=9)
    _legend_outside(axes[0, -1], "class")
    note = (
        f"bottom: every ROI was {nz_before[0]:.0f} % non-zero before, so the share after is drawn "
        "against the mean percentile before"
        if constant
        else "bottom: non-zero share of the ROI"
    )
    fig.suptitle(
        f"Fig. 3: the noise ROI before and after regularisation ({_images(len(rows))}; one dot each)\n"
        "top: mean percentile of the ROI's attention among the rest of the map (lower: less "
        f"attention on the noise)\n{note}",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    return path


def plot_sens_spec(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 5: per image, sensitivity against specificity over the grid's thresholds (α for the
    p-value map, β for the LFDR map), a line per image coloured by class; black diamonds: the
    median over the images at each threshold (drawn on top); open circles: the π₀ map, which
    has no threshold to choose; dashed: uniform shrinkage (sensitivity = 1 − specificity)."""
    classes = sorted({r["class"] for r in rows})
    colors = _class_colors(classes)
    by_image: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_image[(r["image_id"], r["seed"])].append(r)
    fig, axes = subplots(1, 2, layout="constrained", figsize=(11.0, 4.6))
    for ax, m, th, sym in ((axes[0], "p", "alpha", "α"), (axes[1], "lfdr", "beta", "β")):
        per_t: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for img_rows in by_image.values():
            pts = sorted({(r[th], r[f"spec_{m}"], r[f"sens_{m}"]) for r in img_rows})
            for t, sp, se in pts:
                per_t[t].append((sp, se))
            color = colors[img_rows[0]["class"]]
            if len(pts) > 1:
                ax.plot([p[1] for p in pts], [p[2] for p in pts], lw=0.7, alpha=0.6, color=color)
            else:
                ax.scatter([pts[0][1]], [pts[0][2]], s=14, color=color, alpha=0.8, zorder=3)
            r0 = img_rows[0]
            ax.scatter(
                [r0["spec_pi0"]], [r0["sens_pi0"]], s=22, facecolors="none", edgecolors=color, lw=1, zorder=4
            )
        ts = sorted(per_t)
        med = np.array([np.nanmedian(np.array(per_t[t]), axis=0) for t in ts])
        ax.plot(
            med[:, 0],
            med[:, 1],
            "-" if len(ts) > 1 else "",
            color="k",
            marker="D",
            ms=6 if len(ts) <= 8 else 3.5,
            mfc="k",
            mec="white",
            lw=2,
            zorder=6,
            label="median over the images, per threshold",
        )
        ax.plot([0, 1], [1, 0], "b--", lw=1, label="uniform shrinkage")
        ax.scatter([], [], s=22, facecolors="none", edgecolors="0.3", label="π₀ map (one per image)")
        for c in classes:
            ax.plot([], [], color=colors[c], lw=2, label=f"class {_class_name(c)}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("specificity (share of the rest's attention kept)")
        ax.set_ylabel("sensitivity (share of the ROI's attention removed)")
        ax.set_title(
            f"{METHOD_LABELS[m]} map\nat {sym} = "
            + (
                ", ".join(f"{t:g}" for t in ts)
                if len(ts) <= 4
                else f"{ts[0]:g} … {ts[-1]:g} ({len(ts)} values)"
            )
            + ("; a line per image" if len(ts) > 1 else "; a dot per image"),
            fontsize=9,
        )
    _legend_outside(axes[1])
    fig.suptitle(f"Fig. 5: sensitivity against specificity ({_images(len(by_image))})", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def plot_srmsd(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. S7: sRMSD of the ROI's p-values against the mean percentile in ROI before."""
    classes = sorted({r["class"] for r in rows})
    colors = _class_colors(classes)
    fig, ax = subplots(layout="constrained", figsize=(6.6, 4.2))
    for c in classes:
        sub = [r for r in rows if r["class"] == c]
        ax.scatter(
            [r["perc_before"] for r in sub],
            [r["srmsd_roi"] for r in sub],
            s=10,
            color=colors[c],
            label=_class_name(c),
        )
    ax.axhline(0.0, color="gray", lw=0.8, ls="--", label="0: uniform p-values")
    ax.set_xlim(-2, 102)  # percentiles: the whole range, also for one image
    ax.set_xlabel("mean percentile in ROI before regularisation")
    ax.set_ylabel("sRMSD of the ROI's p-values")
    ax.set_title(
        f"Fig. S7: are the noise ROI's p-values uniform? ({_images(len(rows))})\n"
        "sRMSD = √mean((u_k − p_(k))²) of the sorted p-values from uniform u_k;\n"
        "negative when their median exceeds 0.5 (Yao & Ochoa 2023)",
        fontsize=8,
    )
    _legend_outside(ax, "class")
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
                    yerr=error_bars(d, e),
                    marker="o",
                    capsize=2,
                    label=METHOD_LABELS.get(m, m),
                )
        ax.set_xlabel(label)
        ax.set_ylabel("suppression factor D (0: noise removed)")
        ax.set_ylim(bottom=0)
        other = "width" if key == "n_boot" else "B"
        ax.set_title(
            f"Fig. S11: D against {label.split(' (')[0]}\n"
            f"({other} = {fixed[1]:g}, α = {pt[2]:g}, β = {pt[3]:g})",
            fontsize=9,
        )
        if key == "n_boot":
            ax.set_xscale("log", base=2)
        values = sorted({t[key] for t in sel if t[fixed[0]] == fixed[1]})
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
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
        ``fig4``, ``fig5``, ``figS7``, ``html`` and, when the grid varies B or the width,
        ``figS11``).
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
    dropped: dict[str, int] = defaultdict(int)
    if not include_filtered:
        for r in rows:
            if _point(r) == pt and not r["passed"]:
                dropped[r["class"]] += 1
    files["fig3"] = plot_before_after(main_rows, out / "fig3_before_after.png")
    files["fig4"] = plot_suppression(table, pt, out / "fig4_suppression.png", dropped=dict(dropped))
    files["fig5"] = plot_sens_spec([r for r in kept if _point(r)[:2] == pt[:2]], out / "fig5_sens_spec.png")
    files["figS7"] = plot_srmsd(main_rows, out / "figS7_srmsd.png")
    if len({p[0] for p in points}) > 1 or len({p[1] for p in points}) > 1:
        files["figS11"] = plot_grid(table, pt, out / "figS11_grid.png")
    results_dir = Path(results).expanduser()
    gallery = _write_gallery(results_dir if results_dir.is_dir() else results_dir.parent, out)
    files["html"] = write_html(out, table, header, files, gallery)
    return files


# ============================================================================ HTML


FIGURE_CAPTIONS = {
    "fig3": "Fig. 3: the noise ROI's mean percentile and non-zero share, after against before.",
    "fig4": "Fig. 4: the suppression factor D per class and method.",
    "fig5": "Fig. 5: sensitivity against specificity over the thresholds; π₀ maps as open circles.",
    "figS7": "Fig. S7: sRMSD of the ROI's p-values (0: uniform) against the mean percentile before.",
    "figS11": "Fig. S11: D against the number of bootstrap images B and the bootstrap width.",
}


def _write_gallery(results: Path, out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Before/after maps of the images the sweep kept (``RESULTS/gallery/*.npz``, `plot_batch`
    rows) as ``OUT/gallery/*.png`` (one drawn before from the same file is kept); returns
    ``[(png, meta)]`` sorted by image id."""
    import json

    from arb_jax.io.images import normalize
    from arb_jax.io.plotting import plot_batch

    found = []
    for npz in sorted((results / "gallery").glob("*.npz")):
        if npz.name.startswith("."):  # a temporary file of a write cut short
            continue
        try:
            with np.load(npz, allow_pickle=False) as f:
                rec = {k: f[k] for k in f.files if k not in ("meta", "image_rgb")}
                meta = json.loads(str(f["meta"]))
                rec["image"] = normalize(f["image_rgb"].astype(np.float32) / 255.0)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"cannot read the gallery file {npz}: {e}") from None
        found.append((meta, rec, npz.stem, npz))
    found.sort(key=lambda t: (t[0]["image_id"], t[0]["seed"]))
    written = []
    if found:
        (out / "gallery").mkdir(exist_ok=True)
    for meta, rec, stem, npz in found:
        png = out / "gallery" / f"{stem}.png"
        if png.exists() and png.stat().st_mtime_ns >= npz.stat().st_mtime_ns:  # drawn before
            written.append((png, meta))
            continue
        rec.update({k: meta[k] for k in ("n_boot", "width", "sampler", "pvalue", "alpha", "beta")})
        rec["name"] = f"{meta['image_id']}"
        status = "passes the mean-z filter" if meta["passed"] else "DROPPED by the mean-z filter"
        fig = plot_batch([rec], title=f"{meta['image_id']} (class {_class_name(meta['class'])}; {status})")
        fig.savefig(png, dpi=80)
        written.append((png, meta))
    return written


def _html_table(table: Sequence[dict[str, Any]]) -> str:
    import html

    methods = list(dict.fromkeys(t["method"] for t in table))
    by_point: dict[Point, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for t in table:
        by_point[(t["n_boot"], t["width"], t["alpha"], t["beta"])][t["class"]][t["method"]] = t
    parts = []
    for pt, classes in by_point.items():
        head = "".join(f"<th>{html.escape(METHOD_LABELS.get(m, m))}</th>" for m in methods)
        body = []
        for cls, cells in classes.items():
            n = max(c["n"] for c in cells.values())
            name = f"<b>{ALL}</b>" if cls == ALL else html.escape(_class_name(cls))
            tds = "".join(
                f"<td>{html.escape(_fmt_d(cells[m]['D'], cells[m]['err'], cells[m]['n']))}</td>"
                for m in methods
            )
            body.append(f"<tr><td>{name}</td><td>{n}</td>{tds}</tr>")
        parts.append(
            f"<h3>{html.escape(_point_text(pt))}</h3>\n<table><tr><th>class</th><th>n</th>{head}</tr>\n"
            + "\n".join(body)
            + "\n</table>"
        )
    return "\n".join(parts)


def write_html(
    out: Path,
    table: Sequence[dict[str, Any]],
    header: str,
    files: dict[str, Path],
    gallery: Sequence[tuple[Path, dict[str, Any]]] = (),
) -> Path:
    """``OUT/index.html``: a static page (no server, no script) with the summary table, every
    figure of ``files`` and the gallery, all by relative paths (the folder can be moved)."""
    import html

    figs = "\n".join(
        f'<figure><img src="{html.escape(files[k].name)}" alt="{html.escape(cap)}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for k, cap in FIGURE_CAPTIONS.items()
        if k in files
    )
    if gallery:
        items = "\n".join(
            f'<figure><img src="gallery/{html.escape(p.name)}" alt="{html.escape(m["image_id"])}">'
            f"<figcaption>{html.escape(m['image_id'])} — class {html.escape(_class_name(m['class']))}"
            f"{'' if m['passed'] else ' — dropped by the mean-z filter'}</figcaption></figure>"
            for p, m in gallery
        )
        gal = (
            "<h2>Gallery: maps before and after</h2>\n<p>The first images of the sweep (its "
            "<code>--gallery</code> option), at the run closest to B = 1, width 1; each row: the "
            "noised photo (ROI in red), the attention before, and the p-value, LFDR and π₀ maps "
            "after (α = β = 0.3), over the dimmed photo.</p>\n" + items
        )
    else:
        gal = "<h2>Gallery</h2>\n<p>No maps were kept by the sweep (<code>--gallery 0</code>).</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ARB simulation study report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1500px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #999; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.9em; color: #333; }}
</style></head>
<body>
<h1>ARB simulation study report</h1>
<p>{html.escape(header)}</p>
<h2>Suppression factor D (eq. 8)</h2>
<p>D = Σ mean percentile in the ROI after / Σ before, over the images (1: no effect, 0: the
noise's attention removed); ± the reference code's error, which needs n ≥ 2 images.</p>
{_html_table(table)}
<h2>Figures</h2>
{figs}
{gal}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
