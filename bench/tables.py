"""Markdown tables of a benchmark result (the machine, the cases, the ablations)."""

from __future__ import annotations

from typing import Any


def _num(x: Any, fmt: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    if x is None:
        return "—"
    return f"{x * scale:{fmt}}{suffix}"


def _bytes(x: Any) -> str:
    if not x:
        return "—"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= size:
            return f"{x / size:.3g} {unit}"
    return f"{x} B"


def _check(rec: dict[str, Any]) -> str:
    c = rec.get("check")
    if not c:
        return "not run (budget)" if rec.get("baseline_status", "").startswith("not run") else "—"
    return f"ok (B={c['n_boot']})" if c["passed"] else f"FAILED {','.join(c['failed'])}"


def machine_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    v = m.get("versions", {})
    peaks = result.get("peaks", {})
    rows = [
        ("preset", f"`{result['preset']}` — {result.get('description', '')}"),
        ("date (UTC)", m.get("date")),
        ("device", f"{m.get('jax_device')} ({m.get('jax_device_count')} device(s))"),
        ("CPU", f"{m.get('cpu')}, {m.get('cpu_cores')} cores, {_bytes(m.get('memory_bytes'))} memory"),
        (
            "load average (1, 5, 15 min)",
            f"start {m.get('load_average_start')}, end {m.get('load_average_end')}",
        ),
        ("libraries", ", ".join(f"{k} {val}" for k, val in v.items())),
        ("torch threads / device", f"{m.get('torch_threads')} / {m.get('torch_device', 'cpu')}"),
        ("our XLA compiler options", f"`{m.get('xla_compiler_options', {})}`"),
    ]
    for lib in ("jax", "torch", "ort"):
        for dtype, p in peaks.get(lib, {}).items():
            if "flops" in p:
                rows.append(
                    (
                        f"peak {lib} {dtype} matmul ({p['n']}³)",
                        f"{p['flops'] / 1e12:.4g} TFLOP/s (median; best {p['flops_best'] / 1e12:.4g})",
                    )
                )
    for dtype, p in peaks.get("best", {}).items():
        rows.append((f"peak {dtype} (MFU denominator)", f"{p['flops'] / 1e12:.4g} TFLOP/s ({p['library']})"))
    rows.append(("total wall time", _num(result.get("wall_s"), ".0f", suffix=" s")))
    out = ["| | |", "|---|---|"] + [f"| {k} | {val} |" for k, val in rows]
    return "\n".join(out)


CASE_COLUMNS = (
    "case",
    "model @ px",
    "B",
    "imgs/call",
    "dtype",
    "attention",
    "ours s/img",
    "s/forward",
    "compile s",
    "baseline s/img",
    "speedup",
    "torch peer s/img",
    "ORT peer s/img",
    "vs best peer",
    "stats ours s",
    "stats baseline s",
    "stats speedup",
    "GFLOP/img",
    "attn FLOP share",
    "TFLOP/s",
    "MFU",
    "peak mem ours",
    "peak mem baseline",
    "check",
)


def case_row(r: dict[str, Any]) -> list[str]:
    return [
        r["case"],
        f"{r['model']} @ {r['image_size']}",
        str(r["n_boot"]),
        str(r["n_images"]),
        r["dtype"],
        r.get("attention", "—"),
        _num(r["ours_s_per_image"], ".4g"),
        _num(r.get("ours_s_per_forward"), ".3g"),
        _num(r.get("ours_compile_s"), ".3g"),
        _num(r.get("baseline_s_per_image"), ".4g"),
        _num(r.get("speedup"), ".3g", suffix="×"),
        _num(r.get("peer_torch_s_per_image"), ".4g"),
        _num(r.get("peer_ort_s_per_image"), ".4g"),
        _num(r.get("speedup_vs_best_peer"), ".3g", suffix="×"),
        _num(r.get("ours_stats_s_per_image"), ".3g"),
        _num(r.get("baseline_stats_s_per_image"), ".3g"),
        _num(r.get("stats_speedup"), ".3g", suffix="×"),
        _num(r["flops_per_image"], ".4g", 1e-9),
        _num(r.get("attention_flop_share"), ".0%"),
        _num(r["achieved_flops"], ".3g", 1e-12),
        _num(r.get("mfu"), ".1%"),
        _bytes(r.get("peak_memory_bytes")),
        _bytes(r.get("baseline_peak_memory_bytes")),
        _check(r),
    ]


def cases_table(records: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(CASE_COLUMNS) + " |", "|" + "---|" * len(CASE_COLUMNS)]
    out += ["| " + " | ".join(case_row(r)) + " |" for r in records]
    return "\n".join(out)


def ablations_table(ablations: list[dict[str, Any]]) -> str:
    changes = [a for a in ablations if a["change"] != "profile"]
    profile = [a for a in ablations if a["change"] == "profile"]
    out = []
    if changes:
        out += [
            "| change | model @ px | setting | before | after | before s | after s | gain |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in changes:
            setting = f"B={a['n_boot']}, {a['what']}" if "n_boot" in a else f"batch {a['batch']}, {a['what']}"
            out.append(
                f"| {a['change']} | {a['model']} @ {a['image_size']} | {setting} | "
                f"{a['before']} | {a['after']} | {a['before_s']:.4g} | {a['after_s']:.4g} | "
                f"{a['speedup']:.3g}× |"
            )
    if profile:
        out += [
            "",
            "Profile of one transformer block (each part compiled and timed alone):",
            "",
            "| model @ px | batch | part | s | share of block | TFLOP/s |",
            "|---|---|---|---|---|---|",
        ]
        for a in profile:
            out.append(
                f"| {a['model']} @ {a['image_size']} | {a['batch']} | {a['part']} | "
                f"{a['seconds']:.4g} | {a['share_of_block']:.0%} | "
                f"{_num(a.get('achieved_flops'), '.3g', 1e-12)} |"
            )
    return "\n".join(out)


def to_markdown(result: dict[str, Any]) -> str:
    """The whole result as markdown: machine, cases, ablations, errors."""
    parts = [
        f"## Benchmark `{result['preset']}`",
        "",
        machine_table(result),
        "",
        "### Cases",
        "",
        cases_table(result["records"]),
        "",
    ]
    if result.get("ablations"):
        parts += ["### What each change bought", "", ablations_table(result["ablations"]), ""]
    if result.get("errors"):
        parts += ["### Errors", ""] + [f"- {e}" for e in result["errors"]] + [""]
    if result.get("skipped"):
        parts += [f"### Not run (the {result['budget_s']:.0f} s time budget was spent)", ""]
        parts += [f"- {name}" for name in result["skipped"]] + [""]
    return "\n".join(parts)
