"""Run a benchmark preset: ours (``regularize_attention``) against the best peers and the
PyTorch reference baseline.

Three passes. First, every case: build the model, call ``regularize_attention`` once (compile +
warm-up, excluded), check the peers' maps and statistics equal to ours on the same null images,
time ours interleaved with the peers (median), and derive FLOPs, achieved FLOP/s and MFU against
the peak measured at the start of the same run. Then, as the time budget allows, each case's
reference baseline (the authors' way, which costs 3–4× ours and the most time on a CPU): check
our statistics equal to its on the same null images, time it, and time the statistics stage
alone (ours on the device vs numpy / statsmodels on pixels). Last, the preset's ablations.
See ``bench/README.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import baseline as bl
from bench import flops as fl
from bench import machine
from bench import peers as pr
from bench.cases import Ablation, Case, Preset, as_dict

WEIGHTS = "random-init fixture (build_vit(name, None), seed 0): real architecture, not pretrained"


def bench_vit(model: str, image_size: int, dtype: str = "float32"):
    """The ViT of a case and what its weights are.

    A name of ``arb_jax.checkpoints.hub.CHECKPOINTS`` that is a real pretrained model here
    (``imgfocus_dinov2_vits14``) runs with its real weights (``load_vit``, fetched once); any
    other configuration name is a random-init fixture of that architecture (seed 0), which costs
    the same FLOPs.

    Returns
    -------
    (ViT, str)
        The bundle at ``image_size`` in ``dtype``, and the ``weights`` line of the record.
    """
    from arb_jax.checkpoints import hub, loading
    from arb_jax.models import build_vit

    if model in hub.CHECKPOINTS and hub.get_checkpoint(model).package:
        vit = loading.load_vit(model, image_size=image_size, dtype=dtype, progress=False)
        return vit, f"pretrained: {model} ({hub.get_checkpoint(model).source})"
    return build_vit(model, None, image_size=image_size, dtype=dtype, seed=0), WEIGHTS


# Our statistics vs the baseline's (float32 both; the baseline's lfdr is statsmodels' float64
# fit of the float32 z). attn: max |Δ| / max attn. maps: fraction of grid entries that differ
# by more than 1e-4·max attn (a p or lfdr within rounding of its threshold can flip).
TOLERANCES = {"attn_rel": 1e-4, "z": 1e-3, "p": 1e-3, "lfdr": 2e-3, "pi0": 1e-3, "maps_frac": 1e-3}


class CheckFailedError(AssertionError):
    """Our statistics differ from the baseline's beyond ``TOLERANCES``."""


# --------------------------------------------------------------------------------------------
# Plumbing: logging, progress, timing, memory
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    quiet: bool = False
    peaks: dict[str, Any] = dataclasses.field(default_factory=dict)
    torch_device: str = "cpu"

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def progress(self, total: int, desc: str):
        """A tqdm bar (or a no-op) for ``total`` steps; call ``.update(k)`` and ``.close()``."""
        if self.quiet or total < 8:
            return _NoBar()
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def time_calls(fn: Callable[[], Any], repeats: int, budget_s: float) -> list[float]:
    """Wall times of up to ``repeats`` calls of ``fn``, stopping once ``budget_s`` is spent (>= 1)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start + times[-1] > budget_s:
            break
    return times


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so resident-set growth measures a run."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _jax_bytes_in_use() -> tuple[int, int]:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_in_use", 0)), int(stats.get("peak_bytes_in_use", 0))


class PeakMemory:
    """Peak memory of the work inside the block, in bytes.

    "jax" on a GPU: the device's bytes in use sampled every 5 ms (or the allocator's exact peak,
    when it rose inside the block). "torch" on a GPU: ``torch.cuda.max_memory_allocated``.
    On a CPU: the process's resident set, sampled every 20 ms, minus its size before.
    """

    def __init__(self, kind: str):
        self.kind, self.peak, self._stop = kind, 0, threading.Event()

    def _read(self) -> int:
        if self.kind == "jax":
            return _jax_bytes_in_use()[0]
        return _rss_bytes()

    def __enter__(self) -> PeakMemory:
        if self.kind == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        if self.kind == "jax":
            self._before_peak = _jax_bytes_in_use()[1]
        else:
            import gc

            gc.collect()
            _malloc_trim()
        self._base = 0 if self.kind == "jax" else self._read()
        self._max = self._read()
        interval = 0.005 if self.kind == "jax" else 0.02

        def sample():
            while not self._stop.wait(interval):
                self._max = max(self._max, self._read())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "torch":
            import torch

            self.peak = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, self._read())
        if self.kind == "jax":
            after_peak = _jax_bytes_in_use()[1]
            self.peak = after_peak if after_peak > self._before_peak else self._max
        else:
            self.peak = max(0, self._max - self._base)


_TRACE, _LOWER, _COMPILE = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def compile_seconds(events: list[tuple[str, float]]) -> float:
    """Tracing + lowering + XLA compile time from JAX's monitoring events.

    Nested traces are inside the outermost one, so tracing and lowering count their longest
    event; every backend compile (one per executable) is added.
    """
    longest = lambda name: max((d for e, d in events if e == name), default=0.0)  # noqa: E731
    return longest(_TRACE) + longest(_LOWER) + sum(d for e, d in events if e == _COMPILE)


@contextlib.contextmanager
def _compile_events():
    """Collects JAX's compile-stage (event, seconds) pairs inside the block into a list."""
    import jax

    seconds: list[tuple[str, float]] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event in (_TRACE, _LOWER, _COMPILE):
            seconds.append((event, duration))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seconds
    finally:
        with contextlib.suppress(Exception):
            jax.monitoring.unregister_event_duration_listener(listener)


def _block(tree: Any) -> Any:
    import jax

    return jax.block_until_ready(tree)


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's photos, decoded once per run; without scikit-image, smooth seeded images."""
    try:
        from arb_jax.io.images import sample_images

        return tuple(sample_images().values())
    except ImportError:
        rng = np.random.default_rng(0)
        return tuple(
            np.kron(rng.uniform(0, 255, (8, 8, 3)), np.ones((64, 64, 1))).astype(np.uint8) for _ in range(4)
        )


def bench_images(n: int, size: int, patch: int) -> np.ndarray:
    """(n, size, size, 3) float32 ImageNet-normalised photos (scikit-image's, cycled).

    Without scikit-image: smooth random images (seeded), so the benchmark still runs.
    """
    from arb_jax.io.images import prepare

    photos = _photos()
    return np.stack([prepare(photos[i % len(photos)], (size, size), patch) for i in range(n)])


# --------------------------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------------------------


def peak_dtypes(preset: Preset) -> tuple[str, ...]:
    """The dtypes whose matmul peak a run measures: the preset's, and every case's own (a
    bfloat16 case's MFU is against the bfloat16 peak)."""
    return tuple(dict.fromkeys([*preset.peak_dtypes, *(c.dtype for c in preset.cases)]))


def measure_peaks(preset: Preset, ctx: Context) -> dict[str, Any]:
    """Peak FLOP/s by dtype (`peak_dtypes`) from large matmuls of JAX, PyTorch and ONNX Runtime
    (float32 only), in this run; ``peaks["best"][dtype]`` is the fastest of them, the MFU
    denominator."""
    peaks: dict[str, Any] = {"jax": {}, "torch": {}, "ort": {}}
    avail = pr.available()
    dtypes = peak_dtypes(preset)
    for dtype in dtypes:
        ctx.log(f"peak: {dtype} {preset.peak_n}³ matmul (jax, torch, onnxruntime)")
        peaks["jax"][dtype] = fl.jax_matmul_peak(dtype, preset.peak_n)
        measures = {
            "torch": (avail["torch"], fl.torch_matmul_peak),
            "ort": (avail["ort"], fl.ort_matmul_peak),
        }
        for lib, (ok, measure) in measures.items():
            if not ok:
                peaks[lib][dtype] = {"error": "not installed"}
                continue
            if lib == "ort" and dtype != "float32":
                continue  # ONNX Runtime's CPU MatMul has no bfloat16 kernel
            if lib == "ort" and ctx.torch_device != "cpu" and not pr.ort_has_cuda():
                peaks[lib][dtype] = {"error": "no CUDAExecutionProvider: not a GPU peak"}
                continue
            try:
                peaks[lib][dtype] = measure(dtype, preset.peak_n, device=ctx.torch_device)
            except Exception as e:  # a peer's peak must not stop the run
                peaks[lib][dtype] = {"error": repr(e)}
    peaks["best"] = {}
    for dtype in dtypes:
        got = [
            (peaks[lib][dtype]["flops"], lib)
            for lib in ("jax", "torch", "ort")
            if "flops" in peaks[lib].get(dtype, {})
        ]
        flops, lib = max(got)
        peaks["best"][dtype] = {"flops": flops, "library": lib, "dtype": dtype}
    return peaks


def _peak_for(ctx: Context, dtype: str) -> tuple[float | None, str]:
    """The MFU denominator for ``dtype`` (its own peak, else float32's) and where it comes from."""
    best = ctx.peaks.get("best", {})
    rec = best.get(dtype) or best.get("float32")
    if rec is None:  # peaks of an older result: JAX's only
        rec = ctx.peaks.get("jax", {}).get(dtype) or ctx.peaks.get("jax", {}).get("float32")
        return (None, "none") if rec is None else (rec["flops"], "jax matmul, measured in this run")
    return rec["flops"], (
        f"best of the jax, torch and onnxruntime {rec['dtype']} matmuls in this run ({rec['library']})"
    )


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


def baseline_batch(case: Case, config, ctx: Context) -> int:
    """Images per baseline forward: the case's setting, else 1 on a CPU, else as many of the
    1 + B images as keep the layers' float32 attention maps (output_attentions) under 8 GiB."""
    if case.baseline_batch is not None:
        return case.baseline_batch
    if ctx.torch_device == "cpu":
        return 1
    tokens = fl.n_tokens(config, case.image_size)
    per_image = config.depth * config.heads * tokens * tokens * 4  # output_attentions, float32
    return int(max(1, min(1 + case.n_boot, (8 << 30) // per_image)))


def p_beyond_ties(
    p: np.ndarray, p_ref: np.ndarray, z_ref: np.ndarray, z_null_sorted: np.ndarray, window: float
) -> float:
    """The largest difference of two empirical p-value maps beyond what near-ties can explain.

    p = #{null z ≥ z} / m moves by 1/m whenever an observed z and a null z swap order, and two
    implementations whose z-scores agree within τ can swap only the pairs closer than 2τ. So
    each entry may differ by (number of null z within ``window`` = 2τ of its z) / m; this returns
    the largest excess over that allowance (0 when every difference is such a swap).

    Parameters
    ----------
    p, p_ref : ndarray
        The two p-value maps, same shape.
    z_ref : ndarray
        The reference's observed z-scores, p_ref's shape.
    z_null_sorted : ndarray, (m,)
        The reference's null z-scores, ascending.
    window : float
        Half-width of the near-tie window, in z units (twice the z tolerance).
    """
    z = np.asarray(z_ref).ravel()
    close = np.searchsorted(z_null_sorted, z + window, side="right") - np.searchsorted(
        z_null_sorted, z - window, side="left"
    )
    excess = np.abs(np.asarray(p).ravel() - np.asarray(p_ref).ravel()) - close / z_null_sorted.size
    return float(max(np.max(excess), 0.0))


def compare(ours: dict[str, np.ndarray], base: bl.BaselineRun, patch: int) -> dict[str, Any]:
    """Max differences of one image's statistics, ours (patch grid) vs the baseline's (pixels).

    "p" is the difference beyond the near-ties of ``p_beyond_ties`` (window twice the z
    tolerance); "p_max_abs" in the result is the plain largest difference."""
    g = lambda a: np.asarray(a)[..., ::patch, ::patch]  # noqa: E731  pixels → grid
    s = base.stats
    amax = float(np.max(ours["attn"]))
    diff = {
        "attn_rel": float(np.max(np.abs(ours["attn"] - g(base.attn)))) / amax,
        "z": float(np.max(np.abs(ours["z"] - g(s["z"])))),
        "p": p_beyond_ties(ours["p"], g(s["p"]), g(s["z"]), s["z_null_sorted"], 2 * TOLERANCES["z"]),
        "lfdr": float(np.max(np.abs(ours["lfdr"] - g(s["lfdr"])))),
        "pi0": abs(float(ours["pi0"]) - s["pi0"]),
        "maps_frac": max(
            float(np.mean(np.abs(ours[f"map_{k}"] - g(v)) > 1e-4 * amax)) for k, v in s["maps"].items()
        ),
    }
    failed = sorted(k for k, v in diff.items() if not v <= TOLERANCES[k])
    return {
        "passed": not failed,
        "failed": failed,
        "max_diff": diff,
        "p_max_abs": float(np.max(np.abs(ours["p"] - g(s["p"])))),
        "tolerance": dict(TOLERANCES),
    }


def _image0(result) -> dict[str, np.ndarray]:
    out = result.to_numpy()
    return {k: np.array(v[0]) for k, v in out.items()}  # copies: the other images' maps go


@dataclasses.dataclass
class CaseRun:
    """The state one case's steps share: the model, the images, the runs so far, the record."""

    case: Case
    ctx: Context
    config: Any
    vit: Any
    images_np: np.ndarray
    images: Any
    key: Any
    opts: dict[str, Any]
    rec: dict[str, Any]
    first: Any = None
    model: Any = None
    batch: int = 1
    base_runs: list[bl.BaselineRun] = dataclasses.field(default_factory=list)
    base_peak: int = 0
    base_forward_s: float = math.nan
    ours_s: float = math.nan
    peers: dict[str, Any] = dataclasses.field(default_factory=dict)
    peer_runs: dict[str, list] = dataclasses.field(default_factory=dict)
    ours_f32: dict[int, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    def ours_float32(self, n_boot: int) -> dict[str, np.ndarray]:
        """Ours on image 0 in float32 with ``n_boot`` null images (the first call's when it is one)."""
        from arb_jax.core.pipeline import regularize_attention

        if n_boot not in self.ours_f32:
            if self.case.dtype == "float32" and n_boot == self.case.n_boot:
                self.ours_f32[n_boot] = _image0(self.first)
            else:
                vit32, _ = bench_vit(self.case.model, self.case.image_size, "float32")
                out = regularize_attention(vit32, self.images[:1], self.key, n_boot, **self.opts)
                self.ours_f32[n_boot] = _image0(out)
        return self.ours_f32[n_boot]

    def ours_call(self) -> Any:
        """One timed call of ours: ARB of all the case's images."""
        from arb_jax.core.pipeline import regularize_attention

        return _block(regularize_attention(self.vit, self.images, self.key, self.case.n_boot, **self.opts))


def _start_case(case: Case, ctx: Context) -> CaseRun:
    """The record's settings, the model (`bench_vit`), the images and the key."""
    import jax

    from arb_jax.models.vit import attention_impl

    vit, weights = bench_vit(case.model, case.image_size, case.dtype)
    config = vit.config
    rec: dict[str, Any] = {
        "case": case.name,
        "group": case.group,
        "model": case.model,
        "weights": weights,
        "image_size": case.image_size,
        "tokens": fl.n_tokens(config, case.image_size),
        "n_boot": case.n_boot,
        "n_images": case.n_images,
        "dtype": case.dtype,
        "boot_chunk": case.boot_chunk,
        "device": machine.describe_device(),
    }
    rec["attention"] = attention_impl("auto", vit.module.dtype)
    images_np = bench_images(case.n_images, case.image_size, config.patch)
    opts = {} if case.boot_chunk is None else {"boot_chunk": case.boot_chunk}
    return CaseRun(
        case, ctx, config, vit, images_np, jax.device_put(images_np), jax.random.key(1234), opts, rec
    )


def _compile_ours(run: CaseRun) -> None:
    """Step 1: compile and warm up (excluded from the timings)."""
    case = run.case
    run.ctx.log(f"  ours: compile + warm-up ({case.n_images} image(s) × (1 + {case.n_boot}) forwards)")
    with _compile_events() as compile_events:
        t0 = time.perf_counter()
        run.first = run.ours_call()
        run.rec["ours_first_call_s"] = time.perf_counter() - t0
    run.rec["ours_compile_s"] = compile_seconds(compile_events)


def _load_baseline(run: CaseRun) -> None:
    """The HF model of the baseline, warmed up with one forward of its batch size."""
    case, ctx = run.case, run.ctx
    run.batch = baseline_batch(case, run.config, ctx)
    run.rec["baseline_batch"] = run.batch
    if not (case.check or case.baseline):
        return
    run.model = bl.hf_vit(run.config, run.vit.params, case.image_size, ctx.torch_device)
    bl.warm_up()
    t0 = time.perf_counter()
    with contextlib.suppress(Exception):  # warm-up: one forward of the batch size
        import torch

        bl.hf_cls_attention(
            run.model,
            torch.zeros(
                (min(run.batch, 1 + case.n_boot), 3, case.image_size, case.image_size),
                device=ctx.torch_device,
            ),
        )
    run.base_forward_s = time.perf_counter() - t0


def baseline_forwards(case: Case, batch: int) -> int:
    """HF forwards of a case's baseline pass, ``batch`` images per forward: its check run
    (``check_boot`` null images; also its first timed run when that is B) and its timed runs."""
    forwards = 0
    timed = max(1, case.baseline_repeats) if case.baseline else 0
    if case.check:
        b_check = case.check_boot or case.n_boot
        forwards += math.ceil((1 + b_check) / batch)
        if b_check == case.n_boot and case.baseline:
            timed -= 1  # the check run is the first timed run
    return forwards + timed * math.ceil((1 + case.n_boot) / batch)


def _check_case(run: CaseRun) -> None:
    """Step 2: ours against the baseline on image 0 with the same null images, before timing."""
    from arb_jax.core.pipeline import null_images

    case, ctx, B = run.case, run.ctx, run.case.n_boot
    if not case.check:
        run.rec["check"] = None
        return
    b_check = case.check_boot or B
    ours0 = run.ours_float32(b_check)
    nulls = np.asarray(null_images(run.key, run.images[:1], b_check)[0])  # image 0's, as ours
    ctx.log(f"  check: baseline on image 0 with our {b_check} null images")
    bar = ctx.progress(1 + b_check, "baseline (check)")
    with PeakMemory("torch" if ctx.torch_device != "cpu" else "rss") as check_mem:
        run0 = bl.run_baseline(
            run.model, run.images_np[0], b_check, batch=run.batch, null_images=nulls, progress=bar.update
        )
    bar.close()
    check = compare(ours0, run0, run.config.patch)
    check.update(n_boot=b_check, dtype="float32")
    run.rec["check"] = check
    if not check["passed"]:
        raise CheckFailedError(
            f"{case.name}: ours vs baseline differ in {check['failed']}: "
            f"{check['max_diff']} (tolerances {TOLERANCES})"
        )
    if b_check == B and case.baseline:
        run.base_runs.append(run0)  # a complete baseline run of image 0: its first timed run
        run.base_peak = check_mem.peak


MAPS = ("z", "p", "lfdr", "pi0")
"""The thresholded maps (masks: an entry kept or zeroed) ``mask_changes`` counts."""


def mask_changes(low: dict[str, np.ndarray], f32: dict[str, np.ndarray]) -> dict[str, Any]:
    """How a low-precision run of image 0 differs from float32's (same null images): entries of
    each thresholded map kept in one and zeroed in the other, and the largest differences."""
    amax = float(np.max(f32["attn"]))
    return {
        "mask_changes": {k: int(np.sum((low[f"map_{k}"] != 0) != (f32[f"map_{k}"] != 0))) for k in MAPS},
        "entries": int(np.size(f32["attn"])),
        "attn_rel": float(np.max(np.abs(low["attn"] - f32["attn"]))) / amax,
        "z": float(np.max(np.abs(low["z"] - f32["z"]))),
        "lfdr": float(np.max(np.abs(low["lfdr"] - f32["lfdr"]))),
        "pi0": abs(float(low["pi0"]) - float(f32["pi0"])),
    }


PEER_ATTN_TOL = 1e-5
"""Largest |Δ| of a float32 peer's head-mean CLS attention from ours (maps sum to ≤ 1)."""

SETTLE_S = 0.02  # pause before each interleaved timed call: the last library's spinning threads stop


def settle() -> None:
    """Wait ``SETTLE_S`` so that no other library's threads are still spinning on the cores.

    ONNX Runtime's intra-op pool spins for 10–20 ms after each run (its default): ours right after
    it took 93.7 ms at ViT-S/16 @ 224, B = 1, against 81.6 ms after a 20 ms pause and 79.8 ms after
    our own call; the peers' times do not change with the pause (bench/README.md).
    """
    time.sleep(SETTLE_S)


def _load_peers(run: CaseRun) -> None:
    """Build the peers (``bench/peers.py``) with our weights and check them on image 0 with our
    null images: attention within ``PEER_ATTN_TOL``, statistics within ``TOLERANCES``."""
    from arb_jax.core.pipeline import null_images

    case, ctx, B = run.case, run.ctx, run.case.n_boot
    run.rec.update(peer_info={}, peer_errors={}, peer_check={})
    if case.dtype != "float32":  # what the low precision changes, against float32 (same nulls)
        run.rec["low_precision_vs_float32"] = mask_changes(_image0(run.first), run.ours_float32(B))
    if not case.peers:
        return
    gpu = ctx.torch_device != "cpu"
    ctx.log(f"  peers: torch{' (+ bf16 autocast)' if gpu else ''}, onnxruntime; batch 1 + {B}")
    peers, errors = pr.build_peers(
        run.config, run.vit.params, case.image_size, 1 + B, ctx.torch_device, bf16_row=gpu
    )
    run.rec["peer_errors"] = errors
    ours0 = run.ours_float32(B)
    nulls = np.asarray(null_images(run.key, run.images[:1], B)[0])
    for name, peer in peers.items():
        run.rec["peer_info"][name] = peer.info
        first = pr.run_peer(peer, run.images_np[0], B, null_images=nulls)
        check = compare(ours0, first, 1)
        attn_abs = float(np.max(np.abs(first.attn - ours0["attn"])))
        check.update(attn_abs=attn_abs, attn_abs_tolerance=PEER_ATTN_TOL, n_boot=B)
        if name.endswith("bf16"):  # a low-precision row: its differences are recorded, not checked
            check.update(
                passed=None,
                failed=[],
                low_precision_vs_float32=mask_changes(
                    {
                        "attn": first.attn,
                        "z": first.stats["z"],
                        "lfdr": first.stats["lfdr"],
                        "pi0": first.stats["pi0"],
                        **{f"map_{k}": v for k, v in first.stats["maps"].items()},
                    },
                    ours0,
                ),
            )
        elif attn_abs > PEER_ATTN_TOL:
            check.update(passed=False, failed=sorted({*check["failed"], "attn_abs"}))
        run.rec["peer_check"][name] = check
        if check["passed"] is False:
            raise CheckFailedError(
                f"{case.name}: peer {name} vs ours differ in {check['failed']}: {check['max_diff']}, "
                f"|Δ attn| {attn_abs:.3g} (tolerance {PEER_ATTN_TOL})"
            )
        run.peers[name] = peer
        run.peer_runs[name] = [] if case.peer_warmup else [first]


def time_ours(run: CaseRun) -> None:
    """Step: ours, timed (seconds per image, per forward; peak memory), interleaved call by call
    with the peers (each round: ours, then each peer on one image), so that load from other
    processes falls on all of them alike; each timed call starts after ``settle``.

    Where the peers had an untimed warm-up (``case.peer_warmup``: their check run, just before),
    ours has one here too, and the peak memory is measured on it, so that no timed call follows
    ``PeakMemory``'s ``gc.collect`` (55–140 ms of Python, after which our next call at B = 1 took
    90 ms against 81; bench/README.md). The long cases (no warm-up) measure it on their timed calls.
    """
    import jax

    case, B, N = run.case, run.case.n_boot, run.case.n_images
    run.ctx.log(f"  ours{' and peers' if run.peers else ''}: timing up to {case.repeats} run(s)")
    kind = "jax" if jax.default_backend() != "cpu" else "rss"
    times: list[float] = []
    peak_mem = 0
    if case.peer_warmup:  # as the peers' check runs were theirs, just now
        with PeakMemory(kind) as mem:
            run.ours_call()
        peak_mem = mem.peak
    start = time.perf_counter()
    for r in range(max(1, case.repeats)):
        with contextlib.nullcontext() if case.peer_warmup else PeakMemory(kind) as probe:
            settle()
            t0 = time.perf_counter()
            run.ours_call()
            times.append(time.perf_counter() - t0)
        if probe is not None:  # no warm-up: the memory of the timed calls
            peak_mem = max(peak_mem, probe.peak)
        for name, peer in run.peers.items():
            if len(run.peer_runs[name]) < max(1, case.repeats):
                settle()
                run.peer_runs[name].append(pr.run_peer(peer, run.images_np[r % N], B, seed=r))
        if time.perf_counter() - start + times[-1] > case.budget_s:
            break
    run.ours_s = ours_s = _median(times) / N
    run.rec.update(
        ours_s_per_image=ours_s,
        ours_times_s=times,
        ours_repeats=len(times),
        ours_first_call_s=run.rec.pop("ours_first_call_s"),
        ours_images_per_s=1.0 / ours_s,
        ours_s_per_forward=ours_s / (1 + B),
        peak_memory_bytes=peak_mem,
    )
    _peer_record(run)


def _peer_record(run: CaseRun) -> None:
    """The peers' fields of the record: s/image (median), stages, our speed-up over each and
    over the best (for a float32 case the float32 peers; the bf16 autocast row counts for a
    bfloat16 case)."""
    rec, ours_s = run.rec, run.ours_s
    rec["peer_times_s"], rec["peer_stage_s"] = {}, {}
    per_image: dict[str, float] = {}
    for name, runs in run.peer_runs.items():
        totals = [r.seconds["total"] for r in runs]
        rec["peer_times_s"][name] = totals
        rec["peer_stage_s"][name] = {
            k: _median([r.seconds[k] for r in runs]) for k in ("sample", "forward", "stats")
        }
        per_image[name] = _median(totals)
    for name in ("torch", "ort", "torch_bf16"):
        s = per_image.get(name)
        rec[f"peer_{name}_s_per_image"] = s
        rec[f"speedup_vs_{name}"] = None if s is None else s / ours_s
    eligible = {k: v for k, v in per_image.items() if run.case.dtype != "float32" or not k.endswith("bf16")}
    best = min(eligible, key=eligible.get) if eligible else None
    rec["best_peer"] = best
    rec["best_peer_s_per_image"] = None if best is None else eligible[best]
    rec["speedup_vs_best_peer"] = None if best is None else eligible[best] / ours_s


NO_BASELINE: dict[str, Any] = {
    "baseline_s_per_image": None,
    "baseline_repeats": 0,
    "baseline_stage_s": None,
    "baseline_peak_memory_bytes": None,
    "speedup": None,
    "baseline_images_per_s": None,
    "ours_stats_s_per_image": None,
    "baseline_stats_s_per_image": None,
    "stats_speedup": None,
}
"""A record's baseline fields before (or without) its baseline pass."""


def _time_baseline(run: CaseRun) -> None:
    """Step 4: the baseline, timed (its first run may be the check's)."""
    case, ctx, B, N = run.case, run.ctx, run.case.n_boot, run.case.n_images
    run.rec.update(NO_BASELINE)
    if not case.baseline:
        return
    base_runs = run.base_runs
    todo = max(1, case.baseline_repeats) - len(base_runs)
    ctx.log(f"  baseline: {todo} more run(s), {run.batch} image(s) per forward")
    kind = "torch" if ctx.torch_device != "cpu" else "rss"
    spent = sum(r.seconds["total"] for r in base_runs)
    with PeakMemory(kind) as bmem:
        for i in range(todo):
            if base_runs and spent > case.budget_s:
                break
            bar = ctx.progress(1 + B, "baseline")
            base_runs.append(
                bl.run_baseline(
                    run.model,
                    run.images_np[(len(base_runs)) % N],
                    B,
                    batch=run.batch,
                    seed=i,
                    progress=bar.update,
                )
            )
            bar.close()
            spent += base_runs[-1].seconds["total"]
    totals = [r.seconds["total"] for r in base_runs]
    stages = {
        k: _median([r.seconds[k] for r in base_runs]) for k in ("sample", "forward", "upsample", "stats")
    }
    base_s = _median(totals)
    run.rec.update(
        baseline_s_per_image=base_s,
        baseline_times_s=totals,
        baseline_repeats=len(totals),
        baseline_stage_s=stages,
        baseline_peak_memory_bytes=max(bmem.peak, run.base_peak) or None,
        speedup=base_s / run.ours_s,
        baseline_images_per_s=1.0 / base_s,
    )


def _time_statistics(run: CaseRun) -> None:
    """Step 5: the statistics stage alone, on the same maps (B bootstrap maps)."""
    import jax

    from arb_jax.core.pipeline import arb_statistics

    if not run.base_runs:  # its fields stay as `_time_baseline` left them: NO_BASELINE's
        return
    p, budget = run.config.patch, run.case.budget_s
    last = run.base_runs[-1]
    grid_a = jax.device_put(last.attn[::p, ::p])
    grid_n = jax.device_put(last.null[:, ::p, ::p])
    stats_call = lambda: _block(arb_statistics(grid_a, grid_n, None, patch=p))  # noqa: E731
    stats_call()
    st = time_calls(stats_call, 20, min(10.0, budget))
    npst = time_calls(lambda: bl.numpy_statistics(last.attn, last.null), 3, min(10.0, budget))
    npst += [r.seconds["stats"] for r in run.base_runs]
    run.rec.update(
        ours_stats_s_per_image=_median(st),
        baseline_stats_s_per_image=_median(npst),
        stats_speedup=_median(npst) / _median(st),
    )


def _flops_and_mfu(run: CaseRun) -> None:
    """Step 6: FLOPs (docs/method.md §6) and the model FLOP utilisation."""
    case, ctx, config, rec = run.case, run.ctx, run.config, run.rec
    flops = fl.arb_flops_per_image(config, case.image_size, case.n_boot)
    peak, source = _peak_for(ctx, case.dtype)
    achieved = flops / run.ours_s
    rec.update(
        flops_per_image=flops,
        flops_per_forward=fl.forward_flops(config, case.image_size),
        attention_flop_share=fl.attention_share(config, case.image_size),
        achieved_flops=achieved,
        peak_flops=peak,
        peak_flops_source=source,
        mfu=None if not peak else achieved / peak,
    )


def _baseline_flops(run: CaseRun) -> None:
    """The baseline's achieved FLOP/s (the same FLOPs as ours: docs/method.md §6)."""
    if run.rec["speedup"] is not None:
        run.rec["baseline_achieved_flops"] = run.rec["flops_per_image"] / run.rec["baseline_s_per_image"]


def _defer_baseline(run: CaseRun) -> None:
    """Last step of the first pass: the baseline's fields, empty until its pass fills them, and
    our float32 maps of image 0 that its check needs (small: the patch grid)."""
    case = run.case
    if case.check:
        run.ours_float32(case.check_boot or case.n_boot)
    status = "pending" if case.check or case.baseline else "off"
    run.rec.update(NO_BASELINE, check=None, baseline_status=status)


CASE_STEPS = (_compile_ours, _load_peers, time_ours, _flops_and_mfu, _defer_baseline)
"""The steps of a case's first pass, in order; each reads and extends the `CaseRun`."""

BASELINE_STEPS = (_check_case, _time_baseline, _time_statistics, _baseline_flops)
"""The steps of a case's baseline pass, after `_load_baseline`."""


@dataclasses.dataclass
class Deferred:
    """What a case's baseline pass keeps of its first pass: the record (filled in place), our
    time per image and our float32 maps of image 0."""

    case: Case
    rec: dict[str, Any]
    ours_s: float
    ours_f32: dict[int, dict[str, np.ndarray]]


def run_case(case: Case, ctx: Context) -> tuple[dict[str, Any], Deferred | None]:
    """The first pass of one case: its JSON record, and what its baseline pass needs (None
    when it has no baseline nor check). Raises CheckFailedError if a peer's check fails."""
    run = _start_case(case, ctx)
    for step in CASE_STEPS:
        step(run)
    later = None
    if run.rec["baseline_status"] == "pending":
        later = Deferred(case, run.rec, run.ours_s, run.ours_f32)
    return run.rec, later


def run_baseline_pass(later: Deferred, ctx: Context, seconds_left: float | None = None) -> bool:
    """The baseline pass of one case, filling its record in place: the HF model, then, unless
    its forwards (``baseline_forwards`` × the warm-up forward's time) would take more than
    ``seconds_left``, the check of our statistics against it, its timed runs and the statistics
    stage alone. Returns whether it ran; raises CheckFailedError if the check fails."""
    case = later.case
    run = _start_case(case, ctx)
    run.rec, run.ours_s, run.ours_f32 = later.rec, later.ours_s, later.ours_f32
    _load_baseline(run)
    need = baseline_forwards(case, run.batch) * run.base_forward_s
    run.rec["baseline_projected_s"] = need
    if seconds_left is not None and need > seconds_left:
        left = max(0.0, seconds_left)
        run.rec["baseline_status"] = f"not run: about {need:.0f} s, {left:.0f} s of the budget left"
        return False
    for step in BASELINE_STEPS:
        step(run)
    run.rec["baseline_status"] = "done"
    return True


# --------------------------------------------------------------------------------------------
# Ablations: what each change bought
# --------------------------------------------------------------------------------------------


def _compiled_forward(module, params, x, compiler_options: dict[str, Any] | None = None):
    """The forward compiled as arb-jax compiles it, or with ``compiler_options`` when given."""
    from arb_jax.models import xla_options

    fwd = xla_options.jit(lambda prm, im: module.apply({"params": prm}, im)["attn"], compiler_options)
    return fwd.lower(params, x).compile()


def _time_compiled(compiled, *args, repeats: int) -> list[float]:
    _block(compiled(*args))
    return time_calls(lambda: _block(compiled(*args)), repeats, 1e9)


class AblationBench:
    """What every ablation measures with: the model, its inputs, and timers.

    Parameters
    ----------
    ab : Ablation
        The measured change (model, image size, batch, repeats, level, n_boot).
    """

    def __init__(self, ab: Ablation):
        import jax
        import jax.numpy as jnp

        from arb_jax.models import build_vit

        self.ab = ab
        self.vit = build_vit(ab.model, None, image_size=ab.image_size, seed=0)
        c = self.config = self.vit.config
        self.base = {"change": ab.change, "model": ab.model, "image_size": ab.image_size, "level": ab.level}
        gpu = jax.default_backend() != "cpu"
        self.dtype = jnp.bfloat16 if gpu else jnp.float32  # the compute dtype the presets use here
        self.dname = str(jnp.dtype(self.dtype))
        tokens = fl.n_tokens(c, ab.image_size)
        self.t_in = jax.device_put(
            np.random.default_rng(0).standard_normal((ab.batch, tokens, c.dim)).astype(np.float32)
        )
        self.what = "one forward" if ab.level == "forward" else "one transformer block"

    def forward_time(self, dt: Any, impl: str, compiler_options: dict[str, Any] | None = None) -> float:
        """Median seconds of one compiled forward of the batch (compute dtype ``dt``; XLA's
        ``compiler_options``, default arb-jax's own, ``arb_jax.models.xla_options``)."""
        import jax
        import jax.numpy as jnp

        from arb_jax.models.vit import VisionTransformer

        ab, c = self.ab, self.config
        x = jax.device_put(bench_images(ab.batch, ab.image_size, c.patch))
        module = VisionTransformer(c, dt, "highest" if dt == jnp.float32 else None, attention=impl)
        compiled = _compiled_forward(module, self.vit.params, x, compiler_options)
        return _median(_time_compiled(compiled, self.vit.params, x, repeats=ab.repeats))

    def module_time(self, fn: Callable, *args: Any) -> float:
        """Median seconds of ``jit(fn)(*args)``, compiled once, at "highest" matmul precision."""
        import jax

        from arb_jax.models import xla_options

        with jax.default_matmul_precision("highest"):
            compiled = xla_options.jit(fn).lower(*args).compile()
            return _median(_time_compiled(compiled, *args, repeats=self.ab.repeats))

    def block_time(self, dt: Any, impl: str, i: int = 0) -> float:
        """Median seconds of transformer block ``i`` on the token batch."""
        from arb_jax.models.vit import Block

        prm = {"params": self.vit.params[f"block_{i}"]}
        c = self.config
        return self.module_time(lambda q, t: Block(c, dt, impl).apply(q, t), prm, self.t_in)

    def timer(self, dt: Any, impl: str) -> float:
        """The ablation's level: a forward or a block."""
        return self.forward_time(dt, impl) if self.ab.level == "forward" else self.block_time(dt, impl)

    def pipeline_images(self) -> tuple[Any, Any]:
        """One benchmark image on the device and the ARB key."""
        import jax

        return jax.device_put(bench_images(1, self.ab.image_size, self.config.patch)), jax.random.key(1234)

    def pipeline_time(self, **opts: Any) -> float:
        """Median seconds of ``regularize_attention`` on one image with ``n_boot`` and ``opts``."""
        from arb_jax.core.pipeline import regularize_attention

        images, key = self.pipeline_images()
        call = lambda: _block(regularize_attention(self.vit, images, key, self.ab.n_boot, **opts))  # noqa: E731
        call()
        return _median(time_calls(call, self.ab.repeats, 1e9))

    def speedup(self, before_s: float, after_s: float, /, **fields: Any) -> list[dict[str, Any]]:
        """One record: the base fields, ``fields``, the two times and their ratio."""
        return [dict(self.base, **fields, before_s=before_s, after_s=after_s, speedup=before_s / after_s)]


def _ablate_attention(b: AblationBench) -> list[dict[str, Any]]:
    from arb_jax.models.vit import attention_impl

    fast = attention_impl("auto", b.dtype)
    before, after = b.timer(b.dtype, "xla"), b.timer(b.dtype, fast)
    return b.speedup(
        before,
        after,
        batch=b.ab.batch,
        dtype=b.dname,
        before="jax.nn.dot_product_attention (XLA)",
        after=f"{fast} attention",
        what=b.what,
    )


def _ablate_dtype(b: AblationBench) -> list[dict[str, Any]]:
    import jax.numpy as jnp

    before, after = b.timer(jnp.float32, "auto"), b.timer(jnp.bfloat16, "auto")
    return b.speedup(
        before,
        after,
        batch=b.ab.batch,
        before="float32 matmuls",
        after="bfloat16 matmuls, float32 accumulation",
        what=b.what,
    )


def _ablate_cpu_dots(b: AblationBench) -> list[dict[str, Any]]:
    from arb_jax.models import xla_options

    own = xla_options.compiler_options(choice="xla")  # the vector width alone, or {}
    onednn = xla_options.compiler_options(choice="auto")  # the same off a CPU or without oneDNN
    before, after = b.forward_time(b.dtype, "auto", own), b.forward_time(b.dtype, "auto", onednn)
    return b.speedup(
        before,
        after,
        batch=b.ab.batch,
        before="XLA's own choice of dot library (YNNPACK in jaxlib 0.10)",
        after=f"oneDNN runs the dots it supports ({'on' if onednn != own else 'not available: the same'})",
        what=b.what,
    )


def _ablate_cls_only(b: AblationBench) -> list[dict[str, Any]]:
    from arb_jax.models.vit import Block, ClsBlock

    c, dtype = b.config, b.dtype
    last = {"params": b.vit.params[f"block_{c.depth - 1}"]}
    full = b.module_time(lambda prm, t: Block(c, dtype).apply(prm, t), last, b.t_in)
    cls = b.module_time(lambda prm, t: ClsBlock(c, dtype).apply(prm, t), last, b.t_in)
    rec = dict(
        batch=b.ab.batch,
        dtype=b.dname,
        before="last block in full",
        after="last block for the CLS query only",
        last_block_full_s=full,
        last_block_cls_s=cls,
    )
    if b.ab.level == "forward":
        fwd = b.forward_time(dtype, "auto")
        return b.speedup(
            fwd - cls + full, fwd, **rec, what="one forward (the full last block's time added back)"
        )
    return b.speedup(full, cls, **rec, what="the last block")


def _ablate_profile(b: AblationBench) -> list[dict[str, Any]]:
    return _profile(b.ab, b.vit, b.t_in.astype(b.dtype), b.module_time, b.base)


def _ablate_boot_chunk(b: AblationBench) -> list[dict[str, Any]]:
    B = b.ab.n_boot
    before, after = b.pipeline_time(boot_chunk=1), b.pipeline_time()
    return b.speedup(
        before,
        after,
        n_boot=B,
        before="one image per forward (boot_chunk=1: the image, then each null image)",
        after=f"the image and its {B} null images in one batch",
        what="ARB of one image",
    )


def _ablate_host_round_trip(b: AblationBench) -> list[dict[str, Any]]:
    import jax.numpy as jnp

    from arb_jax.core.pipeline import arb_statistics, null_images
    from arb_jax.models import xla_options

    vit, c, B = b.vit, b.config, b.ab.n_boot
    images, key = b.pipeline_images()
    fwd = xla_options.jit(lambda prm, im: vit.apply(prm, im)["attn"].mean(1))

    def split():
        nulls = null_images(key, images, B)[0]
        maps = np.asarray(fwd(vit.params, jnp.concatenate([images, nulls])))  # to the host
        out = arb_statistics(maps[0], maps[1:], None, patch=c.patch)  # and back
        return {k: np.asarray(v) for k, v in out.items() if not isinstance(v, dict)}

    split()
    before = _median(time_calls(split, b.ab.repeats, 1e9))
    after = b.pipeline_time()
    return b.speedup(
        before,
        after,
        n_boot=B,
        before="forwards, maps to the host, statistics (3 calls)",
        after="one compiled call, maps stay on the device",
        what="ARB of one image",
    )


ABLATIONS: dict[str, Callable[[AblationBench], list[dict[str, Any]]]] = {
    "attention": _ablate_attention,
    "dtype": _ablate_dtype,
    "cpu_dots": _ablate_cpu_dots,
    "cls_only": _ablate_cls_only,
    "profile": _ablate_profile,
    "boot_chunk": _ablate_boot_chunk,
    "host_round_trip": _ablate_host_round_trip,
}
"""Each measured change by name: a function of the `AblationBench` → records. A new ablation is
one function here and an `Ablation` in `bench/cases.py`."""


def run_ablation(ab: Ablation, ctx: Context) -> list[dict[str, Any]]:
    """Time one change against its absence; returns one record (several for "profile")."""
    measure = ABLATIONS.get(ab.change)
    if measure is None:
        raise ValueError(f"unknown ablation {ab.change!r}")
    return measure(AblationBench(ab))


def _profile(ab, vit, t_in, module_time, base) -> list[dict[str, Any]]:
    """Time of each part of one block at this size (t_in's dtype): where a forward's time goes.

    Each part is the model's own module (``arb_jax.models.vit``) with the first block's weights,
    on the float32 residual stream as inside ``Block``; attention gets q, k, v of its dtype.
    """
    import jax
    import jax.numpy as jnp

    from arb_jax.models import vit as vm

    c = vit.config
    dt = t_in.dtype
    b0 = vit.params["block_0"]
    n, T, D = t_in.shape
    H, d, m = c.heads, c.head_dim, c.mlp_dim
    impl = vm.attention_impl("auto", dt)
    qkv = jax.device_put(np.random.default_rng(1).standard_normal((3, n, T, H, d))).astype(dt)
    x = t_in.astype(jnp.float32)
    norm = vm.layer_norm(c.eps, None)

    def apply(module, prm):
        return lambda p_, t: module.apply({"params": p_}, t), (prm, x)

    parts = {
        "layernorm ×2": (
            lambda p1, p2, t: (norm.apply({"params": p1}, t), norm.apply({"params": p2}, t)),
            (b0["norm1"], b0["norm2"], x),
            None,
        ),
        "qkv matmul": (*apply(vm.QKV(H, dt), b0["attn"]["qkv"]), 2 * n * T * D * 3 * D),
        f"attention ({impl})": (lambda a: vm.attention(a[0], a[1], a[2], impl), (qkv,), 4 * n * T * T * D),
        "proj matmul": (*apply(vm.Dense(D, dt), b0["attn"]["proj"]), 2 * n * T * D * D),
        "mlp fc1 + gelu + fc2": (*apply(vm.Mlp(m, dt), b0["mlp"]), 4 * n * T * D * m),
    }
    block_s = module_time(lambda prm, t: vm.Block(c, dt).apply(prm, t), {"params": b0}, x)
    out = []
    for name, (fn, args, f) in parts.items():
        s = module_time(fn, *args)
        out.append(
            dict(
                base,
                batch=n,
                dtype=str(jnp.dtype(dt)),
                part=name,
                seconds=s,
                share_of_block=s / block_s,
                flops=f,
                achieved_flops=None if f is None else f / s,
            )
        )
    f = fl.block_flops(c, T) * n
    out.append(
        dict(
            base,
            batch=n,
            dtype=str(jnp.dtype(dt)),
            part="whole block",
            seconds=block_s,
            share_of_block=1.0,
            flops=f,
            achieved_flops=f / block_s,
        )
    )
    return out


# --------------------------------------------------------------------------------------------
# A preset
# --------------------------------------------------------------------------------------------


def run_preset(
    preset: Preset,
    cases: tuple[Case, ...] | None = None,
    *,
    ablations: bool = True,
    quiet: bool = False,
    budget_s: float | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``cases`` (default: the preset's), then their reference baselines, then the preset's
    ablations; returns the result (a dict).

    Every case's comparison with the peers comes first (``run_case``), the reference baselines
    after (``run_baseline_pass``), so that on a CPU where the baseline is slow the budget cuts
    them, not cases. budget_s: no case, baseline or ablation starts once this many seconds have
    passed since the start, nor a baseline whose forwards would end past it (default: the
    preset's ``budget_s``; None: no limit); those not run are listed in ``skipped`` and a
    baseline not run says why in its record's ``baseline_status``. on_result: called with the
    result so far after each case, baseline and ablation (to write it as it grows: an
    interrupted run keeps what it measured).
    """
    import jax

    ctx = Context(quiet=quiet)
    if jax.default_backend() != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "JAX runs on a GPU but PyTorch sees no CUDA device: the baseline must run on the same device"
            )
        ctx.torch_device = "cuda"
    t_start = time.perf_counter()
    budget_s = preset.budget_s if budget_s is None else budget_s
    info = machine.describe()
    ctx.peaks = measure_peaks(preset, ctx)
    cases = preset.cases if cases is None else cases
    records, errors, ab_records, skipped = [], [], [], []
    deferred: list[Deferred] = []

    def result() -> dict[str, Any]:  # a snapshot: later cases do not change it
        return {
            "preset": preset.name,
            "description": preset.description,
            "machine": {**info, "load_average_end": machine.load_average()},
            "peaks": ctx.peaks,
            "tolerances": TOLERANCES,
            "cases": [as_dict(c) for c in cases],
            "records": [dict(r) for r in records],  # the baseline pass fills them in place
            "ablations": list(ab_records),
            "errors": list(errors),
            "skipped": list(skipped),
            "budget_s": budget_s,
            "wall_s": time.perf_counter() - t_start,
        }

    def may_start(name: str) -> bool:
        if budget_s is not None and time.perf_counter() - t_start >= budget_s:
            skipped.append(name)
            ctx.log(f"{name}: not run, the {budget_s:.0f} s budget is spent")
            return False
        return True

    def done() -> None:
        if on_result is not None:
            on_result(result())

    for i, case in enumerate(cases, 1):
        if not may_start(case.name):
            continue
        ctx.log(
            f"[{i}/{len(cases)}] {case.name}: {case.model} @ {case.image_size}, B={case.n_boot}, "
            f"{case.n_images} image(s), {case.dtype}"
        )
        t0 = time.perf_counter()
        try:
            rec, later = run_case(case, ctx)
        except CheckFailedError:
            raise
        except Exception as e:  # one broken case (e.g. out of memory) must not lose the others
            errors.append({"case": case.name, "error": f"{type(e).__name__}: {e}"})
            ctx.log(f"  FAILED: {type(e).__name__}: {e}")
        else:
            rec["case_wall_s"] = time.perf_counter() - t0
            records.append(rec)
            if later is not None:
                deferred.append(later)
            ctx.log(_summary(rec))
        done()
    for i, later in enumerate(deferred, 1):
        name = f"{later.case.name}: reference baseline"
        if not may_start(name):
            later.rec["baseline_status"] = "not run: the budget was spent"
            continue
        ctx.log(f"[baseline {i}/{len(deferred)}] {later.case.name}")
        t0 = time.perf_counter()
        left = None if budget_s is None else budget_s - (time.perf_counter() - t_start)
        try:
            ran = run_baseline_pass(later, ctx, left)
        except CheckFailedError:
            raise
        except Exception as e:
            later.rec["baseline_status"] = f"failed: {type(e).__name__}"
            errors.append({"case": later.case.name, "error": f"baseline: {type(e).__name__}: {e}"})
            ctx.log(f"  FAILED: {type(e).__name__}: {e}")
        else:
            later.rec["baseline_wall_s"] = time.perf_counter() - t0
            if not ran:
                skipped.append(name)
            ctx.log(f"  {later.rec['baseline_status']}" if not ran else _summary(later.rec))
        done()
    for ab in preset.ablations if ablations else ():
        name = f"ablation {ab.change} ({ab.model} @ {ab.image_size})"
        if not may_start(name):
            continue
        ctx.log(name)
        try:
            ab_records.extend(run_ablation(ab, ctx))
        except Exception as e:
            errors.append({"ablation": ab.change, "error": f"{type(e).__name__}: {e}"})
            ctx.log(f"  FAILED: {type(e).__name__}: {e}")
        done()
    return result()


def _summary(rec: dict[str, Any]) -> str:
    s = f"  ours {rec['ours_s_per_image']:.4g} s/image"
    if rec.get("speedup"):
        s += f", baseline {rec['baseline_s_per_image']:.4g} s/image, speedup {rec['speedup']:.3g}×"
    if rec.get("speedup_vs_best_peer"):
        s += f", best peer ({rec['best_peer']}) {rec['best_peer_s_per_image']:.4g} s/image, "
        s += f"{rec['speedup_vs_best_peer']:.3g}×"
    if rec.get("stats_speedup"):
        s += f", stats {rec['stats_speedup']:.3g}×"
    if rec.get("mfu") is not None:
        s += f", MFU {100 * rec['mfu']:.1f} %"
    return s


def jsonable(obj: Any) -> Any:
    """obj with numpy scalars/arrays turned into Python numbers/lists, NaN/inf into None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
