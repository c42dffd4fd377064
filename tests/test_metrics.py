"""Simulation-study metrics (arb_jax.study.metrics) on the patch grid against numpy PIXEL-level
code (docs/method.md §5).

The reference below nearest-upsamples each patch map with np.repeat and uses a pixel ROI mask, so
it is the paper's pixel definition, independent of the weighted patch-grid computation.
Tolerances: float32 maps; percentages (0..100) to atol 1e-4 (1e-6 of full scale), ratios
(sensitivity, specificity, z) to rtol 1e-5 / atol 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arb_jax.study import metrics
from arb_jax.study.simulate import roi_patch_weights

PERC_ATOL = 1e-4


# --------------------------------------------------------------------------- numpy pixel reference


def upsample(a: np.ndarray, p: int) -> np.ndarray:
    return np.repeat(np.repeat(a, p, axis=-2), p, axis=-1)


def ref_mean_percentile(before_px, map_px, roi_px):
    """100 * #{outside pixels of before with value < v} / #outside, mean over ROI pixels v."""
    outside = before_px[~roi_px].astype(np.float64)
    values = map_px[roi_px].astype(np.float64)
    return 100.0 * np.mean((outside[None, :] < values[:, None]).sum(axis=1) / outside.size)


def ref_nonzero(map_px, roi_px):
    return 100.0 * np.count_nonzero(map_px[roi_px]) / roi_px.sum()


def ref_sensitivity(before_px, after_px, roi_px):
    return 1.0 - after_px[roi_px].astype(np.float64).sum() / before_px[roi_px].astype(np.float64).sum()


def ref_specificity(before_px, after_px, roi_px):
    return after_px[~roi_px].astype(np.float64).sum() / before_px[~roi_px].astype(np.float64).sum()


def random_roi(rng, height, width, kind):
    mask = np.zeros((height, width), bool)
    if kind == "rect":  # arbitrary pixel rectangle, generally not aligned with patches
        r0, c0 = rng.integers(0, height - 1), rng.integers(0, width - 1)
        mask[r0 : rng.integers(r0 + 1, height + 1), c0 : rng.integers(c0 + 1, width + 1)] = True
    elif kind == "scatter":  # random pixel set, as a diffuse ROI
        mask = rng.random((height, width)) < 0.2
    else:  # aligned to patches
        mask[: height // 2, : width // 2] = True
    if mask.all() or not mask.any():
        mask[0, 0] = not mask[0, 0]
    return mask


def random_map(rng, shape, kind):
    if kind == "continuous":
        return rng.random(shape).astype(np.float32)
    # few distinct values: ties everywhere, a quarter of zeros
    return (np.floor(rng.random(shape) * 4) / 4).astype(np.float32)


CASES = [
    (seed, roi_kind, map_kind, p)
    for seed, (roi_kind, map_kind, p) in enumerate(
        (r, m, p) for r in ("rect", "scatter", "aligned") for m in ("continuous", "ties") for p in (1, 4, 5)
    )
]


def make_case(seed, roi_kind, map_kind, p):
    rng = np.random.default_rng(seed)
    h, w = ((5, 7), (6, 4), (3, 3))[seed % 3]  # few shapes: few compilations
    before = random_map(rng, (h, w), map_kind)
    shrink = rng.random((3, h, w)) < 0.5
    after = np.where(shrink, 0.0, before).astype(np.float32)  # thresholded maps
    after[2] = random_map(rng, (h, w), map_kind)  # an arbitrary map too
    roi_px = random_roi(rng, h * p, w * p, roi_kind)
    return before, after, roi_px


# --------------------------------------------------------------------------- mean percentile


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "roi_kind", "map_kind", "p"), CASES)
def test_mean_percentile_equals_pixel_definition(seed, roi_kind, map_kind, p):
    before, after, roi_px = make_case(seed, roi_kind, map_kind, p)
    weights = roi_patch_weights(roi_px, p)
    before_px, after_px = upsample(before, p), upsample(after, p)
    ref_before = ref_mean_percentile(before_px, before_px, roi_px)
    ref_after = [ref_mean_percentile(before_px, a, roi_px) for a in after_px]
    for patch in (None, p):
        perc_before, perc_after = metrics.mean_percentile_in_roi(before, after, weights, patch)
        assert perc_after.shape == (3,)
        np.testing.assert_allclose(float(perc_before), ref_before, rtol=0, atol=PERC_ATOL)
        np.testing.assert_allclose(np.asarray(perc_after), ref_after, rtol=0, atol=PERC_ATOL)
    # a single (h, w) after map gives a scalar
    _, single = metrics.mean_percentile_in_roi(before, after[0], weights, p)
    assert single.shape == ()
    np.testing.assert_allclose(float(single), ref_after[0], rtol=0, atol=PERC_ATOL)


def test_mean_percentile_at_paper_scale():
    """ViT-S/8 at 488 x 488: 61 x 61 patches, a 100 px square not aligned with the 8 px grid."""
    rng = np.random.default_rng(0)
    p, n = 8, 61
    before = rng.lognormal(size=(n, n)).astype(np.float32) / 3721
    after = np.where(rng.random((n, n)) < 0.6, 0.0, before).astype(np.float32)
    roi_px = np.zeros((n * p, n * p), bool)
    roi_px[123:223, 301:401] = True
    before_px, after_px = upsample(before, p), upsample(after, p)
    outside = np.sort(before_px[~roi_px])  # sorted + searchsorted: the reference code's method
    ref = [
        100.0 * np.mean(np.searchsorted(outside, m[roi_px], side="left")) / outside.size
        for m in (before_px, after_px)
    ]
    got = metrics.mean_percentile_in_roi(before, after, roi_patch_weights(roi_px, p), p)
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=0, atol=PERC_ATOL)


def test_mean_percentile_properties():
    rng = np.random.default_rng(1)
    before = rng.random((6, 6)).astype(np.float32) + 0.1
    roi_px = random_roi(rng, 24, 24, "rect")
    weights = roi_patch_weights(roi_px, 4)
    perc_before, perc_same = metrics.mean_percentile_in_roi(before, before, weights, 4)
    assert float(perc_same) == float(perc_before)
    _, perc_zero = metrics.mean_percentile_in_roi(before, np.zeros_like(before), weights, 4)
    assert float(perc_zero) == 0.0  # nothing outside is below 0
    _, perc_big = metrics.mean_percentile_in_roi(before, before + 10.0, weights, 4)
    assert float(perc_big) == pytest.approx(100.0)
    # shrinking the ROI never raises its percentile
    shrunk = np.where(rng.random((6, 6)) < 0.5, 0.0, before).astype(np.float32)
    _, perc_shrunk = metrics.mean_percentile_in_roi(before, shrunk, weights, 4)
    assert float(perc_shrunk) <= float(perc_before)


def test_mean_percentile_jit_and_errors():
    before, after, roi_px = make_case(0, "rect", "ties", 4)
    weights = roi_patch_weights(roi_px, 4)
    eager = metrics.mean_percentile_in_roi(before, after, weights, 4)
    jitted = jax.jit(metrics.mean_percentile_in_roi, static_argnames="patch")(before, after, weights, patch=4)
    np.testing.assert_array_equal(np.asarray(jitted[1]), np.asarray(eager[1]))
    with pytest.raises(ValueError, match="before must have shape"):
        metrics.mean_percentile_in_roi(after, after, weights)
    with pytest.raises(ValueError, match="after must have shape"):
        metrics.mean_percentile_in_roi(before, after[..., :-1], weights)
    with pytest.raises(ValueError, match="roi_weights"):
        metrics.mean_percentile_in_roi(before, after, weights[None])
    with pytest.raises(TypeError, match="real"):
        metrics.mean_percentile_in_roi(before.astype(np.complex64), after, weights)
    with pytest.raises(ValueError, match="patch"):
        metrics.mean_percentile_in_roi(before, after, weights, 0)
    with pytest.raises(TypeError, match="patch"):
        metrics.mean_percentile_in_roi(before, after, weights, 4.0)


# --------------------------------------------------------------------------- non-zero %, sens, spec


@pytest.mark.parametrize(("seed", "roi_kind", "map_kind", "p"), CASES)
def test_nonzero_sensitivity_specificity_equal_pixel_definitions(seed, roi_kind, map_kind, p):
    before, after, roi_px = make_case(seed, roi_kind, map_kind, p)
    before = before + 0.05  # strictly positive before: the ratios are defined
    after = np.where(after == 0, 0.0, after + 0.05).astype(np.float32)
    weights = roi_patch_weights(roi_px, p)
    before_px, after_px = upsample(before, p), upsample(after, p)
    np.testing.assert_allclose(
        np.asarray(metrics.nonzero_percent_in_roi(after, weights)),
        [ref_nonzero(a, roi_px) for a in after_px],
        rtol=0,
        atol=PERC_ATOL,
    )
    np.testing.assert_allclose(
        np.asarray(metrics.sensitivity(before, after, weights)),
        [ref_sensitivity(before_px, a, roi_px) for a in after_px],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(metrics.specificity(before, after, weights)),
        [ref_specificity(before_px, a, roi_px) for a in after_px],
        rtol=1e-5,
        atol=1e-6,
    )


def test_uniform_shrinkage_is_the_diagonal():
    rng = np.random.default_rng(2)
    before = rng.random((5, 5)).astype(np.float32) + 0.1
    weights = roi_patch_weights(random_roi(rng, 40, 40, "scatter"), 8)
    factors = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    after = factors[:, None, None] * before
    sens = np.asarray(metrics.sensitivity(before, after, weights))
    spec = np.asarray(metrics.specificity(before, after, weights))
    np.testing.assert_allclose(sens, 1 - factors, atol=1e-6)
    np.testing.assert_allclose(spec, factors, atol=1e-6)
    assert float(metrics.nonzero_percent_in_roi(before, weights)) == pytest.approx(100.0)
    assert float(metrics.nonzero_percent_in_roi(0 * before, weights)) == 0.0


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize("keep", ["le", "ge"])
def test_sens_spec_curve_equals_pixel_loop(keep):
    rng = np.random.default_rng(3)
    p = 4
    before = rng.random((7, 6)).astype(np.float32) + 0.01
    stat = np.floor(rng.random((7, 6)) * 10).astype(np.float32) / 10  # ties with thresholds
    base = np.where(rng.random((7, 6)) < 0.7, before, 0.0).astype(np.float32)  # e.g. A_z
    roi_px = random_roi(rng, 28, 24, "rect")
    weights = roi_patch_weights(roi_px, p)
    thresholds = np.linspace(0, 1, 50, dtype=np.float32)
    sens, spec = metrics.sens_spec_curve(before, stat, weights, thresholds, keep=keep, base=base)
    assert sens.shape == spec.shape == (50,)
    before_px, base_px, stat_px = upsample(before, p), upsample(base, p), upsample(stat, p)
    ref_sens, ref_spec = [], []
    for t in thresholds:
        kept = stat_px <= t if keep == "le" else stat_px >= t
        after_px = np.where(kept, base_px, 0.0)
        ref_sens.append(ref_sensitivity(before_px, after_px, roi_px))
        ref_spec.append(ref_specificity(before_px, after_px, roi_px))
    np.testing.assert_allclose(np.asarray(sens), ref_sens, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(spec), ref_spec, rtol=1e-5, atol=1e-6)
    # more kept with t ("le") or less kept ("ge"): monotone curves
    step = np.diff(np.asarray(spec)) if keep == "le" else -np.diff(np.asarray(spec))
    assert np.all(step >= -1e-6)


def test_sens_spec_curve_endpoints_and_defaults():
    rng = np.random.default_rng(4)
    before = rng.random((6, 6)).astype(np.float32) + 0.1
    pvals = rng.random((6, 6)).astype(np.float32)
    weights = roi_patch_weights(random_roi(rng, 24, 24, "rect"), 4)
    sens, spec = metrics.sens_spec_curve(before, pvals, weights, jnp.asarray([-1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(sens), [1.0, 0.0], atol=1e-6)  # all removed / kept
    np.testing.assert_allclose(np.asarray(spec), [0.0, 1.0], atol=1e-6)
    jitted = jax.jit(metrics.sens_spec_curve, static_argnames="keep")(
        before, pvals, weights, jnp.linspace(0, 1, 5)
    )
    np.testing.assert_allclose(
        np.asarray(jitted[0]),
        np.asarray(metrics.sens_spec_curve(before, pvals, weights, jnp.linspace(0, 1, 5))[0]),
    )
    with pytest.raises(ValueError, match="keep"):
        metrics.sens_spec_curve(before, pvals, weights, [0.5], keep="<=")
    with pytest.raises(ValueError, match="thresholds"):
        metrics.sens_spec_curve(before, pvals, weights, [[0.5]])
    with pytest.raises(ValueError, match="stat must have shape"):
        metrics.sens_spec_curve(before, pvals[:3], weights, [0.5])


# --------------------------------------------------------------------------- suppression factor


def test_suppression_factor_hand_computed():
    before = np.array([10.0, 20.0, 30.0])
    after = np.array([5.0, 5.0, 10.0])
    d, err = metrics.suppression_factor(before, after)
    # S_a = 20, S_b = 60, var(after) = 25/3, var(before) = 100 (ddof 1), N = 3
    var = 3 * (25 / 3) / 60**2 + (20 / 60**2) ** 2 * 3 * 100
    assert d == pytest.approx(1 / 3, rel=1e-12)
    assert err == pytest.approx(np.sqrt(var), rel=1e-12)
    assert metrics.suppression_factor(before, before)[0] == 1.0
    assert metrics.suppression_factor(before, np.zeros(3))[0] == 0.0


def test_suppression_factor_error_matches_monte_carlo_spread():
    """For independent before/after percentiles, err is the delta-method std of D."""
    rng = np.random.default_rng(5)
    n, reps = 100, 4000
    before = rng.uniform(20, 80, size=(reps, n))
    after = rng.gamma(2.0, 5.0, size=(reps, n))
    d_values = after.sum(1) / before.sum(1)
    errs = [metrics.suppression_factor(b, a)[1] for b, a in zip(before[:200], after[:200], strict=True)]
    assert np.mean(errs) == pytest.approx(d_values.std(ddof=1), rel=0.05)


def test_suppression_factor_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        metrics.suppression_factor([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        metrics.suppression_factor([1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        metrics.suppression_factor([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="sum of perc_before is 0"):
        metrics.suppression_factor([0.0, 0.0], [1.0, 2.0])
