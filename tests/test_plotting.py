"""The figures of ARB results: panels, labels, thresholds, colour bars, and no pyplot side effects."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from PIL import Image

from arb_jax import build_vit, plot_result, regularize_attention
from arb_jax.io.plotting import ATTN_UNIT, model_label, plot_batch, result_records


@pytest.fixture(scope="module")
def result():
    vit = build_vit("test_tiny8", None, image_size=(32, 48))
    x = jax.random.normal(jax.random.key(0), (3, 32, 48, 3))
    res = regularize_attention(vit, x, jax.random.key(1), n_boot=4, return_null=True, alpha=0.2, beta=0.25)
    roi = np.zeros((32, 48), bool)
    roi[8:24, 16:40] = True
    return vit, x, res, roi


def _texts(fig) -> str:
    """Every text of a figure: titles, axis labels, legends, free text, the suptitle."""
    out = [fig.get_suptitle()]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_title(loc="left"), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(out)


def test_figure_panels_thresholds_colour_bar_and_file(result, tmp_path):
    vit, x, res, roi = result
    fig = plot_result(res, images=x, index=1, roi=roi, path=tmp_path / "f" / "fig.png", model=vit)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["photo (noise ROI in red)", "attention (before)"]
    n = 4 * 6
    for method, ax in zip(("p", "lfdr", "pi0"), fig.axes[2:5], strict=True):
        kept = int(np.count_nonzero(np.asarray(res.maps[method][1]) > 0))
        assert ax.get_xlabel().startswith(f"kept {kept}/{n} (") and f"zeroed {n - kept} (" in ax.get_xlabel()
        assert "keeps z ≥ 0 and" in ax.get_title()
        assert len(ax.collections) >= 1  # the red ROI contour
        assert len(ax.images) == 2  # the dimmed photo under the map
    assert "α = 0.2" in fig.axes[2].get_title() and "β = 0.25" in fig.axes[3].get_title()
    assert fig.axes[5].get_ylabel() == ATTN_UNIT  # the colour bar, with its unit
    text = _texts(fig)
    pi0 = float(res.pi0[1])
    for needed in (
        "α = 0.2 (p-value map)",
        "β = 0.25 (LFDR map)",
        "(π₀ map)",
        f"π₀ = {pi0:.2f}",
        "bootstrap z⁰",
    ):
        assert needed in text, needed
    assert "random weights, not a pretrained model" in fig.get_suptitle()
    png = Image.open(tmp_path / "f" / "fig.png")
    width, height = png.size  # the file is the whole figure, at a readable resolution
    assert width / height == pytest.approx(fig.get_figwidth() / fig.get_figheight(), abs=2 / height)
    assert height >= 4 * 100
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_figure_without_null_or_photo_says_so_and_is_still_titled(result, tmp_path):
    res = result[2].replace(z_null=None)  # as regularize_attention returns it by default
    fig = plot_result(res, path=tmp_path / "g.png")
    text = _texts(fig)
    assert "return_null=True" in text and "no photo given" in text
    assert fig.get_suptitle().startswith("ARB — B = 4 — π₀ = ")


def test_model_label_flags_toys():
    assert model_label("demo").endswith("(a toy ViT trained by arb-jax, NOT DINO)")
    assert model_label("imgfocus_dinov2_vits14") == "imgfocus_dinov2_vits14"
    assert model_label(None) == ""


@pytest.mark.parametrize("n", [1, 3])
def test_batch_figure_one_row_per_image(result, tmp_path, n):
    vit, x, res, roi = result
    recs = result_records(res, x, [roi] * 3, names=["a", "b", "c"])[:n]
    fig = plot_batch(recs, path=tmp_path / "b.png", model="demo")
    assert len(fig.axes) == 6 * n  # five panels and a colour bar per row
    assert [fig.axes[6 * i].get_ylabel().split("\n")[0] for i in range(n)] == ["a", "b", "c"][:n]
    assert "NOT DINO" in fig.get_suptitle() and "α = 0.2" in fig.get_suptitle()
    for i in range(n):
        for k, m in enumerate(("p", "lfdr", "pi0")):
            kept = int(np.count_nonzero(np.asarray(res.maps[m][i]) > 0))
            assert fig.axes[6 * i + 2 + k].get_xlabel().startswith(f"kept {kept}/24 (")
    assert Image.open(tmp_path / "b.png").size[1] > 200 * n
