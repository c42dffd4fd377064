"""Which library runs a CPU's dots (``arb_jax.models.xla_options``): the choice, and its effect.

The forwards' numbers under oneDNN are checked against HF transformers in
``tests/test_vit.py::test_parity_with_hf_real_architecture`` (both libraries, 1e-5).
"""

import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arb_jax.core import engine
from arb_jax.core.options import ARBOptions
from arb_jax.models import build_vit, xla_options


def _libraries(fn, *args) -> set[str]:
    """The library fusions (``__onednn_fusion``, ``__ynn_fusion``, …) in fn's compiled HLO."""
    return set(re.findall(r"__[a-z]+_fusion", fn.lower(*args).compile().as_text()))


def test_the_choice_and_its_errors(monkeypatch):
    monkeypatch.delenv(xla_options.CPU_DOTS_ENV, raising=False)
    assert jax.default_backend() == "cpu"
    # This jaxlib (pinned by the project's lock) has oneDNN: "auto" picks it on a CPU.
    assert xla_options.cpu_dots() == "onednn"
    assert xla_options.compiler_options() == xla_options.ONEDNN_DOTS
    assert xla_options.compiler_options(choice="xla") == {}
    assert xla_options.compiler_options(backend="gpu") == {}  # off a CPU: nothing
    assert xla_options.compiler_options(backend="tpu", choice="onednn") == {}
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "xla")
    assert xla_options.cpu_dots() == "xla" and xla_options.compiler_options() == {}
    assert xla_options.cpu_dots("onednn") == "onednn"  # an explicit choice wins
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "mkl")
    with pytest.raises(ValueError, match="unknown ARB_CPU_DOTS 'mkl'"):
        xla_options.compiler_options()


def test_onednn_runs_the_2d_dots_and_ynnpack_the_attention(monkeypatch):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 197, 384)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((384, 1536)), jnp.float32)
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "onednn")
    on = xla_options.jit(lambda a, b: a @ b)
    assert "__onednn_fusion" in _libraries(on, x, w)
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "xla")
    off = xla_options.jit(lambda a, b: a @ b)
    assert "__onednn_fusion" not in _libraries(off, x, w)
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    for fn in (on, off):  # both float32 products of a 384-long sum, against float64
        np.testing.assert_allclose(np.asarray(fn(x, w)), ref, rtol=0, atol=2e-4 * np.abs(ref).max())


_DROP_LOOP = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from arb_jax.models import xla_options

    x, w = jnp.ones((394, 384)), jnp.ones((384, 1536))
    for i in range(200):  # a new function each time, dropped right after its call
        f = xla_options.jit(lambda a, b: jnp.tanh(a @ b) @ b.T, xla_options.ONEDNN_DOTS)
        y = f(x, w)
        del f
    y.block_until_ready()
    print("retired", xla_options.retired_count())
    """
)


@pytest.mark.slow
def test_dropping_a_function_with_onednn_dots_right_after_its_call_does_not_abort():
    """XLA:CPU 0.10.2 aborts when an executable with oneDNN calls is freed just after it ran
    (``jax.jit`` with these options died within 3–10 calls of this loop, three tries);
    ``xla_options.jit`` keeps the last ``RETIRED_MAX`` dropped functions until their last
    execution is over. A fresh interpreter: the abort would kill a test worker."""
    out = subprocess.run([sys.executable, "-c", _DROP_LOOP], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    retired = int(out.stdout.split()[-1])
    assert 1 <= retired <= xla_options.RETIRED_MAX + 1  # bounded: older ones were released


_ALIVE_AT_EXIT = textwrap.dedent(
    """
    import jax.numpy as jnp
    from arb_jax.models import xla_options

    f = xla_options.jit(lambda a: a @ a, xla_options.ONEDNN_DOTS)  # a module global at exit
    y = f(jnp.ones((64, 64)))

    class Holder:
        pass

    h = Holder()
    h.me, h.f = h, xla_options.jit(lambda a: a @ a.T, xla_options.ONEDNN_DOTS)  # in a cycle
    h.f(y).block_until_ready()
    print("done")
    """
)


def test_wrappers_alive_at_interpreter_exit_are_retired_quietly():
    """At exit the module's globals are cleared before the last wrappers are collected; their
    ``__del__`` printed "Exception ignored … 'NoneType' object has no attribute 'append'"."""
    out = subprocess.run([sys.executable, "-c", _ALIVE_AT_EXIT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["done"], out.stderr[-2000:]
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_kept_alive_jit_is_the_jitted_function_for_its_callers(monkeypatch):
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "onednn")
    fn = xla_options.jit(lambda a: {"y": a * 2, "s": a.sum()})
    assert isinstance(fn, xla_options.KeptAliveJit)
    x = jnp.arange(6.0).reshape(2, 3)
    out = fn(x)
    np.testing.assert_array_equal(np.asarray(out["y"]), np.asarray(x) * 2)
    assert fn.last_output is out["s"]  # the smallest output marks the call's end
    assert "stablehlo.multiply" in fn.lower(x).as_text()  # attributes pass through: lower
    before = xla_options.retired_count()
    del fn, out
    assert xla_options.retired_count() == before + 1  # retired, not freed
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "xla")
    assert not isinstance(xla_options.jit(lambda a: a), xla_options.KeptAliveJit)  # plain jax.jit


def test_the_runner_compiles_with_the_options_and_keys_its_cache_on_them(monkeypatch):
    vit = build_vit("test_tiny16", None, image_size=32, seed=0)
    opts = ARBOptions()
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "onednn")
    with_onednn = engine.compiled(vit, opts, None)
    assert engine.compiled(vit, opts, None) is with_onednn
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "xla")
    without = engine.compiled(vit, opts, None)
    assert without is not with_onednn  # a changed choice never reuses the other's function


def _onednn_fusion_ops(hlo: str) -> list[set[str]]:
    """The HLO opcodes inside each oneDNN fusion of a compiled module's text."""
    called = set(re.findall(r"onednn_fusion[.0-9]* = [^\n]*calls=%?([\w.]+)", hlo))
    out = []
    for comp in hlo.split("\n\n"):
        name = re.match(r"\s*%?([\w.]+) ", comp)
        if name and name.group(1) in called:
            out.append(set(re.findall(r"\} ([a-z][\w-]*)\(", comp)) - {"parameter"})
    return out


@pytest.mark.parametrize("name", ["test_tiny16", "test_tiny14_reg"])
def test_each_onednn_call_is_a_lone_dot_and_the_whole_vit_runs(monkeypatch, name):
    # XLA 0.10.2's DOT fusion type also pulls a dot's elementwise producers into the oneDNN graph;
    # on the CLS-only last block (2-D rows) oneDNN then fails to compile it and the process dies
    # (SIGILL). The mode used makes every oneDNN call a dot alone.
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "onednn")
    vit = build_vit(name, None, seed=0)
    images = jnp.asarray(np.random.default_rng(2).standard_normal((2, *vit.image_size, 3)), jnp.float32)
    fn = xla_options.jit(vit.apply)
    ops = _onednn_fusion_ops(fn.lower(vit.params, images).compile().as_text())
    assert len(ops) >= 4 * vit.config.depth  # q | kv, proj, fc1, fc2 of every block at least
    assert all(o <= {"dot", "bitcast"} and "dot" in o for o in ops), ops
    out = fn(vit.params, images)  # runs (the DOT mode dies here)
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "xla")
    ref = jax.jit(vit.apply)(vit.params, images)
    np.testing.assert_allclose(out["attn"], ref["attn"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["features"], ref["features"], rtol=0, atol=1e-5)


def test_auto_keeps_the_persistent_compilation_cache_working(monkeypatch, tmp_path):
    # XLA 0.10.2 cannot serialise an executable with oneDNN calls ("ToProto is not implemented
    # for thunk kind: onednn-fusion"): with the cache on (the `arb` command), "auto" stays "xla".
    monkeypatch.delenv(xla_options.CPU_DOTS_ENV, raising=False)
    assert not xla_options.persistent_cache_on()
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        assert xla_options.persistent_cache_on()
        assert xla_options.cpu_dots() == "xla" and xla_options.compiler_options() == {}
        assert xla_options.cpu_dots("onednn") == "onednn"  # asked for: the faster dots, no cache
        monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "onednn")
        assert xla_options.compiler_options() == xla_options.ONEDNN_DOTS
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert xla_options.cpu_dots("auto") == "onednn"


def test_the_vector_width_choice_and_its_option(monkeypatch):
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "xla")
    monkeypatch.delenv(xla_options.VECTOR_WIDTH_ENV, raising=False)
    assert xla_options.vector_width() is None and xla_options.compiler_options() == {}  # XLA's own
    monkeypatch.setenv(xla_options.VECTOR_WIDTH_ENV, "512")
    assert xla_options.vector_width() == 512
    assert xla_options.compiler_options() == {"xla_cpu_prefer_vector_width": 512}
    assert xla_options.compiler_options(width="256") == {"xla_cpu_prefer_vector_width": 256}
    assert xla_options.compiler_options(width="auto") == {}
    assert xla_options.compiler_options(backend="gpu") == {}  # off a CPU: nothing
    monkeypatch.setenv(xla_options.CPU_DOTS_ENV, "onednn")
    assert xla_options.compiler_options() == {**xla_options.ONEDNN_DOTS, "xla_cpu_prefer_vector_width": 512}
    monkeypatch.setenv(xla_options.VECTOR_WIDTH_ENV, "1024")
    with pytest.raises(ValueError, match="unknown ARB_CPU_VECTOR_WIDTH '1024'"):
        xla_options.compiler_options()


def test_512_bit_vectors_compile_and_give_the_same_forward(monkeypatch):
    vit = build_vit("test_tiny14_reg", None, seed=0)
    images = jnp.asarray(np.random.default_rng(3).standard_normal((2, *vit.image_size, 3)), jnp.float32)
    out = {
        w: xla_options.jit(vit.apply, xla_options.compiler_options(width=w))(vit.params, images)
        for w in ("256", "512")
    }
    np.testing.assert_allclose(out["512"]["attn"], out["256"]["attn"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["512"]["features"], out["256"]["features"], rtol=0, atol=1e-5)
