"""The README stays true: its two commands, its Python example, and the figure it shows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from arb_jax.io import images

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_opens_with_two_setup_commands_and_ci_runs_the_second():
    first = _blocks("bash")[0].strip().splitlines()
    assert README.startswith("# arb-jax\n\n```bash\n")
    assert len(first) == 2
    main_cmd, test_cmd = first
    assert "arb regularize" in main_cmd and "pip install -e ." in main_cmd
    assert test_cmd.endswith("pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def test_figure_shown_exists_and_is_the_main_commands_output():
    figure = re.search(r"!\[[^]]*\]\(([^)]+)\)", README).group(1)
    png = ROOT / figure
    assert png.exists(), figure
    assert Image.open(png).size == (1650, 814)


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
