"""``preset="attnreg"`` against a pixel-level numpy transcription of the authors' pipeline.

The transcription (tests/_authors.py) is written from the method's description; it takes the
observed and the null attention maps the model made (the same null images as the pipeline's,
from ``null_images``), upsamples them to pixels and computes everything in float64, with scipy's
spline for π₀ and statsmodels for the lfdr. The project computes on the patch grid in float32.
Images: scikit-image photos resized to 488 × 488 (the aspect ratio not kept, as the authors),
centre-cropped to the patch, with the authors' 100 px noise square; B = 1 and B = 8; the demo
ViT (patch 8: a 61 × 61 grid, the paper's) and the real pretrained DINOv2 ViT-S/14 (34 × 34).

Tolerances (float32 against float64): z 2e-5 absolute. p-values: a p-value is a count of pool
values above |z|, so where values of the pool lie within rounding of each other the two orders
can differ: every p must lie between the transcription's counts at |z| ± 2·2e-5 (equal where
no other pool value is that close; measured: 0.11 % of the pixels differ on the demo model with
B = 1, 0.59 % with B = 8, 1.1 % on the real model with B = 8). π₀ 1e-5; lfdr
5e-5 absolute; each shrunk map equal on all but 0.5 % of the pixels (entries whose statistic
sits on a threshold within rounding); mean percentiles and non-zero % 0.05 points; D and its
error 5e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _authors import pipeline as authors_pipeline
from _authors import roi_metrics, suppression, upsample

from arb_jax import load_vit, null_images, regularize_attention
from arb_jax.core.regularize import Percentile
from arb_jax.io import images
from arb_jax.study import metrics, simulate

PHOTOS = ("astronaut", "chelsea", "coffee")
SIZE = 488
NOISE = 100  # the authors' square at 488 px
TOL_Z, TOL_PI0, TOL_LFDR, TOL_PERC, TOL_D = 2e-5, 1e-5, 5e-5, 0.05, 5e-4
MAX_DIFF_SHARE = 5e-3


def _inputs(patch: int) -> tuple[np.ndarray, np.ndarray]:
    photos = images.sample_images()
    xs, rois = [], []
    for i, name in enumerate(PHOTOS):
        x = images.prepare(photos[name], (SIZE, SIZE), patch)
        xi, roi = simulate.square_noise(jax.random.key(100 + i), x, NOISE)
        xs.append(np.asarray(xi))
        rois.append(np.asarray(roi))
    return np.stack(xs), np.stack(rois)


def _compare(vit, n_boot: int, **thresholds) -> None:
    patch = vit.config.patch
    x, rois = _inputs(patch)
    vit = vit.at_size(x.shape[1:3])
    key = jax.random.key(3)
    res = regularize_attention(vit, x, key, n_boot=n_boot, preset="attnreg", boot_chunk=n_boot, **thresholds)
    assert res.options.preset == "attnreg" and res.options.lfdr_pi0 == "shared"
    nulls = null_images(key, x, n_boot)
    before, after = {m: [] for m in ("p", "lfdr", "pi0")}, {m: [] for m in ("p", "lfdr", "pi0")}
    ours_b, ours_a = {m: [] for m in after}, {m: [] for m in after}
    kw = {}
    if isinstance(thresholds.get("alpha"), Percentile):
        kw["alpha_q"] = thresholds["alpha"].q
    if isinstance(thresholds.get("beta"), Percentile):
        kw["beta_q"] = thresholds["beta"].q
    for i in range(len(x)):
        null = np.asarray(vit.cls_attention(jnp.asarray(nulls[i])).mean(1))
        ref = authors_pipeline(np.asarray(res.attn[i]), null, patch, **kw)
        z = upsample(np.asarray(res.z[i]), patch)
        np.testing.assert_allclose(z, ref["z"], atol=TOL_Z)
        p = upsample(np.asarray(res.p[i]), patch)
        # p = #{v in pool: v > |z|} / |pool|: where |z| and the pool are known to TOL_Z, ours must
        # lie between the counts at |z| + 2 TOL_Z and |z| - 2 TOL_Z (ties broken by rounding)
        az, srt = np.abs(ref["z"]), ref["pool"]
        lo = (srt.size - np.searchsorted(srt, az + 2 * TOL_Z, side="right")) / srt.size
        hi = (srt.size - np.searchsorted(srt, az - 2 * TOL_Z, side="right")) / srt.size
        assert np.all((p >= lo - 1e-6) & (p <= hi + 1e-6))  # where lo == hi: equal
        assert abs(float(res.pi0[i]) - ref["pi0"]) <= TOL_PI0
        assert float(res.lfdr_pi0[i]) == float(res.pi0[i])  # one π₀ for both
        np.testing.assert_allclose(upsample(np.asarray(res.lfdr[i]), patch), ref["lfdr"], atol=TOL_LFDR)
        for m in ("z", "p", "lfdr", "pi0"):
            ours = upsample(np.asarray(res.maps[m][i]), patch)
            share = np.mean(~np.isclose(ours, ref["maps"][m], rtol=1e-6, atol=0))
            assert share <= MAX_DIFF_SHARE, (m, share)
        roi = rois[i]
        a = upsample(np.asarray(res.attn[i], np.float64), patch)
        weights = simulate.roi_patch_weights(roi, patch)
        stack = jnp.stack([res.maps[m][i] for m in after])
        qb, qa = metrics.mean_percentile_in_roi(res.attn[i], stack, weights, patch)
        qnz = metrics.nonzero_percent_in_roi(stack, weights)
        for j, m in enumerate(after):
            pb, _ = roi_metrics(a, a, roi)
            pa, nz = roi_metrics(a, ref["maps"][m], roi)
            assert abs(pa - float(qa[j])) <= TOL_PERC and abs(nz - float(qnz[j])) <= TOL_PERC, m
            before[m].append(pb)
            after[m].append(pa)
            ours_b[m].append(float(qb))
            ours_a[m].append(float(qa[j]))
    for m in after:
        d_ref, err_ref = suppression(before[m], after[m])
        d, err = metrics.suppression_factor(np.array(ours_b[m]), np.array(ours_a[m]))
        assert abs(d - d_ref) <= TOL_D and abs(err - err_ref) <= TOL_D, (m, d, d_ref)


@pytest.fixture(scope="module")
def demo():
    return load_vit("demo")


@pytest.fixture(scope="module")
def real():
    return load_vit("imgfocus_dinov2_vits14", progress=False)


@pytest.mark.parametrize("n_boot", [1, 8])
def test_demo_model_equals_the_transcription(demo, n_boot):
    _compare(demo, n_boot)


def test_demo_model_percentile_thresholds_rounded_as_the_authors(demo):
    _compare(demo, 1, alpha=Percentile(10), beta=Percentile(20))


@pytest.mark.slow
@pytest.mark.parametrize("n_boot", [1, 8])
def test_real_model_equals_the_transcription(real, n_boot):
    _compare(real, n_boot)
