"""The benchmark package: records, the ours-vs-baseline check, the tables; never timings.

The ``smoke`` preset (test_tiny8, random-init fixture, 128 px) runs once through the command
line; the other tests check the pieces it is made of on tiny inputs.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# bench/ is a folder of the repository, not part of the installed package: pytest's
# pythonpath = ["."] (pyproject.toml) makes it importable.
from arb_jax.core import stats
from arb_jax.models import build_vit, get_config
from arb_jax.models import vit as vit_module
from bench import baseline as bl
from bench import cases as bc
from bench import flops as fl
from bench import peers as pr
from bench import run as br
from bench.cli import main
from bench.run import PEER_ATTN_TOL, TOLERANCES, compare, jsonable, mask_changes, time_calls
from bench.tables import to_markdown

RECORD_FIELDS = (
    "case",
    "model",
    "weights",
    "image_size",
    "n_boot",
    "dtype",
    "device",
    "ours_s_per_image",
    "baseline_s_per_image",
    "speedup",
    "stats_speedup",
    "flops_per_image",
    "achieved_flops",
    "peak_flops",
    "mfu",
    "peak_memory_bytes",
    "ours_compile_s",
    "ours_repeats",
    "check",
    "peer_torch_s_per_image",
    "peer_ort_s_per_image",
    "speedup_vs_best_peer",
    "peer_check",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["--preset", "smoke", "--json", str(out / "r.json"), "--md", str(out / "r.md"), "--quiet"])
    return code, json.loads((out / "r.json").read_text()), (out / "r.md").read_text()


@pytest.mark.slow
def test_smoke_preset_records(smoke):
    code, result, _ = smoke
    assert code == 0 and result["errors"] == []
    names = [c.name for c in bc.PRESETS["smoke"].cases]
    assert [r["case"] for r in result["records"]] == names
    assert any(r["ours_compile_s"] > 0 for r in result["records"])  # compile time is measured
    for r in result["records"]:
        missing = [f for f in RECORD_FIELDS if f not in r]
        assert not missing, (r["case"], missing)
        assert "random-init" in r["weights"] and "not pretrained" in r["weights"]
        assert r["ours_s_per_image"] > 0 and r["ours_repeats"] >= 1 and r["ours_compile_s"] >= 0
        cfg = get_config(r["model"])
        assert r["flops_per_image"] == (1 + r["n_boot"]) * fl.forward_flops(cfg, r["image_size"])
        assert r["mfu"] == pytest.approx(r["achieved_flops"] / r["peak_flops"])
        assert r["achieved_flops"] == pytest.approx(r["flops_per_image"] / r["ours_s_per_image"])
        if r["baseline_s_per_image"] is not None:
            assert r["speedup"] == pytest.approx(r["baseline_s_per_image"] / r["ours_s_per_image"])
            assert set(r["baseline_stage_s"]) == {"sample", "forward", "upsample", "stats"}
            assert r["stats_speedup"] == pytest.approx(
                r["baseline_stats_s_per_image"] / r["ours_stats_s_per_image"]
            )
    by = {r["case"]: r for r in result["records"]}
    assert by["smoke_size_64"]["baseline_s_per_image"] is None  # a scaling case without baseline
    assert by["smoke_size_64"]["baseline_status"] == "off"
    for name in ("smoke_B1", "smoke_B3_batched", "smoke_B3_bf16"):  # their baseline pass ran
        assert by[name]["baseline_status"] == "done" and by[name]["baseline_projected_s"] > 0
        assert by[name]["baseline_wall_s"] > 0
    assert by["smoke_B3_batched"]["baseline_batch"] == 2
    m = result["machine"]
    assert m["cpu_cores"] >= 1 and m["versions"]["jax"] == jax.__version__
    assert result["peaks"]["jax"]["float32"]["flops"] > 0
    best = result["peaks"]["best"]["float32"]  # the MFU denominator: the fastest library's
    libs = {
        lib: p["float32"]["flops"] for lib, p in result["peaks"].items() if "flops" in p.get("float32", {})
    }
    assert {"jax", "torch", "ort"} <= set(libs) and best["flops"] == max(libs.values())
    assert all(r["peak_flops"] == best["flops"] for r in result["records"] if r["dtype"] == "float32")
    bf16 = result["peaks"]["best"]["bfloat16"]  # the smoke preset has a bfloat16 case
    assert bf16["library"] in ("jax", "torch") and "bfloat16" not in result["peaks"]["ort"]
    assert all(r["peak_flops"] == bf16["flops"] for r in result["records"] if r["dtype"] == "bfloat16")
    assert {a["change"] for a in result["ablations"]} == {
        "profile",
        "attention",
        "cls_only",
        "dtype",
        "cpu_dots",
        "boot_chunk",
        "host_round_trip",
    }


@pytest.mark.slow
def test_smoke_check_ran_and_passed(smoke):
    _, result, _ = smoke
    checked = [r for r in result["records"] if r["check"] is not None]
    assert len(checked) == 3
    for r in checked:
        c = r["check"]
        assert c["passed"] and c["failed"] == [] and c["dtype"] == "float32"
        assert set(c["max_diff"]) == set(TOLERANCES)
        assert all(c["max_diff"][k] <= TOLERANCES[k] for k in TOLERANCES)
    bf16 = next(r for r in checked if r["dtype"] == "bfloat16")
    assert bf16["check"]["n_boot"] == 2  # checked in float32 with check_boot null images


@pytest.mark.slow
def test_smoke_peers_checked_equal_and_timed(smoke):
    _, result, _ = smoke
    for r in result["records"]:
        assert set(r["peer_check"]) == {"torch", "ort"} and r["peer_errors"] == {}
        for c in r["peer_check"].values():
            assert c["passed"] and c["attn_abs"] <= PEER_ATTN_TOL and c["n_boot"] == r["n_boot"]
        best = min(r["peer_torch_s_per_image"], r["peer_ort_s_per_image"])
        assert r["best_peer_s_per_image"] == best
        assert r["speedup_vs_best_peer"] == pytest.approx(best / r["ours_s_per_image"])
        assert r["speedup_vs_torch"] == pytest.approx(r["peer_torch_s_per_image"] / r["ours_s_per_image"])
        assert r["peer_stage_s"]["ort"].keys() == {"sample", "forward", "stats"}


@pytest.mark.slow
def test_smoke_markdown_table(smoke):
    _, result, md = smoke
    assert md.startswith("## Benchmark `smoke`")
    header = next(line for line in md.splitlines() if line.startswith("| case |"))
    assert "ours s/img" in header and "speedup" in header and "MFU" in header
    for r in result["records"]:
        assert f"| {r['case']} |" in md
    assert "ok (B=3)" in md and "What each change bought" in md
    assert md == to_markdown(result) + "\n"


# --------------------------------------------------------------------------- pieces


def test_flop_count_matches_spec():
    cfg = get_config("dino_vits8")
    n, d, L = 3722, 384, 12
    assert fl.n_tokens(cfg, 488) == n
    spec = 2 * L * (12 * n * d * d + 2 * n * n * d)  # docs/method.md §6, all blocks full
    assert fl.forward_flops(cfg, 488, cls_only_last=False) == spec
    assert spec == pytest.approx(4.1e11, rel=0.01)
    last_full = 2 * (12 * n * d * d + 2 * n * n * d)
    last_cls = 2 * (2 * n * d * d + 2 * n * d + 2 * d * d + 8 * d * d)
    assert fl.forward_flops(cfg, 488) == spec - last_full + last_cls
    assert fl.arb_flops_per_image(cfg, 488, 16) == 17 * fl.forward_flops(cfg, 488)
    assert 0.6 < fl.attention_share(cfg, 488) < 0.65
    with pytest.raises(ValueError, match="n_boot"):
        fl.arb_flops_per_image(cfg, 488, 0)
    with pytest.raises(ValueError, match="multiple of the patch"):
        fl.n_tokens(cfg, 490)


def test_hf_baseline_model_has_our_weights():
    vit = build_vit("test_tiny8", None, image_size=48, seed=3)
    model = bl.hf_vit(vit.config, vit.params, 48)
    import torch

    x = np.random.default_rng(0).standard_normal((2, 48, 48, 3)).astype(np.float32)
    ours = np.asarray(vit.cls_attention(x)).mean(1)
    theirs = bl.hf_cls_attention(model, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="pos_embed has"):
        bl.hf_vit(vit.config, vit.params, 64)
    with pytest.raises(ValueError, match="supports no register tokens"):
        bl.hf_state_dict(get_config("test_tiny14_reg"), {}, [])
    # DINOv2 (LayerScale): an HF Dinov2Model with the same weights
    v2 = build_vit("test_tiny14", None, image_size=56, seed=4)
    x2 = np.random.default_rng(1).standard_normal((2, 56, 56, 3)).astype(np.float32)
    theirs2 = bl.hf_cls_attention(
        bl.hf_vit(v2.config, v2.params, 56), torch.from_numpy(x2.transpose(0, 3, 1, 2))
    ).numpy()
    np.testing.assert_allclose(theirs2, np.asarray(v2.cls_attention(x2)).mean(1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "size"), [("test_tiny8", 48), ("test_tiny14_reg", 56)])
def test_peers_compute_our_maps(name, size):
    # The torch peer (SDPA, CLS-only last block) and its ONNX Runtime export hold our weights and
    # compute our head-mean CLS attention; test_tiny14_reg has LayerScale and register tokens.
    vit = build_vit(name, None, image_size=size, seed=5)
    x = np.random.default_rng(2).standard_normal((3, size, size, 3)).astype(np.float32)
    ours = np.asarray(vit.cls_attention(x)).mean(1)
    peers, errors = pr.build_peers(vit.config, vit.params, size, 3)
    assert errors == {} and set(peers) == {"torch", "ort"}
    for peer in peers.values():
        np.testing.assert_allclose(peer.forward(x.transpose(0, 3, 1, 2)), ours, rtol=0, atol=1e-6)
    assert peers["ort"].info["optimisation"] == "ORT_ENABLE_ALL"
    with pytest.raises(ValueError, match="pos_embed has"):
        pr.torch_vit(vit.config, vit.params, size + vit.config.patch)


def test_peer_run_uses_given_null_images_and_numpy_statistics():
    vit = build_vit("test_tiny8", None, image_size=64, seed=6)
    peers, _ = pr.build_peers(vit.config, vit.params, 64, 4, which=("torch",))
    rng = np.random.default_rng(3)
    image, nulls = (
        rng.standard_normal((64, 64, 3), np.float32),
        rng.standard_normal((3, 64, 64, 3), np.float32),
    )
    run = pr.run_peer(peers["torch"], image, 3, null_images=nulls)
    maps = np.asarray(vit.cls_attention(np.concatenate([image[None], nulls]))).mean(1)
    np.testing.assert_allclose(run.attn, maps[0], atol=1e-6)
    np.testing.assert_allclose(run.null, maps[1:], atol=1e-6)
    assert set(run.seconds) == {"sample", "forward", "stats", "total"}
    np.testing.assert_array_equal(run.stats["p"], bl.numpy_statistics(run.attn, run.null)["p"])


def test_mask_changes_counts_flipped_entries():
    a = {"attn": np.ones((2, 2)), "z": np.zeros((2, 2)), "lfdr": np.zeros((2, 2)), "pi0": 0.5}
    a.update({f"map_{k}": np.ones((2, 2)) for k in ("z", "p", "lfdr", "pi0")})
    b = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in a.items()}
    b["map_p"][0, 0] = 0.0
    out = mask_changes(b, a)
    assert out["mask_changes"] == {"z": 0, "p": 1, "lfdr": 0, "pi0": 0} and out["entries"] == 4


def test_numpy_statistics_equal_ours_on_patches():
    # Every statistic on nearest-upsampled pixels equals ours on the patch grid (docs/method.md §1).
    rng = np.random.default_rng(1)
    attn = rng.dirichlet(np.ones(64) * 0.5).reshape(8, 8).astype(np.float32)
    null = rng.dirichlet(np.ones(64) * 2.0, size=5).reshape(5, 8, 8).astype(np.float32)
    up = lambda a: np.repeat(np.repeat(a, 4, -2), 4, -1)  # noqa: E731
    base = bl.numpy_statistics(up(attn), up(null))
    z, zn, _, _ = stats.zstat(attn.ravel(), null.reshape(5, -1))
    p = stats.empirical_pvalues(z, zn)
    np.testing.assert_allclose(base["z"][::4, ::4].ravel(), z, atol=1e-5)
    np.testing.assert_allclose(base["p"][::4, ::4].ravel(), p, atol=1e-6)
    np.testing.assert_allclose(base["lfdr"][::4, ::4].ravel(), stats.local_fdr(z), atol=1e-4)
    assert base["pi0"] == pytest.approx(float(np.clip(stats.pi0est(p).pi0, 0, 1)), abs=1e-6)


def test_storey_pi0_matches_ours():
    p = np.random.default_rng(2).uniform(size=5000) ** 1.5
    assert bl.storey_pi0(p) == pytest.approx(float(stats.pi0est(p).pi0), abs=1e-6)


def test_compare_flags_a_difference():
    g = np.random.default_rng(3).uniform(0.1, 1, (4, 4)).astype(np.float32)
    maps = {k: g for k in ("z", "p", "lfdr", "pi0", "soft")}
    run = bl.BaselineRun(
        np.kron(g, np.ones((2, 2))),
        np.zeros((1, 8, 8)),
        {
            "z": np.kron(g, np.ones((2, 2))),
            "p": np.kron(g, np.ones((2, 2))),
            "lfdr": np.kron(g, np.ones((2, 2))),
            "pi0": 0.5,
            "z_null_sorted": np.linspace(-5.0, -4.0, 64),  # no null z near an observed one
            "maps": {k: np.kron(v, np.ones((2, 2))) for k, v in maps.items()},
        },
        {},
    )
    ours = {"attn": g, "z": g, "p": g, "lfdr": g, "pi0": 0.5, **{f"map_{k}": v for k, v in maps.items()}}
    assert compare(ours, run, 2)["passed"]
    bad = compare(dict(ours, z=g + 0.01, pi0=0.6, p=g + 0.01), run, 2)
    assert not bad["passed"] and bad["failed"] == ["p", "pi0", "z"]


def _grid_run(attn: np.ndarray, null: np.ndarray) -> bl.BaselineRun:
    return bl.BaselineRun(attn, null, bl.numpy_statistics(attn, null), {})


def _as_ours(run: bl.BaselineRun) -> dict:
    s = run.stats
    return {
        "attn": run.attn,
        "z": s["z"],
        "p": s["p"],
        "lfdr": s["lfdr"],
        "pi0": s["pi0"],
        **{f"map_{k}": v for k, v in s["maps"].items()},
    }


def test_compare_allows_a_rank_swap_of_near_ties_and_no_more():
    # B = 1 on a 6 x 6 grid: m = 36 null values, so one observed z crossing a null z within
    # 1e-6 moves its p by 1/36, far above the p tolerance; that swap is explained by the
    # z tolerance and passes, a p shift with no near tie does not.
    rng = np.random.default_rng(7)
    null = rng.dirichlet(np.ones(36), size=1).reshape(1, 6, 6).astype(np.float64)
    attn = rng.dirichlet(np.ones(36)).reshape(6, 6).astype(np.float64)
    tie = null[0, 2, 3]
    ref, ours = attn.copy(), attn.copy()
    ref[0, 0], ours[0, 0] = tie * (1 + 1e-7), tie * (1 - 1e-7)
    run, mine = _grid_run(ref, null), _as_ours(_grid_run(ours, null))
    check = compare(mine, run, 1)
    assert check["p_max_abs"] == pytest.approx(1 / 36)
    assert check["passed"] and check["max_diff"]["p"] < 1e-12
    shifted = dict(mine, p=run.stats["p"] + 0.01 * (np.arange(36).reshape(6, 6) == 20))
    near = np.abs(run.stats["z_null_sorted"] - run.stats["z"][3, 2]).min()
    assert near > 2 * TOLERANCES["z"]  # entry 20 has no near tie
    bad = compare(shifted, run, 1)
    assert not bad["passed"] and bad["failed"] == ["p"] and bad["max_diff"]["p"] == pytest.approx(0.01)


def test_baseline_run_uses_given_null_images_and_checks_their_shape():
    vit = build_vit("test_tiny8", None, image_size=32)
    model = bl.hf_vit(vit.config, vit.params, 32)
    image = np.random.default_rng(4).standard_normal((32, 32, 3)).astype(np.float32)
    nulls = np.random.default_rng(5).standard_normal((3, 32, 32, 3)).astype(np.float32)
    run = bl.run_baseline(model, image, 3, batch=2, null_images=nulls)
    expect = np.asarray(vit.cls_attention(nulls)).mean(1)
    np.testing.assert_allclose(run.null[:, ::8, ::8], expect, atol=1e-6)
    assert run.attn.shape == (32, 32) and set(run.seconds) >= {"sample", "forward", "stats", "total"}
    with pytest.raises(ValueError, match="null_images must be"):
        bl.run_baseline(model, image, 2, null_images=nulls)


def test_blocked_attention_equals_xla():
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 37, 3, 8)), jnp.float32) for _ in range(3))
    ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    for block in (5, 16, 37, 64, None):  # padded last block, exact fit, one block, the default
        out = jax.jit(lambda a, b, c, n=block: vit_module.blocked_attention(a, b, c, n))(q, k, v)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    # tiles of 4 (image, head) pairs (6 pairs: a remainder of 2) and of 1 pair, 2 blocks of 19
    for tile in (4 * 19 * 37 * 4, 19 * 37 * 4):
        out = jax.jit(lambda a, b, c, t=tile: vit_module.blocked_attention(a, b, c, 19, t))(q, k, v)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    assert vit_module.attention_tiling(6, 37, 37, 19, 4 * 19 * 37 * 4) == (4, 19)
    assert vit_module.attention_tiling(6, 37, 37, 19, 1) == (1, 19)


def test_blocked_attention_unrolled_equals_loop(monkeypatch):
    """When one step holds every pair, the query blocks are written out with no loop: the same
    numbers, bit for bit, as the ``lax.map`` loop over pairs and blocks (a padded last block too)."""
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal((3, 41, 2, 8)), jnp.float32) for _ in range(3))
    run = jax.jit(vit_module.blocked_attention, static_argnums=(3,))
    unrolled = {b: np.asarray(run(q, k, v, b)) for b in (6, 14, 41)}  # 7, 3 and 1 blocks
    monkeypatch.setattr(vit_module, "ATTENTION_UNROLL", 0)  # every tiling loops
    run = jax.jit(vit_module.blocked_attention, static_argnums=(3,))
    for b, out in unrolled.items():
        np.testing.assert_array_equal(out, run(q, k, v, b))
    ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(unrolled[6], ref, rtol=0, atol=1e-6)


def test_attention_tiling():
    """Short sequences: one block, pairs batched; long ones: the fewest equal blocks (>= 2) whose
    scores fit the tile; a step never holds more than the tile unless one block row must."""
    tile = vit_module.ATTENTION_TILE_BYTES
    assert vit_module.attention_tiling(102, 197, 197) == (102, 197)  # ViT-S/16 @ 224, 17 images
    assert vit_module.attention_tiling(102, 257, 257) == (102, 129)  # DINOv2 @ 224: 2 blocks
    assert vit_module.attention_tiling(6, 3722, 3722) == (1, 931)  # ViT-S/8 @ 488: 4 blocks
    for pairs, t, s in [(1, 1, 1), (7, 256, 256), (102, 1370, 1370), (6, 20000, 20000), (3, 300, 50)]:
        group, block = vit_module.attention_tiling(pairs, t, s)
        assert 1 <= group <= pairs and 1 <= block <= t
        assert group * block * s * 4 <= max(tile, block * s * 4)
        if t > vit_module.ATTENTION_BLOCK:  # >= 2 equal blocks, each within a row of the tile
            assert -(-t // block) >= 2 and block * s * 4 <= tile + s * 4
        else:
            assert block == t
    assert vit_module.attention_impl("auto") == ("blocked" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        vit_module.attention_impl("flash")


def test_attention_env_override(monkeypatch):
    monkeypatch.setenv("ARB_ATTENTION", "xla")
    assert vit_module.attention_impl("auto") == "xla"
    assert vit_module.attention_impl("blocked") == "blocked"  # an explicit choice wins
    monkeypatch.setenv("ARB_ATTENTION", "fast")
    with pytest.raises(ValueError, match="ARB_ATTENTION"):
        vit_module.attention_impl("auto")


def test_presets_and_bad_input(capsys):
    for name in ("cpu-quick", "cpu-full", "gpu", "smoke"):
        preset = bc.get_preset(name)
        assert preset.cases and preset.ablations
    paper = [c for c in bc.PRESETS["cpu-quick"].cases if c.group == "paper"]
    assert {(c.model, c.image_size, c.n_boot) for c in paper} == {
        ("dino_vits8", 488, 1),
        ("dino_vits8", 488, 16),
    }
    gpu = {(c.model, c.image_size, c.n_boot, c.dtype) for c in bc.PRESETS["gpu"].cases}
    assert {("dino_vits16", 224, b, "bfloat16") for b in (1, 16, 64, 256, 1024)} <= gpu
    assert {("dino_vits8", 488, b, "bfloat16") for b in (1, 16)} <= gpu
    assert bc.PRESETS["gpu"].peak_dtypes == ("float32", "bfloat16")
    # a bfloat16 case's MFU is against the bfloat16 peak, measured in the same run
    assert "bfloat16" in [c.dtype for c in bc.PRESETS["cpu-quick"].cases]
    assert br.peak_dtypes(bc.PRESETS["cpu-quick"]) == ("float32", "bfloat16")
    assert br.peak_dtypes(bc.PRESETS["gpu"]) == ("float32", "bfloat16")
    with pytest.raises(ValueError, match="unknown preset 'tpu'"):
        bc.get_preset("tpu")
    with pytest.raises(ValueError, match="no case of preset 'smoke' matches 'nope'"):
        bc.select(bc.PRESETS["smoke"], "nope")
    assert [c.name for c in bc.select(bc.PRESETS["smoke"], "smoke_B3")] == [
        "smoke_B3_batched",
        "smoke_B3_bf16",
    ]
    with pytest.raises(SystemExit):
        main(["--preset", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--preset", "smoke", "--json", "/nonexistent/dir/r.json"])


@pytest.mark.slow
def test_budget_skips_what_would_start_late_and_results_are_written_as_they_grow(tmp_path):
    """No case starts once the budget is spent (listed as not run); the JSON and markdown are
    rewritten after every case, so a killed run keeps what it measured."""
    from bench.run import run_preset

    preset = bc.PRESETS["smoke"]
    snapshots = []
    cases = bc.select(preset, "smoke_size_64,smoke_B1")
    result = run_preset(preset, cases, ablations=False, quiet=True, on_result=snapshots.append)
    # every case's first pass, then the baseline pass of the one that has a baseline
    assert [[r["case"] for r in s["records"]] for s in snapshots] == [
        ["smoke_B1"],
        ["smoke_B1", "smoke_size_64"],
        ["smoke_B1", "smoke_size_64"],
    ]
    assert [s["records"][0]["baseline_status"] for s in snapshots] == ["pending", "pending", "done"]
    assert snapshots[0]["records"][0]["speedup"] is None  # a snapshot: not filled in later
    assert result["records"][0]["speedup"] > 0 and result["records"][0]["check"]["passed"]
    assert result["skipped"] == [] and result["budget_s"] is None
    code = main(
        [
            "--preset",
            "smoke",
            "--budget-s",
            "0",
            "--json",
            str(tmp_path / "r.json"),
            "--md",
            str(tmp_path / "r.md"),
            "--quiet",
        ]
    )
    assert code == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["records"] == [] and written["budget_s"] == 0
    assert written["skipped"][: len(preset.cases)] == [c.name for c in preset.cases]
    assert len(written["skipped"]) == len(preset.cases) + len(preset.ablations)
    md = (tmp_path / "r.md").read_text()
    assert "Not run (the 0 s time budget was spent)" in md and "- smoke_B1" in md
    assert bc.PRESETS["gpu"].budget_s == 420 and bc.PRESETS["cpu-quick"].budget_s == 540
    assert bc.PRESETS["gpu"].cases[0].group == "headline"  # the H100 targets' cases run first


def test_baseline_forwards_counts_the_check_run_once():
    case = bc.Case("c", "test_tiny8", 128, 16, baseline_repeats=3)
    assert br.baseline_forwards(case, 1) == 3 * 17  # the check run is the first timed run
    assert br.baseline_forwards(case, 4) == 3 * 5  # ceil(17 / 4) forwards a run
    assert br.baseline_forwards(dataclasses.replace(case, check_boot=2), 1) == 3 + 3 * 17
    assert br.baseline_forwards(dataclasses.replace(case, check=False), 1) == 3 * 17
    assert br.baseline_forwards(dataclasses.replace(case, baseline=False), 1) == 17  # the check only
    assert br.baseline_forwards(dataclasses.replace(case, baseline_repeats=0), 1) == 17


@pytest.mark.slow
def test_a_baseline_that_would_overrun_the_budget_is_not_run(monkeypatch):
    """The budget cuts the slow reference baseline, not cases: with too little time left for its
    forwards, a case keeps its comparison with the peers and says why it has no baseline."""
    from bench.run import run_preset

    preset = bc.PRESETS["smoke"]
    cases = bc.select(preset, "smoke_B1")
    monkeypatch.setattr(br, "baseline_forwards", lambda case, batch: 10**9)  # hours at any speed
    result = run_preset(preset, cases, ablations=False, quiet=True, budget_s=1e6)
    (rec,) = result["records"]
    status = rec["baseline_status"]
    assert status.startswith("not run: about") and "of the budget left" in status
    assert rec["speedup"] is None and rec["check"] is None and rec["baseline_s_per_image"] is None
    assert rec["speedup_vs_best_peer"] > 0 and rec["peer_check"]["ort"]["passed"]
    assert result["skipped"] == ["smoke_B1: reference baseline"]
    md = to_markdown(jsonable(result))
    assert "not run (budget)" in md and "- smoke_B1: reference baseline" in md


def test_list_and_helpers(capsys):
    assert main(["--preset", "smoke", "--list"]) == 0
    assert "smoke_B1: test_tiny8 @ 128" in capsys.readouterr().out
    assert jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": float("nan"), "d": (1,)}) == {
        "a": 1.5,
        "b": [0, 1],
        "c": None,
        "d": [1],
    }
    calls = []
    assert len(time_calls(lambda: calls.append(1), 3, 1e9)) == 3 == len(calls)
    assert len(time_calls(lambda: calls.append(1), 5, 0.0)) == 1  # budget spent: one run
    with pytest.raises(dataclasses.FrozenInstanceError):
        bc.PRESETS["smoke"].cases[0].n_boot = 2


def test_interleaved_timing_settles_before_every_timed_call(monkeypatch):
    """Each round times ours, then each peer, and every timed call starts after ``settle`` (so a
    library's spinning threads never fall on the next one's time); ours is warmed up right before
    its rounds exactly when the peers were (their check run), and then its peak memory is taken on
    that warm-up, not on a timed call."""
    log: list[str] = []
    monkeypatch.setattr(br, "settle", lambda: log.append("settle"))

    class Probe:  # PeakMemory: logged, and a peak of 7 bytes
        def __init__(self, kind):
            self.peak = 7

        def __enter__(self):
            log.append("probe")
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(br, "PeakMemory", Probe)

    def peer_run(peer, image, n_boot, seed=0):
        log.append(peer)
        return pr.PeerRun(None, None, {}, {"sample": 0.0, "forward": 1.0, "stats": 0.0, "total": 1.0})

    monkeypatch.setattr(br.pr, "run_peer", peer_run)

    class Run(br.CaseRun):
        def ours_call(self):
            log.append("ours")

    for warmup in (True, False):  # ours has an untimed warm-up where the peers had one
        log.clear()
        case = dataclasses.replace(bc.PRESETS["smoke"].cases[0], repeats=2, budget_s=1e9, peer_warmup=warmup)
        run = Run(case, br.Context(quiet=True), None, None, np.zeros((1, 8, 8, 3)), None, None, {}, {})
        run.rec["ours_first_call_s"] = 0.0
        run.peers, run.peer_runs = {"torch": "torch", "ort": "ort"}, {"torch": [], "ort": []}
        br.time_ours(run)
        timed = ["settle", "ours"] if warmup else ["probe", "settle", "ours"]  # no probe on a timed call
        rounds = [*timed, "settle", "torch", "settle", "ort"] * 2
        assert log == (["probe", "ours"] if warmup else []) + rounds
        assert run.rec["ours_repeats"] == 2 and run.rec["best_peer"] in ("torch", "ort")
        assert run.rec["peak_memory_bytes"] == 7


def test_gpu_baseline_batch_fits_8_gib_of_attention_maps():
    """On a GPU the baseline batches its forwards: as many images as keep the 12 layers'
    float32 attention maps (output_attentions) under 8 GiB, at most 1 + B; one at a time on a CPU."""
    from bench.run import Context, baseline_batch

    gpu, cpu = Context(quiet=True, torch_device="cuda"), Context(quiet=True)
    case = {c.name: c for c in bc.PRESETS["gpu"].cases}
    vits16, vits8 = get_config("dino_vits16"), get_config("dino_vits8")
    per16 = 12 * 6 * 197**2 * 4  # ViT-S/16 at 224 px: 11.2 MB per image
    assert baseline_batch(case["vits16_224_B256"], vits16, gpu) == 257
    assert baseline_batch(case["scaleB_vits16_224_B1024"], vits16, gpu) == (8 << 30) // per16
    assert baseline_batch(case["paper_vits8_488_B16"], vits8, gpu) == 2  # 4.0 GB per image
    assert baseline_batch(case["vits16_224_B256"], vits16, cpu) == 1
    assert baseline_batch(bc.PRESETS["smoke"].cases[1], get_config("test_tiny8"), cpu) == 2
