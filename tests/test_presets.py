"""Presets ("paper", "attnreg"), the shared π₀, rounded percentile thresholds, and their flags.

The numbers of ``preset="attnreg"`` are checked against the authors' pipeline in
test_authors_preset.py; here: what each preset sets, that flags and keywords override it, that
outputs record it, and that ``--help`` shows every default.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest
from PIL import Image

from arb_jax import PRESETS, cli, load_vit, regularize_attention
from arb_jax.cli.main import build_parser
from arb_jax.core.options import ARBOptions
from arb_jax.core.regularize import Percentile, p_threshold
from arb_jax.io import images
from arb_jax.study import sweep


@pytest.fixture(scope="module")
def demo():
    return load_vit("demo")


@pytest.fixture(scope="module")
def batch(demo):
    photos = images.sample_images()
    return np.stack([images.prepare(photos[n], (96, 96), 8) for n in ("astronaut", "coffee")])


def test_presets_set_their_fields_and_keywords_override_them():
    assert ARBOptions() == ARBOptions(preset="paper")
    assert ARBOptions().pvalue == "upper" and ARBOptions().lfdr_pi0 == 1.0
    authors = ARBOptions(preset="attnreg")
    for name, value in PRESETS["attnreg"].items():
        assert getattr(authors, name) == value
    mixed = ARBOptions(preset="attnreg", pvalue="upper", z_th=0.5)
    assert (mixed.pvalue, mixed.z_th, mixed.pi0_method, mixed.lfdr_pi0) == ("upper", 0.5, "attnreg", "shared")
    # a preset is a name for values: the same values are the same options
    assert ARBOptions(preset="attnreg") == ARBOptions(**PRESETS["attnreg"])
    with pytest.raises(ValueError, match="unknown preset 'authors'; choose one of paper, attnreg"):
        ARBOptions(preset="authors")
    assert ARBOptions(preset="attnreg", alpha=Percentile(10)).alpha == Percentile(10.0, 2)


def test_attnreg_preset_equals_its_options_and_shares_one_pi0(demo, batch):
    key = jax.random.key(0)
    by_name = regularize_attention(demo, batch, key, n_boot=2, preset="attnreg")
    spelled = regularize_attention(
        demo,
        batch,
        key,
        n_boot=2,
        pvalue="attnreg",
        pi0_method="attnreg",
        lfdr_pi0="shared",
        percentile_decimals=2,
    )
    for k, v in by_name.to_numpy().items():
        np.testing.assert_array_equal(v, spelled.to_numpy()[k], err_msg=k)
    np.testing.assert_array_equal(by_name.lfdr_pi0, by_name.pi0)
    assert by_name.options.preset == "attnreg" and spelled.options.preset == "paper"
    fixed = regularize_attention(demo, batch, key, n_boot=2, preset="attnreg", lfdr_pi0=0.5)
    np.testing.assert_array_equal(fixed.lfdr_pi0, [0.5, 0.5])
    np.testing.assert_array_equal(fixed.pi0, by_name.pi0)  # the π₀ map keeps its own estimate
    assert not np.array_equal(fixed.lfdr, by_name.lfdr)


def test_percentile_threshold_rounded_to_decimals_as_numpy_round():
    rng = np.random.default_rng(1)
    p = rng.random(500).astype(np.float32)
    z = np.ones_like(p)
    changed = 0
    for q in (7.0, 10.0, 33.0, 50.0, 71.0):
        t = round(float(np.percentile(p.astype(np.float64), q)), 2)
        got = np.asarray(p_threshold(p, z, p, Percentile(q, decimals=2)))
        np.testing.assert_array_equal(got != 0, p <= np.float32(t))
        changed += not np.array_equal(got != 0, p <= np.percentile(p, q))
    assert changed >= 2  # the rounding is not a no-op
    with pytest.raises(TypeError, match="decimals"):
        Percentile(10, decimals=2.5)


def test_regularize_preset_flag_records_itself_and_a_flag_overrides_it(tmp_path, capsys):
    photo = images.sample_images()["chelsea"]  # 300 x 451
    Image.fromarray(photo).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    argv = ["regularize", str(tmp_path / "cat.png"), "--model", "demo", "--size", "96", "--no-figures"]
    assert cli.main([*argv, "--preset", "attnreg", "--out", str(out)]) == 0
    saved = np.load(out / "cat.npz")
    settings = json.loads(str(saved["settings"]))
    assert settings["preset"] == "attnreg" and settings["resize"] == "square"
    assert settings["pvalue"] == "attnreg" and settings["lfdr_pi0"] == "shared"
    assert saved["attn"].shape == (12, 12)  # 96 x 96: the aspect ratio not kept
    assert float(saved["lfdr_pi0"]) == float(saved["pi0"])
    assert "resized to 96 x 96 px (aspect ratio not kept)" in capsys.readouterr().out
    over = tmp_path / "over"
    assert cli.main([*argv, "--preset", "attnreg", "--pvalue", "upper", "--out", str(over)]) == 0
    settings = json.loads(str(np.load(over / "cat.npz")["settings"]))
    assert (settings["pvalue"], settings["pi0_method"], settings["preset"]) == ("upper", "attnreg", "attnreg")
    paper = tmp_path / "paper"
    assert cli.main([*argv, "--lfdr-pi0", "estimate", "--z-th", "-0.5", "--out", str(paper)]) == 0
    saved = np.load(paper / "cat.npz")
    settings = json.loads(str(saved["settings"]))
    assert (settings["preset"], settings["resize"], settings["lfdr_pi0"], settings["z_th"]) == (
        "paper",
        "crop",
        "estimate",
        -0.5,
    )
    assert saved["attn"].shape == (12, 18)  # short side 96, aspect kept
    capsys.readouterr()
    for bad in (["--lfdr-pi0", "0"], ["--lfdr-pi0", "some"], ["--z-th", "nan"], ["--preset", "x"]):
        assert cli.main([*argv, *bad, "--out", str(paper)]) != 0
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("arb regularize: error: argument"), err


def _help_lines(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{option: its help text as --help prints it} for one sub-command parser."""
    fmt = parser._get_formatter()
    return {
        a.option_strings[-1]: fmt._expand_help(a) if a.help else ""
        for a in parser._actions
        if a.option_strings and a.help is not argparse.SUPPRESS
    }


@pytest.mark.parametrize("command", ["regularize", "sweep"])
def test_help_shows_every_default_and_every_choice(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    lines = _help_lines(parser)
    flags = {"--help", "--quiet", "--debug", "--heads", "--redo", "--distributed"}
    for option, text in lines.items():
        if option in flags or option in ("--out", "--host", "--limit", "--grid", "--workers"):
            continue
        assert "default" in text, f"{command} {option}: {text!r}"
    for name in ("normal", "pixel", "patch", "uniform"):
        assert f"{name}:" in lines["--sampler"]
    for name in ("upper", "plus_one", "two_sided", "attnreg"):
        assert f"{name}:" in lines["--pvalue"]
    for name in ("smoother", "bootstrap", "attnreg"):
        assert f"{name}:" in lines["--pi0-method"]
    assert "pvalue=attnreg" in lines["--preset"] and "size=488" in lines["--preset"]
    assert ("resize=square" in lines["--preset"]) == (command == "regularize")
    assert "short side" in lines["--size"]
    assert lines["--seed"] and lines["--dtype"]


def test_sweep_preset_sets_size_and_statistics_and_records_them(tmp_path):
    photos = images.sample_images()
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(photos[name]).save(folder / f"{name}.png")
    cfg = sweep.SweepConfig(
        data=str(folder), model="demo", out=str(tmp_path / "r"), preset="attnreg", size=100, z_filter=None
    )
    assert cfg.arb_options()["pvalue"] == "attnreg" and cfg.arb_options()["lfdr_pi0"] == "shared"
    summary = sweep.run_sweep(cfg, log=lambda s: None)
    assert summary.written == 2 and summary.failed == 0
    record = json.loads((tmp_path / "r" / sweep.CONFIG_FILE).read_text())
    assert (record["preset"], record["pvalue"], record["pi0_method"], record["size"]) == (
        "attnreg",
        "attnreg",
        "attnreg",
        100,  # resized to 100 x 100, cropped to 96 x 96 for the patch of 8
    )
    import dataclasses

    with pytest.raises(ValueError, match="preset: 'attnreg' there, 'paper' now"):
        sweep.run_sweep(dataclasses.replace(cfg, preset="paper"), log=lambda s: None)


def test_regularize_map_flags_and_percentile_thresholds(tmp_path, capsys):
    base = ["regularize", "skimage:astronaut", "--model", "demo", "--size", "48", "--no-figures"]
    out = tmp_path / "roll"
    assert cli.main([*base, "--map", "rollout", "--n-boot", "2", "--out", str(out)]) == 0
    saved = np.load(out / "astronaut.npz")
    assert json.loads(str(saved["settings"]))["map"] == "rollout"
    vit = load_vit("demo")
    x = images.prepare(images.sample_images()["astronaut"], 48, 8)
    from arb_jax.models import rollout_map

    expected = rollout_map(vit.at_size(x.shape[:2]))(vit.at_size(x.shape[:2]).params, x[None])[0]
    np.testing.assert_allclose(saved["attn"], expected, rtol=1e-5, atol=1e-7)
    pct = tmp_path / "pct"
    assert cli.main([*base, "--preset", "attnreg", "--p-percentile", "10", "--out", str(pct)]) == 0
    saved = np.load(pct / "astronaut.npz")
    p = np.repeat(np.repeat(saved["p"], 8, 0), 8, 1).astype(np.float64)
    alpha = round(float(np.percentile(p, 10)), 2)
    kept = (saved["map_p"] > 0) == ((saved["p"] <= np.float32(alpha)) & (saved["z"] >= 0))
    assert kept.all() and json.loads(str(saved["settings"]))["alpha"] == "percentile 10.0"
    capsys.readouterr()
    for bad, message in (
        (["--map", "cdam"], "--map cdam needs --class-index K"),
        (["--block", "9"], "--block 9 is out of range for a model of 4 blocks"),
        (["--map", "rollout", "--block", "1"], "--block is for --map cls_attention"),
        (["--map", "rollout", "--heads"], "--heads stores the last block's per-head attention"),
        (["--p-percentile", "101"], "must lie in [0, 100]"),
    ):
        assert cli.main([*base, *bad, "--out", str(tmp_path / "bad")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (bad, err)


def test_batch_figure_with_percentile_thresholds(tmp_path):
    """Recorded "percentile Q" thresholds are read back for the batch figure (it used to fail)."""
    out = tmp_path / "batch"
    argv = ["regularize", "skimage:astronaut", "skimage:coffee", "--model", "demo", "--size", "48"]
    assert cli.main([*argv, "--p-percentile", "10", "--lfdr-percentile", "20", "--out", str(out)]) == 0
    assert Image.open(out / "batch_figure.png").size[0] > 800
