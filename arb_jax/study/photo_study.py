"""The paper's simulation study on a real pretrained ViT and the real photos available offline.

``arb photo-study --out DIR`` (`arb_jax.cli.photo_study`) runs, one after the other and
resumably (rerun the same command after an interruption):

1. ``arb photos DIR/data``: 20 real photos in 3 classes (`arb_jax.study.photos`);
2. five ``arb sweep`` runs with ``--placements K`` (K noise placements per photo, each its own
   key and row), the model ``imgfocus_dinov2_vits14`` by default, the mean-z filter of
   Appendix B, and 50 paired (α, β) thresholds from 0.02 to 1 (Fig. 5):

   ================ ======= ====== =========================================
   run              noise   size   bootstrap
   ================ ======= ====== =========================================
   square_224       square  224 px B ∈ {1, 4, 16}, width 1 (Fig. S11 left)
   square_224_width square  224 px B = 1, width ∈ {0.5, 1, 2} (Fig. S11 right)
   diffuse_224      diffuse 224 px B ∈ {1, 16}, width 1
   square_448       square  448 px B = 1, width 1
   diffuse_448      diffuse 448 px B = 1, width 1
   ================ ======= ====== =========================================

   The noise square's side is the reference's 100 px at 488 px scaled to the size (46 px at
   224, 92 px at 448); diffuse noise covers the same number of pixels;
3. ``arb report`` of each run (``DIR/RUN/report``: Figs. 3, 4, 5, S7, S11 and the tables), with
   the filter and without it (``DIR/RUN/report_all``);
4. ``DIR/study.md``: D ± error per run, B and method at α = β = 0.3, all classes pooled, with and
   without the filter, the Fig. S11 grid, and sRMSD of the ROI p-values.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from arb_jax.io.files import write_text_atomic
from arb_jax.study import photos, report, sweep

__all__ = ["RUNS", "Run", "run_study", "study_markdown"]

THRESHOLDS = "alpha=0.02:1:50 beta=0.02:1:50"


class Run(NamedTuple):
    """One sweep of the study: its folder name, noise, image side in pixels and grid."""

    name: str
    noise: str
    size: int
    grid: str


RUNS = (
    Run("square_224", "square", 224, f"n_boot=1,4,16 {THRESHOLDS}"),
    Run("square_224_width", "square", 224, f"width=0.5,1,2 {THRESHOLDS}"),
    Run("diffuse_224", "diffuse", 224, f"n_boot=1,16 {THRESHOLDS}"),
    Run("square_448", "square", 448, THRESHOLDS),
    Run("diffuse_448", "diffuse", 448, THRESHOLDS),
)
"""The sweeps; Fig. S11 varies B (at width 1) and the width (at B = 1) independently, as the
paper does."""


def _at(
    table: list[dict[str, Any]], n_boot: int, width: float, method: str, cls: str = report.ALL
) -> dict[str, Any] | None:
    """The row of ``table`` at (n_boot, width, α = β ≈ 0.3) for ``method`` and ``cls``."""
    rows = [
        r
        for r in table
        if r["n_boot"] == n_boot and r["width"] == width and r["method"] == method and r["class"] == cls
    ]
    return min(rows, key=lambda r: abs(r["alpha"] - 0.3) + abs(r["beta"] - 0.3), default=None)


def _cell(r: dict[str, Any] | None) -> str:
    if r is None or not math.isfinite(r["D"]):
        return "n/a"
    return f"{r['D']:.3f} ± {r['err']:.3f}"


def study_markdown(results: dict[str, tuple[list, list]], placements: int, model: str) -> str:
    """The study's summary table (markdown) from ``{run: (rows, rows_kept)}``."""
    lines = [
        f"# ARB on `{model}`: the simulation study on 20 real photos × {placements} noise placements",
        "",
        "D ± error (eq. 8) at α = β = 0.3, all classes pooled; n = rows used. "
        "'filter': rows with |mean z in ROI| ≤ 1 (Appendix B); 'all': every row.",
        "",
        "| run | B | rows (filter / all) | D_p | D_lfdr | D_π₀ | D_p (all) | D_lfdr (all) | "
        "D_π₀ (all) | median sRMSD (ROI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (rows, kept) in results.items():
        t_kept, t_all = report.suppression_table(kept), report.suppression_table(rows)
        for n_boot in sorted({r["n_boot"] for r in rows}):
            k = _at(t_kept, n_boot, 1.0, "p")
            a = _at(t_all, n_boot, 1.0, "p")
            main = (
                [
                    r
                    for r in rows
                    if r["n_boot"] == n_boot and r["width"] == 1.0 and abs(r["alpha"] - k["alpha"]) < 1e-12
                ]
                if k
                else []
            )
            srmsd = np.nanmedian([r["srmsd_roi"] for r in main]) if main else math.nan
            lines.append(
                f"| {name} | {n_boot} | {k['n'] if k else 0} / {a['n'] if a else 0} | "
                + " | ".join(_cell(_at(t_kept, n_boot, 1.0, m)) for m in ("p", "lfdr", "pi0"))
                + " | "
                + " | ".join(_cell(_at(t_all, n_boot, 1.0, m)) for m in ("p", "lfdr", "pi0"))
                + f" | {srmsd:.3f} |"
            )
    grids = [
        n
        for n, (rows, _) in results.items()
        if len({r["width"] for r in rows}) > 1 or len({r["n_boot"] for r in rows}) > 2
    ]
    if grids:
        lines += [
            "",
            f"Fig. S11 grid ({', '.join(grids)}; filter): D at α = β = 0.3",
            "",
            "| run | B | width | D_p | D_lfdr | D_π₀ |",
            "|---|---|---|---|---|---|",
        ]
        for name in grids:
            rows, kept = results[name]
            table = report.suppression_table(kept)
            for n_boot in sorted({r["n_boot"] for r in rows}):
                for w in sorted({r["width"] for r in rows}):
                    lines.append(
                        f"| {name} | {n_boot} | {w:g} | "
                        + " | ".join(_cell(_at(table, n_boot, w, m)) for m in ("p", "lfdr", "pi0"))
                        + " |"
                    )
        rows, kept = results[grids[0]]
        table = report.suppression_table(kept)
        lines += [
            "",
            f"Per class ({grids[0]}, B = 1, filter)",
            "",
            "| class | n | D_p | D_lfdr | D_π₀ |",
            "|---|---|---|---|---|",
        ]
        for cls in sorted({r["class"] for r in kept}):
            r0 = _at(table, 1, 1.0, "p", cls)
            lines.append(
                f"| {cls} | {r0['n'] if r0 else 0} | "
                + " | ".join(_cell(_at(table, 1, 1.0, m, cls)) for m in ("p", "lfdr", "pi0"))
                + " |"
            )
    return "\n".join(lines) + "\n"


FIGURES = (  # (run, report folder, figure) → copied as f"{run}_{figure}"
    ("square_224", "report", "fig3_before_after.png"),
    ("square_224", "report", "fig4_suppression.png"),
    ("square_224", "report", "fig5_sens_spec.png"),
    ("square_224", "report", "figS7_srmsd.png"),
    ("square_224", "report", "figS11_grid.png"),
    ("square_224_width", "report", "figS11_grid.png"),
    ("diffuse_224", "report", "fig4_suppression.png"),
    ("square_448", "report", "fig4_suppression.png"),
    ("diffuse_448", "report", "fig4_suppression.png"),
    ("square_224", "report_all", "fig4_suppression.png"),
)
"""The figures ``--figures DIR`` copies (those docs/real_model_study.md shows)."""


def copy_figures(out: str | Path, dest: str | Path) -> list[Path]:
    """Copy ``FIGURES`` of a finished study in ``out`` to ``dest`` as ``RUN[_all]_FIGURE``."""
    out, dest = Path(out), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for run, folder, fig in FIGURES:
        src = out / run / folder / fig
        if src.is_file():
            target = dest / f"{run}{'_all' if folder == 'report_all' else ''}_{fig}"
            target.write_bytes(src.read_bytes())
            copied.append(target)
    return copied


def run_study(
    out: str | Path,
    *,
    model: str = "imgfocus_dinov2_vits14",
    placements: int = 5,
    batch: int = 4,
    runs: tuple[Run, ...] = RUNS,
    progress: bool = True,
    log=print,
    figures: str | Path | None = None,
) -> Path:
    """Run (or resume) the whole study into ``out``; returns the path of ``study.md``.

    Parameters
    ----------
    out : path
        The study folder: ``data/``, one folder per run, ``study.md``.
    model : str
        Any name or path ``load_vit`` takes.
    placements : int
        Noise placements per photo (rows per photo and run).
    batch : int
        Images per ARB call.
    runs : tuple of Run
        The sweeps to run (default: all four of ``RUNS``).
    progress, log
        Progress bars, and where notes go.
    figures : path, optional
        Also copy the figures of ``FIGURES`` (and ``study.md``) there.
    """
    out = Path(out).expanduser()
    data = out / "data"
    if not data.is_dir():
        photos.write_photo_dataset(data)
    results = {}
    for i, run in enumerate(runs, 1):
        t0 = time.perf_counter()
        log(
            f"arb: study run {i}/{len(runs)}: {run.name} ({run.noise} noise, {run.size} px, "
            f"{run.grid.split(' alpha')[0]})"
        )
        cfg = sweep.SweepConfig(
            data=str(data),
            model=model,
            out=str(out / run.name),
            noise=run.noise,
            grid=sweep.parse_grid(run.grid),
            size=run.size,
            batch=batch,
            placements=placements,
        )
        sweep.run_sweep(cfg, progress=progress, log=log)
        report.make_report(out / run.name, out / run.name / "report")
        report.make_report(out / run.name, out / run.name / "report_all", include_filtered=True)
        rows, _ = report.read_results(out / run.name)
        results[run.name] = (rows, [r for r in rows if r["passed"]])
        log(f"arb: {run.name} done in {time.perf_counter() - t0:.0f} s -> {out / run.name}")
    path = out / "study.md"
    write_text_atomic(path, study_markdown(results, placements, model))
    if figures is not None:
        copy_figures(out, figures)
        write_text_atomic(Path(figures) / "study.md", path.read_text())
    return path
