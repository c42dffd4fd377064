"""The reference code's π₀ ("attnreg") against a plain numpy/scipy transcription of its recipe.

The transcription follows docs/method.md §3 step by step, in float64: π₀(λ) = #{p > λ} /
(n(1 − λ)) on λ = numpy.arange(0, 0.90, 0.01), an interpolating cubic spline through those
points (``scipy.interpolate.splrep(k=3)``, s = 0) evaluated at the last λ, values above 1 set
to 1; and, for the port's ``qvalue()``, π₀ = 1 below 100 p-values. The device version takes
float32 p-values; the transcription gets the same float32 values as float64, so every count is
the same and π₀ agrees to float32 rounding (rtol 1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import interpolate

from arb_jax.core import stats
from arb_jax.core.options import ARBOptions

RTOL = 1e-6  # float32 division vs float64 spline evaluation


def transcription(p: np.ndarray, small_n: bool = False) -> float:
    """π₀ of one map of p-values, as docs/method.md §3 describes the reference's estimator."""
    p = np.asarray(p, np.float64).ravel()
    n = p.size
    if small_n and n < 100:
        return 1.0
    lam = np.arange(0, 0.90, 0.01)
    pi0_lam = np.array([np.sum(p > v) / (n * (1 - v)) for v in lam])
    spline = interpolate.splrep(lam, pi0_lam, k=3)
    est = float(interpolate.splev(lam[-1], spline))
    return min(est, 1.0)


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    lam32 = np.float32(0.89)  # 0.88999999 < 0.89 in float64: not counted
    above = np.nextafter(lam32, np.float32(1))  # 0.89000005 > 0.89: counted
    cases = [
        ("uniform", rng.random(5000)),
        ("mostly_signal", np.concatenate([rng.random(300), rng.random(4700) * 0.05])),
        ("beta", rng.beta(0.5, 2.0, 3000)),
        ("ties_at_lambda", np.concatenate([np.full(200, lam32), np.full(150, above), rng.random(650)])),
        ("bootstrap_k_over_m", rng.integers(0, 401, 1156) / 400),  # heavy ties, k/m values
        ("above_one", np.concatenate([np.ones(900), rng.random(100)])),  # raw > 1: clipped
        ("none_above", rng.random(2000) * 0.89),  # π₀ = 0
        ("small_n", rng.random(60)),
        ("n_99", rng.random(99)),
        ("n_100", rng.random(100)),
    ]
    return [(name, np.asarray(p, np.float32)) for name, p in cases]


CASES = _cases()


@pytest.mark.parametrize(("name", "p"), CASES, ids=[c[0] for c in CASES])
def test_pi0_attnreg_equals_the_transcription(name, p):
    got = stats.pi0_attnreg(p)
    assert got.pi0.dtype == jnp.float32
    np.testing.assert_allclose(float(got.pi0), transcription(p), rtol=RTOL, atol=1e-7)
    qv = stats.pi0_attnreg(p, small_n=True)
    np.testing.assert_allclose(float(qv.pi0), transcription(p, small_n=True), rtol=RTOL, atol=1e-7)
    assert float(stats.pi0est(p, method="attnreg").pi0) == float(got.pi0)


def test_ties_at_lambda_follow_numpy_float64_comparison():
    lam32 = np.float32(0.89)
    above = np.nextafter(lam32, np.float32(1))
    p = np.array([lam32] * 11 + [above] * 11 + [0.1] * 78, np.float32)
    # float32(0.89) is below the float64 0.89: only the 11 values above count
    assert float(stats.pi0_attnreg(p).pi0) == pytest.approx(11 / (0.11 * 100), rel=RTOL)
    assert float(stats.pi0_attnreg(p, small_n=True).pi0) == pytest.approx(11 / 11, rel=RTOL)


def test_small_n_rule_applies_below_100_only():
    p = np.full(99, 0.01, np.float32)
    assert float(stats.pi0_attnreg(p).pi0) == 0.0
    assert float(stats.pi0_attnreg(p, small_n=True).pi0) == 1.0
    assert float(stats.pi0_attnreg(np.full(100, 0.01, np.float32), small_n=True).pi0) == 0.0


def test_batched_jit_and_vmap_agree_with_one_map_at_a_time():
    batch = np.stack([p for name, p in CASES if p.size == 5000] + [CASES[0][1][::-1]])
    one = np.array([float(stats.pi0_attnreg(b).pi0) for b in batch])
    np.testing.assert_array_equal(np.asarray(stats.pi0_attnreg(batch).pi0), one)
    jitted = jax.jit(jax.vmap(lambda q: stats.pi0_attnreg(q).pi0))(jnp.asarray(batch))
    np.testing.assert_array_equal(np.asarray(jitted), one)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="p"):
        stats.pi0_attnreg(np.array([0.5, 1.5], np.float32))
    with pytest.raises(TypeError, match="small_n"):
        stats.pi0_attnreg(np.array([0.5], np.float32), small_n=1)
    with pytest.raises(ValueError, match="own lambda"):
        stats.pi0est(np.array([0.5], np.float32), method="attnreg", lambdas=0.5)


def test_options_accept_the_method_and_a_shared_pi0():
    opts = ARBOptions(pi0_method="attnreg", lfdr_pi0="shared")
    assert opts.pi0_method == "attnreg" and opts.lfdr_pi0 == "shared"
    with pytest.raises(ValueError, match="'estimate' or 'shared'"):
        ARBOptions(lfdr_pi0="both")
    with pytest.raises(ValueError, match="attnreg"):
        ARBOptions(pi0_method="storey")
