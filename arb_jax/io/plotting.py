"""Figures of ARB results: each map over the dimmed photo, colour bars, thresholds on the histograms.

``plot_result`` draws one image in the style of the paper's Fig. 2 (and of attention figures since
DINO): the photo, the CLS attention and the three regularised maps (p-value, LFDR, π₀), each
drawn at the photo's resolution over a dimmed grey copy of it, on one colour scale with a colour
bar; the noise ROI outlined in red; below, the histograms of z (with the bootstrap null), p and
lfdr with every threshold drawn and named, and a panel of the settings. ``plot_batch`` draws one
row of the same five maps per image, for a batch. Kept and zeroed patches are both counted in
every map's label. Nothing here uses pyplot (no global state, no backend change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arb_jax.io.images import denormalize

__all__ = [
    "ATTN_UNIT",
    "METHOD_TITLES",
    "model_label",
    "plot_batch",
    "plot_result",
    "result_records",
    "subplots",
]


def subplots(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """``(fig, axes)`` like ``pyplot.subplots`` but without pyplot: no global state, no backend change.

    The figure is not registered with pyplot, so nothing needs closing; it still renders inline in
    Jupyter and saves with ``fig.savefig``.
    """
    fig = Figure(figsize=figsize, layout=kwargs.pop("layout", None))
    return fig, fig.subplots(*args, **kwargs)


METHOD_TITLES = {"p": "p-value map", "lfdr": "LFDR map", "pi0": "π₀ map"}
CMAP = "inferno"
ATTN_UNIT = "CLS attention (softmax weight per patch)"
_TOY_NAMES = {"demo", "demo_vit"}


def model_label(model: Any) -> str:
    """How a figure names a model: its name, flagged when it is a toy or random.

    Parameters
    ----------
    model : str, arb_jax.models.ViT or None
        A model name (as ``arb regularize --model``) or a loaded ViT (its ``meta["name"]``,
        ``meta["random_init"]``).

    Returns
    -------
    str
        E.g. ``"imgfocus_dinov2_vits14"``, ``"demo_vit (a toy ViT trained by arb-jax, NOT DINO)"``,
        ``""`` for None.
    """
    if model is None:
        return ""
    meta = getattr(model, "meta", None)
    if meta is not None:
        name = str(meta.get("name") or getattr(getattr(model, "config", None), "name", "") or "ViT")
        if meta.get("random_init"):
            return f"{name} (random weights, not a pretrained model)"
    else:
        name = str(model)
    if Path(name).name in _TOY_NAMES:
        return f"{name} (a toy ViT trained by arb-jax, NOT DINO)"
    return name


def result_records(
    res: Any, images: Any = None, rois: Any = None, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One plain dict of host arrays per image of an ``ARBResult``, as `plot_batch` takes them.

    Parameters
    ----------
    res : arb_jax.ARBResult
        N images' result.
    images : (N, H, W, 3) array or None
        The normalised inputs (as given to ``regularize_attention``).
    rois : (N, H, W) bool array, sequence of (H, W) masks or None, or None
        Noise ROIs to outline.
    names : sequence of N str or None
        Row labels.

    Returns
    -------
    list of dict
        Per image: ``attn``, ``z``, ``p``, ``lfdr``, ``map_*`` (h, w), ``pi0``, ``mu0``, ``sigma0``
        (scalars), ``z_null`` (B, h, w) if returned, ``image`` (H, W, 3) and ``roi`` (H, W) if
        given, ``name``, and ``alpha``, ``beta``, ``n_boot``, ``sampler``, ``width``, ``pvalue``
        from ``res.options``.
    """
    arrays = res.to_numpy()
    n = int(np.asarray(arrays["pi0"]).shape[0])
    opts = res.options
    out = []
    for i in range(n):
        rec: dict[str, Any] = {k: np.asarray(v)[i] for k, v in arrays.items()}
        if images is not None:
            rec["image"] = np.asarray(images)[i]
        if rois is not None and rois[i] is not None:
            rec["roi"] = np.asarray(rois[i])
        rec["name"] = names[i] if names is not None else (f"image {i}" if n > 1 else "")
        for k in ("alpha", "beta", "n_boot", "sampler", "width", "pvalue"):
            rec[k] = getattr(opts, k)
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- pieces


def _repeat(rec: Mapping[str, Any]) -> int:
    """Pixels per patch (the statistics' percentiles are over the upsampled map)."""
    img = rec.get("image")
    if img is None:
        return 1
    h, w = np.shape(rec["p"])
    return max(1, (np.shape(img)[0] // h) * (np.shape(img)[1] // w))


def _threshold(value: Any, stat: np.ndarray, repeat: int) -> tuple[float, str]:
    """(numeric threshold, how it was given) for a number or a ``Percentile(q)``."""
    q = getattr(value, "q", None)
    if q is not None:
        q = float(np.asarray(q))
        t = float(np.percentile(np.repeat(np.ravel(stat), repeat), q))
        decimals = getattr(value, "decimals", None)
        if decimals is not None:  # as the pipeline cut the map: the rounded percentile
            return round(t, decimals), f"P{q:g}, {decimals} dp"
        return t, f"P{q:g}"
    return float(value), ""


def _pvalue_kind(rec: Mapping[str, Any]) -> str:
    """How the p-values were computed, for the p histogram's axis."""
    method = rec.get("pvalue", "upper")
    kinds = {"upper": "one-sided", "plus_one": "one-sided, plus one", "two_sided": "two-sided"}
    if isinstance(method, str):
        return kinds.get(method, "two-sided, pooled" if method == "attnreg" else method)
    return getattr(method, "__name__", "a user's p-value")


def _thresholds(rec: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    """``{"alpha": .., "beta": .., "t": ..}``: the numbers the three maps were cut at."""
    r = _repeat(rec)
    p = np.asarray(rec["p"], np.float64)
    pi0 = float(np.asarray(rec["pi0"]))
    out = {
        "alpha": _threshold(rec.get("alpha", 0.3), p, r),
        "beta": _threshold(rec.get("beta", 0.3), np.asarray(rec["lfdr"], np.float64), r),
    }
    finite = p[np.isfinite(p)]
    t = float(np.percentile(np.repeat(finite, r), 100.0 * (1.0 - pi0))) if finite.size else float("nan")
    out["t"] = (t, "")
    return out


def _share(m: np.ndarray) -> str:
    """``"kept 30/144 (21%), zeroed 114 (79%)"``."""
    n = m.size
    kept = int(np.count_nonzero(np.asarray(m) > 0))

    def pct(k: int) -> str:  # never "0%" or "100%" unless it is exactly so
        s = 100.0 * k / n
        return f"{s:.0f}%" if k in (0, n) or 10 <= s <= 90 else f"{s:.1f}%"

    return f"kept {kept}/{n} ({pct(kept)}), zeroed {n - kept} ({pct(n - kept)})"


def _batch_rule(value: Any, symbol: str, stat: str) -> str:
    """A threshold for a whole batch: its number, or which percentile of each image's statistic."""
    q = getattr(value, "q", None)
    if q is None:
        return f"{symbol} = {float(value):.3g}"
    decimals = getattr(value, "decimals", None)
    return f"{symbol} = P{float(np.asarray(q)):g} of each image's {stat}" + (
        f" ({decimals} dp)" if decimals is not None else ""
    )


def _rules(rec: Mapping[str, Any]) -> dict[str, str]:
    th = _thresholds(rec)
    a, a_how = th["alpha"]
    b, b_how = th["beta"]
    a_txt = f"α = {a:.3g}" + (f" ({a_how})" if a_how else "")
    b_txt = f"β = {b:.3g}" + (f" ({b_how})" if b_how else "")
    return {
        "p": f"z ≥ 0 and p ≤ {a_txt}",
        "lfdr": f"z ≥ 0 and lfdr ≤ {b_txt}",
        "pi0": f"z ≥ 0 and p ≤ t = {th['t'][0]:.3g} (from π₀)",
    }


def _dimmed(img: np.ndarray) -> np.ndarray:
    """The photo in grey, darkened to [0.1, 0.55]: the maps' colours stay readable over it."""
    grey = np.clip(denormalize(np.asarray(img)), 0, 1) @ np.array([0.299, 0.587, 0.114])
    return 0.1 + 0.45 * grey


def _outline(ax: Any, roi: Any) -> None:
    if roi is not None and np.any(roi):
        ax.contour(np.asarray(roi, float), levels=[0.5], colors="red", linewidths=1.2)


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _draw_map(ax: Any, rec: Mapping[str, Any], m: np.ndarray, vmax: float, *, zeroed_clear: bool) -> Any:
    """A map on the patch grid drawn over the dimmed photo at the photo's size; returns the image.

    Attention is drawn semi-transparent everywhere; a regularised map leaves its zeroed patches
    clear (the grey photo shows through) and draws its kept patches opaque.
    """
    img = rec.get("image")
    h, w = np.shape(m)
    H, W = (np.shape(img)[:2]) if img is not None else (h, w)
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)
    if img is not None:
        ax.imshow(_dimmed(img), cmap="gray", vmin=0, vmax=1, interpolation="antialiased", extent=extent)
    else:
        ax.set_facecolor("0.8")
    shown = np.ma.masked_where(np.asarray(m) <= 0, m) if zeroed_clear else m
    im = ax.imshow(
        shown,
        cmap=CMAP,
        vmin=0.0,
        vmax=vmax,
        alpha=0.9 if zeroed_clear else 0.7,
        interpolation="nearest",
        extent=extent,
    )
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    _outline(ax, rec.get("roi"))
    _bare(ax)
    return im


def _photo(ax: Any, rec: Mapping[str, Any]) -> None:
    img = rec.get("image")
    if img is not None:
        ax.imshow(np.clip(denormalize(np.asarray(img)), 0, 1))
    else:
        ax.text(0.5, 0.5, "no photo given\n(images=...)", ha="center", va="center", transform=ax.transAxes)
    _outline(ax, rec.get("roi"))
    _bare(ax)


def _map_row(fig: Any, axes: Sequence[Any], rec: Mapping[str, Any], *, long: bool, fs: float) -> None:
    """Photo, attention and the three regularised maps of one image in the first five axes, their
    colour bar in the sixth."""
    attn = np.asarray(rec["attn"])
    vmax = float(np.nanmax(attn)) if np.isfinite(attn).any() else 1.0
    vmax = vmax or 1.0
    _photo(axes[0], rec)
    roi_note = " (noise ROI in red)" if rec.get("roi") is not None else ""
    axes[0].set_title("photo" + roi_note, fontsize=fs)
    im = _draw_map(axes[1], rec, attn, vmax, zeroed_clear=False)
    words = _map_words(rec)
    axes[1].set_title(f"{words['title']} (before)", fontsize=fs)
    total = f"sum 1 over {attn.size} patches" if words["unit"] == ATTN_UNIT else f"over {attn.size} patches"
    axes[1].set_xlabel(f"max {vmax:.3g}, {total}", fontsize=fs - 1)
    rules = _rules(rec)
    for ax, method in zip(axes[2:5], ("p", "lfdr", "pi0"), strict=True):
        m = np.asarray(rec[f"map_{method}"])
        _draw_map(ax, rec, m, vmax, zeroed_clear=True)
        title = f"{METHOD_TITLES[method]} (after)"
        ax.set_title(f"{title}\nkeeps {rules[method]}" if long else title, fontsize=fs)
        ax.set_xlabel(_share(m), fontsize=fs - 1)
    cb = fig.colorbar(im, cax=axes[5])
    cb.set_label(words["unit"] if long else words["short"], fontsize=fs - 1)
    cb.ax.tick_params(labelsize=fs - 2)
    cb.solids.set_alpha(1.0)


def _map_words(rec: Mapping[str, Any]) -> dict[str, str]:
    """How the panels name the record's map: the default CLS attention, or another map by name."""
    name = rec.get("map", "cls_attention")
    if name == "cls_attention":
        return {"title": "attention", "unit": ATTN_UNIT, "short": "attention", "scaled": "log attention"}
    return {"title": name, "unit": f"{name} score per patch", "short": name, "scaled": f"{name} scores"}


def _bins(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Bin edges over [lo, hi]: about √n bins (10 to 40), so 144 values get 12, not 40 spikes."""
    k = int(np.clip(round(np.sqrt(max(values.size, 1))), 10, 40))
    return np.linspace(lo, hi, k + 1)


def _z_hist(ax: Any, rec: Mapping[str, Any], fs: float) -> None:
    z = np.ravel(np.asarray(rec["z"], np.float64))
    z = z[np.isfinite(z)]
    null = rec.get("z_null")
    null = None if null is None else np.ravel(np.asarray(null, np.float64))
    both = z if null is None else np.concatenate([z, null[np.isfinite(null)]])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (-1.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    edges = _bins(z, lo, hi)
    if null is not None:
        ax.hist(null, bins=edges, density=True, color="0.6", alpha=0.7, label=f"bootstrap z⁰ ({null.size})")
    ax.hist(z, bins=edges, density=True, histtype="stepfilled", alpha=0.6, color="tab:blue")
    ax.hist(z, bins=edges, density=True, histtype="step", color="tab:blue", label=f"observed z ({z.size})")
    ax.axvline(0.0, color="k", ls=":", lw=1.2, label="z = 0: every map keeps z ≥ 0")
    if null is None:
        ax.text(
            0.02,
            0.97,
            "bootstrap z⁰ not returned\n(return_null=True shows it)",
            transform=ax.transAxes,
            va="top",
            fontsize=fs - 2,
        )
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.set_title("z-scores of the patches", fontsize=fs)
    ax.set_xlabel(f"z ({_map_words(rec)['scaled']}, standardised by the bootstrap null)", fontsize=fs - 1)
    ax.set_ylabel("density", fontsize=fs - 1)
    ax.legend(fontsize=fs - 2, loc="upper right")


def _p_hist(ax: Any, rec: Mapping[str, Any], fs: float) -> None:
    p = np.ravel(np.asarray(rec["p"], np.float64))
    th = _thresholds(rec)
    pi0 = float(np.asarray(rec["pi0"]))
    edges = np.linspace(0, 1, 21)
    ax.hist(p, bins=edges, color="tab:green", alpha=0.75)
    ax.axvline(th["alpha"][0], color="tab:red", lw=1.5, label=f"α = {th['alpha'][0]:.3g} (p-value map)")
    ax.axvline(th["t"][0], color="tab:purple", lw=1.5, ls="-.", label=f"t = {th['t'][0]:.3g} (π₀ map)")
    ax.axhline(
        pi0 * p.size / (len(edges) - 1),
        color="k",
        ls="--",
        lw=1,
        label=f"π₀ = {pi0:.2f}: height of the null share",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # the legend above the bars
    ax.set_title("p-values (kept: p ≤ threshold)", fontsize=fs)
    ax.set_xlabel(f"p (bootstrap, {_pvalue_kind(rec)})", fontsize=fs - 1)
    ax.set_ylabel("patches", fontsize=fs - 1)
    ax.legend(fontsize=fs - 2, loc="upper center")


def _lfdr_hist(ax: Any, rec: Mapping[str, Any], fs: float) -> None:
    lfdr = np.ravel(np.asarray(rec["lfdr"], np.float64))
    b = _thresholds(rec)["beta"][0]
    ax.hist(lfdr, bins=np.linspace(0, 1, 21), color="tab:orange", alpha=0.8)
    ax.axvline(b, color="tab:red", lw=1.5, label=f"β = {b:.3g} (LFDR map)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    ax.set_title("local FDR (kept: lfdr ≤ β)", fontsize=fs)
    ax.set_xlabel("lfdr (probability a patch is null)", fontsize=fs - 1)
    ax.set_ylabel("patches", fontsize=fs - 1)
    ax.legend(fontsize=fs - 2, loc="upper center")


def _settings_text(rec: Mapping[str, Any], model: str) -> str:
    th = _thresholds(rec)
    h, w = np.shape(rec["attn"])
    img = rec.get("image")
    size = f"{np.shape(img)[0]} × {np.shape(img)[1]} px, " if img is not None else ""
    lines = [
        f"model: {model or '(not given: model=...)'}",
        f"input: {size}{h} × {w} patches",
        f"bootstrap: B = {rec.get('n_boot', '?')} null images, {rec.get('sampler', '?')}"
        + (f" (width {float(rec['width']):g})" if rec.get("sampler") == "normal" and "width" in rec else ""),
        f"p-value: {rec.get('pvalue', '?')};  π₀ = {float(np.asarray(rec['pi0'])):.3f}",
        f"α = {th['alpha'][0]:.3g} (p-value map),  β = {th['beta'][0]:.3g} (LFDR map)",
        f"t = {th['t'][0]:.3g}: the 100·(1 − π₀) percentile of p",
        f"null of {_map_words(rec)['scaled']}: "
        f"μ₀ = {float(np.asarray(rec['mu0'])):.3g}, "
        f"σ₀ = {float(np.asarray(rec['sigma0'])):.3g}",
        "",
        "Every map keeps a patch's attention or zeroes it;",
        "zeroed patches show the grey photo.",
    ]
    return "\n".join(lines)


def _default_title(rec: Mapping[str, Any], model: str) -> str:
    name = rec.get("name") or ""
    parts = [f"ARB on {name}" if name else "ARB", model or None, f"B = {rec.get('n_boot', '?')}"]
    parts.append(f"π₀ = {float(np.asarray(rec['pi0'])):.2f}")
    return " — ".join(p for p in parts if p)


def _save(fig: Figure, path: str | Path | None, dpi: float) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)


# ----------------------------------------------------------------------------- figures


def plot_result(
    res: Any,
    images: Any = None,
    path: str | Path | None = None,
    index: int = 0,
    roi: np.ndarray | None = None,
    title: str | None = None,
    model: Any = None,
    map_name: str = "cls_attention",
) -> Figure:
    """Figure of one image's ARB result (like the paper's Fig. 2); saved to ``path`` if given.

    Top row: the photo (ROI outlined in red), the CLS attention and the p-value, LFDR and π₀
    maps, each over the dimmed grey photo at its full resolution, on one colour scale (the colour
    bar: attention, the softmax weight of a patch); each map's title says which patches it keeps,
    its label how many it kept and zeroed. Bottom row: the histograms of z (with the bootstrap
    null when ``res`` has it), p (α, the π₀ threshold t and the π₀ level drawn) and lfdr (β
    drawn), and the settings.

    Parameters
    ----------
    res : arb_jax.ARBResult
        The result (``return_null=True`` adds the null to the z histogram).
    images : (N, H, W, 3) float array or None
        The normalised inputs given to ``regularize_attention`` (the photo and the backdrop).
    path : str or Path or None
        Where to save the PNG (folders created).
    index : int
        Which image of the batch.
    roi : (H, W) bool array or None
        Outlined in red (e.g. the injected noise square).
    title : str or None
        The figure's title (default: "ARB — model — B — π₀").
    model : str or arb_jax.models.ViT or None
        The model, named in the title and the settings (`model_label`: a toy is flagged).
    map_name : str, default "cls_attention"
        The map ARB ran on (`arb_jax.models.MAPS`), named in the panels and the colour bar.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rec = result_records(res, images)[index]
    rec["map"] = map_name
    if roi is not None:
        rec["roi"] = np.asarray(roi)
    rec["name"] = ""
    label = model_label(model)
    fig = Figure(figsize=(19, 8.2), layout="constrained")
    outer = fig.add_gridspec(2, 1, height_ratios=[1.25, 1])
    top = outer[0].subgridspec(1, 6, width_ratios=[1, 1, 1, 1, 1, 0.05])
    _map_row(fig, [fig.add_subplot(top[0, k]) for k in range(6)], rec, long=True, fs=10)
    bottom = outer[1].subgridspec(1, 5, width_ratios=[1.6, 1, 1, 1.1, 0.01])
    _z_hist(fig.add_subplot(bottom[0, 0]), rec, 10)
    _p_hist(fig.add_subplot(bottom[0, 1]), rec, 10)
    _lfdr_hist(fig.add_subplot(bottom[0, 2]), rec, 10)
    ax = fig.add_subplot(bottom[0, 3])
    ax.set_axis_off()
    ax.text(0.0, 1.0, _settings_text(rec, label), va="top", ha="left", fontsize=9, transform=ax.transAxes)
    ax.set_title("settings", fontsize=10, loc="left")
    fig.suptitle(title or _default_title(rec, label), fontsize=12)
    _save(fig, path, 110)
    return fig


def plot_batch(
    records: Any,
    images: Any = None,
    path: str | Path | None = None,
    *,
    rois: Any = None,
    names: Sequence[str] | None = None,
    title: str | None = None,
    model: Any = None,
) -> Figure:
    """One row per image: photo, attention, p-value, LFDR and π₀ maps over the dimmed photo.

    The same panels as `plot_result`'s top row, for a batch (the layout is the same for 1 image
    and for 50; each row has its own colour bar, attention being on each image's own scale).

    Parameters
    ----------
    records : arb_jax.ARBResult or sequence of mapping
        A result (with ``images``, ``rois``, ``names`` as in `result_records`), or per-image dicts
        as `result_records` returns them (e.g. read back from ``arb regularize``'s ``.npz``:
        ``attn``, ``z``, ``p``, ``lfdr``, ``map_p``, ``map_lfdr``, ``map_pi0`` (h, w), ``pi0``,
        ``image`` (H, W, 3, normalised), optional ``roi``, ``name``, ``alpha``, ``beta``).
    images, rois, names
        With an ``ARBResult`` only (see `result_records`).
    path : str or Path or None
        Where to save the PNG.
    title : str or None
        Figure title (default: "ARB on N images — model").
    model : str or arb_jax.models.ViT or None
        Named in the title (`model_label`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if hasattr(records, "to_numpy"):
        records = result_records(records, images, rois, names)
    records = list(records)
    if not records:
        raise ValueError("plot_batch: no images")
    n = len(records)
    label = model_label(model)
    row_h = 2.35
    fig = Figure(figsize=(14.5, 0.9 + row_h * n), layout="constrained")
    axes = np.asarray(fig.subplots(n, 6, squeeze=False, width_ratios=[1, 1, 1, 1, 1, 0.05]))
    for i, rec in enumerate(records):
        _map_row(fig, list(axes[i]), rec, long=False, fs=9)
        pi0 = float(np.asarray(rec["pi0"]))
        axes[i, 0].set_ylabel(f"{rec.get('name') or f'image {i}'}\nπ₀ = {pi0:.2f}", fontsize=9)
        if i:
            for ax in axes[i, :5]:
                ax.set_title("")
    first = records[0]
    alpha = _batch_rule(first.get("alpha", 0.3), "α", "p")
    beta = _batch_rule(first.get("beta", 0.3), "β", "lfdr")
    head = f"ARB on {n} image{'s' if n > 1 else ''}" + (f" — {label}" if label else "")
    keep = (
        f"p-value map keeps z ≥ 0 and p ≤ {alpha}; LFDR map keeps z ≥ 0 and lfdr ≤ {beta}; "
        "π₀ map keeps z ≥ 0 and p ≤ t "
        "(t from each image's π₀); zeroed patches show the grey photo"
    )
    head += f" — B = {first.get('n_boot', '?')}, {first.get('sampler', '?')} bootstrap"
    fig.suptitle(f"{title or head}\n{keep}", fontsize=10)
    _save(fig, path, 100 if n <= 12 else 72)
    return fig
