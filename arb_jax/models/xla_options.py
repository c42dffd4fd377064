"""The XLA compiler options arb-jax compiles its forwards with: which library runs a CPU's dots.

XLA:CPU (jaxlib 0.10) hands its dots to YNNPACK by default. For the 2-D products of a ViT
(q | k | v, the projection and the MLP at 197–3722 tokens) oneDNN's float32 kernels are faster
on an x86 CPU, and XLA can route the dots it supports (row-major operands) to oneDNN while the
attention's q·kᵀ (a column-major right-hand side) stays with YNNPACK. Each dot is its own
oneDNN call (``INDIVIDUAL_DOT``): the ``DOT`` fusion type also pulls elementwise neighbours
into the oneDNN graph, which XLA 0.10.2 fails to compile on the CLS-only last block, and the
process dies (SIGILL). The options are given per compilation (``jax.jit(...,
compiler_options=...)``), never through the process-wide ``XLA_FLAGS``, so importing arb-jax
changes nothing else a program compiles. ``bench/README.md`` has the figures.

``ARB_CPU_DOTS`` in the environment chooses: ``auto`` (the default: oneDNN where this jaxlib has
it, else XLA's own choice), ``onednn`` (an error where it is missing) or ``xla`` (XLA's default
library). Off a CPU the options are empty. XLA 0.10.2 cannot store an executable with oneDNN
calls in JAX's persistent compilation cache ("ToProto is not implemented for thunk kind:
onednn-fusion"), so "auto" keeps XLA's own choice while that cache is on (the ``arb`` command
turns it on): a rerun then skips its compiles. ``ARB_CPU_DOTS=onednn`` trades that for the
faster dots (a long sweep).

The width of the vectors XLA's own loops (LayerNorm, GELU, the softmax's exps) are compiled
for: XLA:CPU prefers 256-bit vectors even on an AVX-512 CPU. ``ARB_CPU_VECTOR_WIDTH``
chooses: ``auto`` (XLA's default), ``256`` or ``512``. On an AMD EPYC (Zen 5) 512 made the
forwards 1.02–1.09× faster, but on an Intel Xeon it was slower at 3722 tokens, and it moves a
result by more than one test's float32 tolerance (``bench/README.md``): so it is offered, not
the default.
"""

from __future__ import annotations

import collections
import functools
import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

CPU_DOTS_ENV = "ARB_CPU_DOTS"
CPU_DOTS = ("auto", "onednn", "xla")
VECTOR_WIDTH_ENV = "ARB_CPU_VECTOR_WIDTH"
VECTOR_WIDTHS = ("auto", "256", "512")
ONEDNN_DOTS: dict[str, Any] = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def cpu_dots(choice: str | None = None) -> str:
    """The library the CPU's dots go to: "onednn" or "xla", for ``choice`` (default: ``ARB_CPU_DOTS``).

    "auto" is "xla" while JAX's persistent compilation cache is on (``persistent_cache_on``).
    Raises ``ValueError`` for a name not in ``CPU_DOTS``, or for "onednn" where this jaxlib
    cannot compile with it.
    """
    if choice is None:
        choice = os.environ.get(CPU_DOTS_ENV, "auto") or "auto"
    if choice not in CPU_DOTS:
        raise ValueError(f"unknown {CPU_DOTS_ENV} {choice!r}; choose one of {CPU_DOTS}")
    if choice == "xla" or (choice == "auto" and persistent_cache_on()):
        return "xla"
    if _onednn_compiles():
        return "onednn"
    if choice == "onednn":
        raise ValueError(f"{CPU_DOTS_ENV}=onednn, but jaxlib {jax.__version__} has no oneDNN dots here")
    return "xla"


def vector_width(choice: str | None = None) -> int | None:
    """The vector width in bits XLA:CPU compiles its loops for, for ``choice`` (default:
    ``ARB_CPU_VECTOR_WIDTH``): 256 or 512, or None ("auto") for XLA's own default. Raises
    ``ValueError`` for a name not in ``VECTOR_WIDTHS``."""
    if choice is None:
        choice = os.environ.get(VECTOR_WIDTH_ENV, "auto") or "auto"
    if choice not in VECTOR_WIDTHS:
        raise ValueError(f"unknown {VECTOR_WIDTH_ENV} {choice!r}; choose one of {VECTOR_WIDTHS}")
    return None if choice == "auto" else int(choice)


def compiler_options(
    backend: str | None = None, choice: str | None = None, width: str | None = None
) -> dict[str, Any]:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``backend`` (default: JAX's default).

    On a CPU: ``ONEDNN_DOTS`` when ``cpu_dots(choice)`` is "onednn", and
    ``xla_cpu_prefer_vector_width`` when ``vector_width(width)`` is not None; else ``{}``.
    """
    if (backend or jax.default_backend()) != "cpu":
        return {}
    options: dict[str, Any] = dict(ONEDNN_DOTS) if cpu_dots(choice) == "onednn" else {}
    bits = vector_width(width)
    if bits is not None:
        options["xla_cpu_prefer_vector_width"] = bits
    return options


def jit(fn: Callable, options: dict[str, Any] | None = None, **kwargs: Any) -> Callable:
    """``jax.jit(fn, **kwargs)`` compiled with ``options``: by default ``compiler_options()``
    (read now, on the default backend); ``{}`` is XLA's own choice.

    With oneDNN's dots the jitted function comes wrapped in a `KeptAliveJit` (the same calls
    and attributes), so that its executables outlive their last execution (see there)."""
    if options is None:
        options = compiler_options()
    jitted = jax.jit(fn, compiler_options=options or None, **kwargs)
    return KeptAliveJit(jitted) if options.get("xla_cpu_use_onednn") else jitted


RETIRED_MAX = 32
"""Jitted functions with oneDNN's dots kept alive after their last user dropped them."""

RELEASE_PAUSE_S = 0.01
"""Pause between the end of a retired function's last execution and its release."""

_retired: collections.deque[tuple[Callable, weakref.ref | None]] = collections.deque()
# (no lock: a deque's append and popleft are atomic, and a lock taken in __del__, which the
# garbage collector may run while this thread holds it, would deadlock)


class KeptAliveJit:
    """A jitted function whose executables are freed well after their last execution ends.

    XLA:CPU 0.10.2 aborts the process (``Check failed: available_.size() == num_created_``
    in ``ObjectPool`` under ``OneDnnFusionThunk``'s destructor) when an executable with oneDNN
    calls is destroyed right after one of its executions, even a finished one: the thunk
    returns its oneDNN runtime to its pool in a callback that runs after the execution's
    result is ready. ``jax.jit(f, compiler_options=ONEDNN_DOTS)(x)`` with ``f`` then dropped
    hit it within 3–10 calls in three tries (bench/README.md). So when this wrapper is dropped its
    jitted function is not: it joins the last ``RETIRED_MAX`` retired ones, and the oldest is
    released at a later call of any wrapper, once its last execution has ended
    (``block_until_ready`` on a weak reference to that call's smallest output, then
    ``RELEASE_PAUSE_S``). Calls, ``lower`` and every other attribute are the jitted function's.
    """

    __slots__ = ("__weakref__", "_fn", "_last")

    def __init__(self, jitted: Callable):
        self._fn = jitted
        self._last: weakref.ref | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _release_overflow()
        out = self._fn(*args, **kwargs)
        leaves = [
            x for x in jax.tree.leaves(out) if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
        ]
        self._last = weakref.ref(min(leaves, key=lambda x: x.size)) if leaves else None
        return out

    @property
    def last_output(self) -> jax.Array | None:
        """The smallest output of the last call, while it is alive (None before a call)."""
        return None if self._last is None else self._last()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fn, name)

    def __del__(self, retired: collections.deque = _retired) -> None:
        # ``retired`` is bound here, not read from the module: at interpreter exit the module's
        # globals are cleared before the last wrappers are collected
        fn = getattr(self, "_fn", None)
        if fn is not None:
            retired.append((fn, getattr(self, "_last", None)))


def retired_count() -> int:
    """How many dropped `KeptAliveJit` functions are kept alive now (≤ ``RETIRED_MAX`` + 1)."""
    return len(_retired)


def _release_overflow() -> None:
    """Release the oldest retired functions beyond ``RETIRED_MAX``, each after its last execution."""
    while len(_retired) > RETIRED_MAX:
        try:
            fn, last = _retired.popleft()
        except IndexError:  # another thread took it
            return
        marker = last() if last is not None else None
        if marker is not None:
            try:
                if not marker.is_ready():
                    marker.block_until_ready()
                    time.sleep(RELEASE_PAUSE_S)
            except RuntimeError:  # deleted or donated: its execution is over
                pass
        del fn  # the executables go here, on this thread, after their last execution


def persistent_cache_on() -> bool:
    """Whether JAX writes compiled functions to a persistent compilation cache (a folder is set)."""
    config = jax.config
    return bool(
        getattr(config, "jax_enable_compilation_cache", False)
        and getattr(config, "jax_compilation_cache_dir", None)
    )


@functools.cache
def _onednn_compiles() -> bool:
    """Whether this jaxlib compiles a CPU dot with ``ONEDNN_DOTS`` (checked once per process)."""
    try:
        x = jax.device_put(jnp.ones((2, 2), jnp.float32), jax.devices("cpu")[0])
        jax.jit(jnp.dot, compiler_options=ONEDNN_DOTS).lower(x, x).compile()
    except Exception:  # noqa: BLE001 - an unknown option or a build without oneDNN: fall back
        return False
    return True
