"""Run Python code in a fresh process with its own JAX setup (e.g. several fake CPU devices).

JAX fixes the device count when it starts, so a test that needs 4 CPU devices runs its code in
a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def jax_env(n_devices: int = 1, cache_dir: str | os.PathLike | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without XLA_*/JAX_* settings, on ``n_devices`` CPU devices.

    cache_dir: a persistent JAX compilation cache shared by the processes given it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    if n_devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    if cache_dir is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    env.update(extra)
    return env


def run_python(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -c script args…`` in the repository root; fails with its output on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env or jax_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc
