"""The README stays true: its two commands, its Python example, and the figure it shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arb_jax import cli
from arb_jax.io import images

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _setup_commands() -> tuple[str, str]:
    """The README's install-and-run command and its test command (the first bash block)."""
    lines = [line for line in _blocks("bash")[0].strip().splitlines() if line.strip()]
    main_cmd = next(line for line in lines if "arb regularize" in line)
    test_cmd = next(line for line in lines if "pytest" in line)
    return main_cmd, test_cmd


def test_setup_commands_install_and_ci_runs_the_test_command():
    main_cmd, test_cmd = _setup_commands()
    assert "pip install -e ." in main_cmd
    assert "pip install -e '.[test]'" in test_cmd and test_cmd.endswith("pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def test_readme_names_the_fast_subset_next_to_the_full_command():
    tests = README[README.index("## Tests") :]
    assert "pytest -q" in tests and '-m "not slow"' in tests


@pytest.mark.slow
def test_figure_shown_is_what_the_main_command_writes(tmp_path):
    figure = re.search(r"!\[[^]]*\]\(([^)]+)\)", README).group(1)
    shown = ROOT / figure
    assert shown.exists(), figure
    main_cmd, _ = _setup_commands()
    argv = shlex.split(main_cmd[main_cmd.index("arb regularize") :])[1:]
    out = argv.index("--out")
    argv[out + 1] = str(tmp_path)
    assert cli.main([*argv, "--quiet"]) == 0
    written = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in written] == [shown.name.replace("_arb", "")]
    assert Image.open(written[0]).size == Image.open(shown).size


@pytest.mark.slow
def test_python_example_runs(tmp_path, monkeypatch):
    """The README's API example, on the demo model instead of the DINO download."""
    code = _blocks("python")[0]
    assert 'arb.load_vit("dino_vits8", image_size=488)' in code
    code = code.replace('arb.load_vit("dino_vits8", image_size=488)', 'arb.load_vit("demo", image_size=64)')
    code = code.replace("n_boot=16", "n_boot=2")
    Image.fromarray(images.sample_images()["chelsea"]).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    res = scope["res"]
    assert res.z.shape == (1, 8, 8) and np.all((np.asarray(res.p) >= 0) & (np.asarray(res.p) <= 1))
    assert (tmp_path / "cat_arb.png").exists()


@pytest.mark.slow
def test_your_own_model_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "Your own model" example, unchanged: a user's Flax model in the pipeline."""
    code = next(b for b in _blocks("python") if "class PatchScorer" in b)
    assert len(code.strip().splitlines()) < 20
    Image.fromarray(images.sample_images()["chelsea"]).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    res = scope["res"]
    assert res.z.shape == (1, 14, 14) and res.options.n_boot == 8
    assert np.all((np.asarray(res.lfdr) >= 0) & (np.asarray(res.lfdr) <= 1))
