"""The ``arb`` command line end to end on the shipped demo model, and every user-error path.

Most commands run in-process through ``arb_jax.cli.main`` (fast, shares compiled functions); one
test runs the installed ``arb`` script in a subprocess to check exit status and that no Python
traceback reaches the user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from arb_jax import __version__, cli
from arb_jax.checkpoints import loading
from arb_jax.core import pipeline
from arb_jax.io import images
from arb_jax.study import simulate

SIZE, B, NOISE = 48, 3, 16  # small: the demo ViT (patch 8) at 48 px is a 6x6 patch grid


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return images.sample_images()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """``arb *argv``; ``regularize`` runs the offline demo ViT unless a --model is given (the
    real model's own command test is in test_real_model.py)."""
    if argv and argv[0] == "regularize" and "--model" not in argv:
        argv = (*argv, "--model", "demo")
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("arb: error:")]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"arb-jax {__version__}"


@pytest.mark.parametrize(
    "command", ["regularize", "models", "convert", "sweep", "report", "finetune", "train-demo"]
)
def test_every_command_has_help_with_examples(capsys, command):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"arb {command}" in text and "example" in text.lower()
    assert "--quiet" in text


def test_models_lists_demo_hub_and_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ARB_CACHE", str(tmp_path / "cache"))
    rc, out, _ = _run(capsys, "models")
    assert rc == 0
    lines = out.splitlines()
    assert any(line.startswith("demo ") and "not DINO" in line for line in lines)
    vits8 = next(line for line in lines if line.startswith("dino_vits8 "))
    assert "dl.fbaipublicfiles.com" in vits8 and " no " in vits8
    assert str(tmp_path / "cache") in out


@pytest.mark.slow
def test_regularize_files_match_python_api(capsys, tmp_path, photos):
    """PNG + NPZ per image; the NPZ arrays equal the API's for the same seed (bit for bit)."""
    Image.fromarray(photos["chelsea"]).save(tmp_path / "cat.png")
    gray = photos["camera"] if photos["camera"].ndim == 2 else photos["camera"][..., 0]
    Image.fromarray(gray).convert("L").save(tmp_path / "camera.jpg", quality=95)
    out = tmp_path / "out"
    rc, stdout, err = _run(
        capsys,
        "regularize",
        str(tmp_path / "cat.png"),
        "skimage:astronaut",
        str(tmp_path / "camera.jpg"),
        "--size",
        str(SIZE),
        "--n-boot",
        str(B),
        "--inject-noise",
        str(NOISE),
        "--seed",
        "7",
        "--heads",
        "--out",
        str(out),
    )
    assert rc == 0, err
    assert "demo ViT" in stdout and "not DINO" in stdout
    assert "camera: converted to RGB (L → RGB)" in stdout  # the grayscale note
    assert stdout.count("resized to a short side of 48 px") == 1  # said once
    summaries = [line for line in stdout.splitlines() if "pi0=" in line and "zeroed" in line]
    assert len(summaries) == 3
    for name in ("cat", "astronaut", "camera"):
        png = Image.open(out / f"{name}.png")
        assert png.size[0] > 800 and png.size[1] > 300

    vit = loading.load_vit("demo")
    key = jax.random.key(7)
    for i, (name, img) in enumerate(
        [("cat", np.asarray(Image.open(tmp_path / "cat.png"))), ("astronaut", photos["astronaut"])]
    ):
        x = images.prepare(img, SIZE, vit.patch)
        vit_hw = loading.load_vit("demo", image_size=x.shape[:2])
        key_i = jax.random.fold_in(key, i)
        noisy, roi = simulate.square_noise(jax.random.split(key_i)[1], x, NOISE)
        res = pipeline.regularize_attention(
            vit_hw, np.asarray(noisy)[None], key_i[None], n_boot=B, heads=True, return_null=True
        )
        saved = np.load(out / f"{name}.npz")
        np.testing.assert_array_equal(saved["image"], np.asarray(noisy))
        np.testing.assert_array_equal(saved["roi"], np.asarray(roi))
        for k, v in res.to_numpy().items():
            np.testing.assert_array_equal(saved[k], v[0], err_msg=f"{name}: {k}")
        assert saved["z_null"].shape == (B, *vit_hw.grid)
        assert saved["attn_heads"].shape == (vit.n_heads, *vit_hw.grid)
        assert set(saved) >= {"attn", "z", "p", "lfdr", "pi0", "map_p", "map_lfdr", "map_pi0"}


def test_batch_reports_each_bad_input_and_processes_the_rest(capsys, tmp_path, photos, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(photos["coffee"]).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
    locked = tmp_path / "locked"
    locked.mkdir()
    Image.fromarray(photos["rocket"]).save(locked / "r.png")
    real_iterdir = Path.iterdir

    def iterdir(self):  # root can read any folder, so deny this one explicitly
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    rc, stdout, err = _run(
        capsys,
        "regularize",
        str(tmp_path / "missing.jpg"),
        str(corrupt),
        str(locked),
        str(good),
        "skimage:nope",
        "--size",
        str(SIZE),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert rc == 1
    lines = _error_lines(err)
    assert len(lines) == 4, err
    assert any("no such file or folder" in line and "missing.jpg" in line for line in lines)
    assert any("corrupt" in line.lower() or "not a recognised image" in line for line in lines)
    assert any("cannot read folder" in line and "Permission denied" in line for line in lines)
    assert any("unknown scikit-image photo 'nope'" in line for line in lines)
    assert "Traceback" not in err
    assert (tmp_path / "out" / "good.npz").exists() and (tmp_path / "out" / "good.png").exists()
    assert not (tmp_path / "out" / "corrupt.npz").exists()


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the outputs (the folder's lock file, ``.arb.lock``, aside)."""
    return {f.name: f.stat().st_mtime_ns for f in sorted(folder.iterdir()) if f.name != ".arb.lock"}


@pytest.mark.slow
def test_rerun_resumes_and_reruns_what_changed(capsys, tmp_path, photos):
    """Outputs carry their settings; a rerun skips images done with the same settings and input."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(photos[name]).save(src / f"{name}.png")
    out = tmp_path / "out"
    argv = ["regularize", str(src), "--size", str(SIZE), "--n-boot", "2", "--out", str(out)]
    rc, stdout, _ = _run(capsys, *argv)
    assert rc == 0 and stdout.count("zeroed") == 3
    first = _mtimes(out)
    assert sorted(first) == sorted(
        [f"{n}.{e}" for n in ("chelsea", "coffee", "rocket") for e in ("npz", "png")] + ["batch_figure.png"]
    )
    assert "3 images in one figure (a row each)" in stdout
    settings = json.loads(str(np.load(out / "coffee.npz")["settings"]))
    assert settings["n_boot"] == 2 and settings["index"] == 1 and settings["size"] == SIZE

    assert f"3 image(s) done, 0 already done before, 0 failed -> {out}" in stdout
    rc, stdout, _ = _run(capsys, *argv)  # nothing to do
    assert rc == 0 and "3 of 3 images already done" in stdout and "zeroed" not in stdout
    assert "0 image(s) done, 3 already done before, 0 failed" in stdout
    assert _mtimes(out) == first

    (out / "rocket.png").unlink()  # a lost figure: that image again
    (out / "chelsea.npz").write_bytes(b"PK\x03\x04 truncated")  # a damaged archive: again
    os.utime(src / "coffee.png", ns=(1, 1))  # an input that changed: again
    rc, stdout, _ = _run(capsys, *argv)
    assert rc == 0 and stdout.count("zeroed") == 3
    rc, stdout, _ = _run(capsys, *argv, "--n-boot", "3")  # other settings: every image again
    assert rc == 0 and stdout.count("zeroed") == 3
    assert json.loads(str(np.load(out / "rocket.npz")["settings"]))["n_boot"] == 3
    rc, stdout, _ = _run(capsys, *argv, "--n-boot", "3", "--redo")
    assert rc == 0 and stdout.count("zeroed") == 3
    # no temporary files left (the folder's lock file stays, released)
    assert [f.name for f in out.iterdir() if f.name.startswith(".")] == [".arb.lock"]


@pytest.mark.slow
def test_batch_equals_one_at_a_time_and_no_figures(capsys, tmp_path, photos):
    """--batch 2 runs images of one size together: same keys, same numbers up to f32 rounding."""
    names = ["chelsea", "coffee", "rocket"]  # all landscape: one size at a 48 px short side
    common = ["--size", str(SIZE), "--n-boot", str(B), "--inject-noise", str(NOISE), "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(capsys, "regularize", *[f"skimage:{n}" for n in names], *common, "--out", str(one))[0] == 0
    assert (
        _run(
            capsys,
            "regularize",
            *[f"skimage:{n}" for n in names],
            *common,
            "--out",
            str(two),
            "--batch",
            "2",
            "--no-figures",
        )[0]
        == 0
    )
    assert sorted(f.name for f in two.iterdir()) == [".arb.lock", *(f"{n}.npz" for n in names)]
    for n in names:
        a, b = np.load(one / f"{n}.npz"), np.load(two / f"{n}.npz")
        np.testing.assert_array_equal(a["image"], b["image"])  # same noise square
        np.testing.assert_allclose(a["attn"], b["attn"], rtol=1e-5, atol=1e-8, err_msg=n)
        np.testing.assert_allclose(a["z_null"], b["z_null"], rtol=1e-4, atol=1e-4, err_msg=n)
        np.testing.assert_allclose(a["z"], b["z"], rtol=1e-4, atol=1e-4, err_msg=n)
        np.testing.assert_allclose(a["lfdr"], b["lfdr"], rtol=0, atol=1e-6, err_msg=n)
        np.testing.assert_allclose(a["p"], b["p"], rtol=0, atol=1e-6, err_msg=n)
    rc, _, err = _run(capsys, "regularize", "skimage:coffee", "--batch", "0", "--out", str(two))
    assert rc == 1 and "argument --batch: must be between 1 and 4096, got 0" in err


def test_image_smaller_than_a_patch(capsys, tmp_path, photos):
    Image.fromarray(photos["coffee"]).save(tmp_path / "c.png")
    rc, _, err = _run(
        capsys, "regularize", str(tmp_path / "c.png"), "--size", "4", "--quiet", "--out", str(tmp_path / "o")
    )
    assert rc == 1  # refused as an option, before any image is read
    (line,) = _error_lines(err)
    assert "--size 4 is smaller than the model's patch (8 px)" in line
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_bad_options(capsys, tmp_path):
    rc, _, err = _run(
        capsys, "regularize", "skimage:astronaut", "--model", "dino_vitz99", "--out", str(tmp_path)
    )
    assert rc == 1
    (line,) = _error_lines(err)
    assert "unknown model 'dino_vitz99'" in line and "dino_vits8" in line
    rc, _, err = _run(
        capsys,
        "regularize",
        "skimage:astronaut",
        "--n-boot",
        "0",
        "--quiet",
        "--size",
        str(SIZE),
        "--out",
        str(tmp_path),
    )
    assert rc == 1 and err.splitlines() == [
        "arb regularize: error: argument --n-boot: must be between 1 and 100000, got 0 "
        "(see 'arb regularize --help')"
    ]
    rc, _, err = _run(
        capsys,
        "regularize",
        "skimage:astronaut",
        "--inject-noise",
        "500",
        "--quiet",
        "--size",
        str(SIZE),
        "--out",
        str(tmp_path),
    )
    assert rc == 1 and "--inject-noise 500 is larger than the image" in err


def test_convert_command_round_trip(capsys, tmp_path):
    """``arb convert`` on a DINO-style ``torch.save`` file it made; the result loads with load_vit."""
    import torch

    dim, depth, patch, grid, mlp = 64, 2, 8, 3, 128
    g = torch.Generator().manual_seed(0)
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        shapes.update(
            {
                f"blocks.{i}.norm1.weight": (dim,),
                f"blocks.{i}.norm1.bias": (dim,),
                f"blocks.{i}.attn.qkv.weight": (3 * dim, dim),
                f"blocks.{i}.attn.qkv.bias": (3 * dim,),
                f"blocks.{i}.attn.proj.weight": (dim, dim),
                f"blocks.{i}.attn.proj.bias": (dim,),
                f"blocks.{i}.norm2.weight": (dim,),
                f"blocks.{i}.norm2.bias": (dim,),
                f"blocks.{i}.mlp.fc1.weight": (mlp, dim),
                f"blocks.{i}.mlp.fc1.bias": (mlp,),
                f"blocks.{i}.mlp.fc2.weight": (dim, mlp),
                f"blocks.{i}.mlp.fc2.bias": (dim,),
            }
        )
    torch.save({k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}, tmp_path / "vit.pth")

    rc, out, err = _run(capsys, "convert", str(tmp_path / "vit.pth"), str(tmp_path / "conv"))
    assert rc == 0, err
    assert "vit.pth" in out
    vit = loading.load_vit(str(tmp_path / "conv"), image_size=grid * patch)
    assert (vit.config.dim, vit.config.depth, vit.config.patch) == (dim, depth, patch)
    assert vit.cls_attention(np.zeros((1, grid * patch, grid * patch, 3), np.float32)).shape == (1, 1, 3, 3)

    rc, _, err = _run(capsys, "convert", str(tmp_path / "vit.pth"), str(tmp_path / "conv"))
    assert rc == 1 and len(_error_lines(err)) == 1 and "conv" in err  # exists: no overwrite
    rc, _, err = _run(capsys, "convert", str(tmp_path / "missing.pth"), str(tmp_path / "o2"))
    assert rc == 1
    (line,) = _error_lines(err)
    assert "missing.pth" in line


def test_installed_script_exit_status_and_no_traceback(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = Path(sys.executable).with_name("arb")
    proc = subprocess.run(
        [str(script), "regularize", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("arb: error:")
    proc = subprocess.run(
        [str(script), "regularize", str(tmp_path / "nope.png"), "--debug", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_arb_program_keeps_compiled_programs_in_the_cache(tmp_path):
    """The installed ``arb`` turns on JAX's persistent compilation cache in <ARB_CACHE>/xla (a
    rerun loads the compiled programs: same files, same results); JAX_COMPILATION_CACHE_DIR wins."""
    from _subproc import jax_env

    script = Path(sys.executable).with_name("arb")
    env = jax_env(ARB_CACHE=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    argv = [
        str(script),
        "regularize",
        "skimage:coffee",
        "--model",
        "demo",
        "--size",
        str(SIZE),
        "--n-boot",
        "2",
        "--quiet",
        "--no-figures",
    ]

    def run(out: str, env: dict) -> None:
        proc = subprocess.run(
            [*argv, "--out", str(tmp_path / out)], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("o1", env)
    xla = tmp_path / "cache" / "xla"
    entries = sorted(p.name for p in xla.iterdir())
    assert entries
    run("o2", env)
    assert sorted(p.name for p in xla.iterdir()) == entries  # nothing new to compile
    a, b = np.load(tmp_path / "o1" / "coffee.npz"), np.load(tmp_path / "o2" / "coffee.npz")
    for k in ("attn", "z", "p", "lfdr", "map_p"):
        np.testing.assert_array_equal(a[k], b[k])
    run("o3", {**env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")})
    assert any((tmp_path / "mine").iterdir())
    (tmp_path / "file").write_text("not a folder")  # no cache possible: none, quietly
    proc = subprocess.run(
        [*argv, "--out", str(tmp_path / "o4")],
        capture_output=True,
        text=True,
        env={**env, "ARB_CACHE": str(tmp_path / "file")},
        timeout=300,
    )
    assert proc.returncode == 0 and "cache" not in proc.stderr.lower(), proc.stderr[-3000:]
    assert (tmp_path / "o4" / "coffee.npz").exists()
