"""Figures in the style of the paper's Fig. 2: image, attention, regularised maps, histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arb_jax.io.images import denormalize


def subplots(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """``(fig, axes)`` like ``pyplot.subplots`` but without pyplot: no global state, no backend change.

    The figure is not registered with pyplot, so nothing needs closing; it still renders inline in
    Jupyter and saves with ``fig.savefig``.
    """
    fig = Figure(figsize=figsize, layout=kwargs.pop("layout", None))
    return fig, fig.subplots(*args, **kwargs)


METHOD_TITLES = {"p": "p-value regularised", "lfdr": "LFDR regularised", "pi0": "π₀ regularised"}


def _roi_outline(ax: Any, roi: np.ndarray | None) -> None:
    if roi is not None and np.any(roi):
        ax.contour(np.asarray(roi, float), levels=[0.5], colors="red", linewidths=1.2)


def _show_map(
    ax: Any, m: np.ndarray, hw: tuple[int, int], vmax: float, title: str, roi: np.ndarray | None
) -> None:
    ax.imshow(
        m,
        cmap="inferno",
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
        extent=(-0.5, hw[1] - 0.5, hw[0] - 0.5, -0.5),
    )
    _roi_outline(ax, roi)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def _unit_histogram(ax: Any, values: np.ndarray, color: str, title: str, xlabel: str) -> None:
    """Histogram of values in [0, 1] (20 bins) over the patches."""
    ax.hist(np.ravel(values), bins=20, range=(0, 1), color=color)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("patches")


def plot_result(
    res: Any,
    images: Any = None,
    path: str | Path | None = None,
    index: int = 0,
    roi: np.ndarray | None = None,
    title: str | None = None,
) -> Any:
    """Figure of one image's ARB result (like the paper's Fig. 2); saved to ``path`` if given.

    res: ``ARBResult``; images: (N, H, W, 3) normalised inputs (for the photo panel); index: which
    image; roi: optional (H, W) bool mask outlined in red (e.g. the injected noise square).
    Returns the matplotlib Figure.
    """
    d = {k: np.asarray(v)[index] for k, v in res.to_numpy().items() if np.ndim(v) > 1}
    attn, z, p, lfdr = d["attn"], d["z"], d["p"], d["lfdr"]
    pi0 = float(np.asarray(res.pi0)[index])
    if images is not None:
        img = np.clip(denormalize(np.asarray(images)[index]), 0, 1)
        hw = img.shape[:2]
    else:
        img, hw = None, attn.shape
    vmax = float(attn.max()) or 1.0

    fig, axes = subplots(2, 4, figsize=(15, 7.4), layout="constrained")
    ax = axes[0, 0]
    if img is not None:
        ax.imshow(img)
        _roi_outline(ax, roi)
    ax.set_title("image" + (" (noise ROI in red)" if roi is not None else ""), fontsize=10)
    ax.set_axis_off()
    _show_map(axes[0, 1], attn, hw, vmax, "attention (CLS, head mean)", roi)
    for ax, method in zip((axes[0, 2], axes[0, 3], axes[1, 0]), ("p", "lfdr", "pi0"), strict=True):
        m = d[f"map_{method}"]
        kept = int(np.count_nonzero(m > 0))
        share = 100.0 * kept / m.size
        digits = 0 if share >= 10 else 1
        label = f"{METHOD_TITLES[method]} ({kept}/{m.size} patches, {share:.{digits}f}%)"
        _show_map(ax, m, hw, vmax, label, roi)

    ax = axes[1, 1]
    bins = 40
    if "z_null" in d:
        ax.hist(d["z_null"].ravel(), bins=bins, density=True, alpha=0.55, color="gray", label="bootstrap z⁰")
    ax.hist(z.ravel(), bins=bins, density=True, alpha=0.7, color="tab:blue", label="observed z")
    ax.set_title("z-scores", fontsize=10)
    ax.set_xlabel("z")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    _unit_histogram(axes[1, 2], p, "tab:green", "p-values", "p")
    axes[1, 2].axhline(pi0 * p.size / 20, color="k", ls="--", lw=1, label=f"π₀ = {pi0:.2f}")
    axes[1, 2].legend(fontsize=8)
    _unit_histogram(axes[1, 3], lfdr, "tab:orange", "local FDR", "lfdr")
    if title:
        fig.suptitle(title, fontsize=12)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
