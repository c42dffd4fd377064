"""Describe the machine a benchmark ran on: device kind, cores, memory, library versions, load."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any

LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "scipy", "torch", "transformers", "statsmodels")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes make timings noisy), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe() -> dict[str, Any]:
    """The machine as a JSON-serialisable dict (call after the backends are initialised)."""
    import jax

    from arb_jax.models import xla_options

    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "jax_backend": jax.default_backend(),
        "jax_device": f"{dev.platform}: {dev.device_kind}",
        "jax_device_count": jax.device_count(),
        "xla_compiler_options": xla_options.compiler_options(),  # oneDNN's dots on a CPU, or {}
        "load_average_start": load_average(),
        "versions": versions(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def describe_device() -> str:
    """The JAX device the benchmark ran on, in words, e.g. "cpu: AMD EPYC (2 cores)"."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu: {_cpu_model()} ({os.cpu_count()} cores)"
    return f"{dev.platform}: {dev.device_kind}"
