"""The Fig. 2-style figure: panels, labels, the ROI outline, and no pyplot side effects."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from PIL import Image

from arb_jax import build_vit, plot_result, regularize_attention


@pytest.mark.slow
def test_figure_panels_titles_and_file(tmp_path):
    vit = build_vit("test_tiny8", None, image_size=(32, 48))
    x = jax.random.normal(jax.random.key(0), (2, 32, 48, 3))
    res = regularize_attention(vit, x, jax.random.key(1), n_boot=4, return_null=True)
    roi = np.zeros((32, 48), bool)
    roi[8:24, 16:40] = True
    fig = plot_result(res, images=x, index=1, roi=roi, path=tmp_path / "f" / "fig.png", title="T")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["image (noise ROI in red)", "attention (CLS, head mean)"]
    n = 4 * 6
    for method, ax in zip(("p", "lfdr", "pi0"), (fig.axes[2], fig.axes[3], fig.axes[4]), strict=True):
        kept = int(np.count_nonzero(np.asarray(res.maps[method][1]) > 0))
        share = 100 * kept / n
        assert ax.get_title().endswith(f"({kept}/{n} patches, {share:.{0 if share >= 10 else 1}f}%)")
    assert [ax.get_xlabel() for ax in fig.axes[5:8]] == ["z", "p", "lfdr"]
    assert fig.axes[6].get_legend().get_texts()[0].get_text() == f"π₀ = {float(res.pi0[1]):.2f}"
    assert len(fig.axes[0].collections) >= 1  # the red ROI contour
    assert fig.get_suptitle() == "T"
    png = Image.open(tmp_path / "f" / "fig.png")
    width, height = png.size  # the file is the whole figure, at a readable resolution
    assert width / height == pytest.approx(fig.get_figwidth() / fig.get_figheight(), abs=2 / height)
    assert height >= 4 * 100
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
