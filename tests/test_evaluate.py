"""The sweep's metric table: one entry gives the CSV columns and the evaluation's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.study import evaluate as ev
from arb_jax.study import metrics, rows


def _batch(n: int, h: int, w: int):
    rng = np.random.default_rng(n * 100 + h)
    attn = rng.random((n, h, w)).astype(np.float32)
    z = rng.standard_normal((n, h, w)).astype(np.float32)
    p = rng.random((n, h, w)).astype(np.float32)
    lfdr = rng.random((n, h, w)).astype(np.float32)
    roi = np.zeros((n, h, w), np.float32)
    roi[:, : h // 2, : w // 2] = 1.0
    return attn, z, p, lfdr, attn * (z > 0), attn * (p < 0.5), roi


def test_columns_follow_the_table():
    per_method = [f"{name}_{m}" for m in ev.METHODS for name in ev.METRICS]
    assert [c for c in rows.COLUMNS if c in per_method] == per_method
    assert set(ev.IMAGE_METRICS) <= set(rows.COLUMNS)


def test_evaluate_returns_every_table_entry_and_its_value():
    attn, z, p, lfdr, map_z, map_pi0, roi = _batch(2, 4, 4)
    out = ev.evaluate(attn, z, p, lfdr, map_z, map_pi0, roi, [(0.3, 0.3), (0.1, 0.2)], patch=2, roi_pixels=16)
    assert set(out) == set(ev.IMAGE_METRICS) | {f"{n}_{m}" for m in ev.METHODS for n in ev.METRICS}
    assert all(out[f"{n}_{m}"].shape == (2, 2) for m in ev.METHODS for n in ev.METRICS)
    want = metrics.sensitivity(jnp.asarray(attn[1]), jnp.asarray(map_z[1]), jnp.asarray(roi[1]))
    np.testing.assert_allclose(out["sens_z"][1], float(want), rtol=1e-5, atol=1e-6)  # float32 sums


def test_a_new_table_entry_is_evaluated(monkeypatch):
    extra = ev.Metric(
        "kept", lambda before, after, w, patch: jnp.sum(after > 0, axis=(-2, -1)), "patches kept"
    )
    monkeypatch.setitem(ev.METRICS, "kept", extra)
    attn, z, p, lfdr, map_z, map_pi0, roi = _batch(1, 6, 6)  # a shape not traced before
    out = ev.evaluate(attn, z, p, lfdr, map_z, map_pi0, roi, [(1.0, 1.0)], patch=1, roi_pixels=9)
    assert int(out["kept_z"][0, 0]) == int(np.sum(map_z[0] > 0))
    assert int(out["kept_pi0"][0, 0]) == int(np.sum(map_pi0[0] > 0))
    jax.clear_caches()
