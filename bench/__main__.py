"""``python -m bench [--preset cpu-quick|cpu-full|gpu|smoke] [--json OUT] [--md OUT]``."""

from __future__ import annotations

import os
import sys

# JAX and PyTorch share one GPU: JAX grows its pool on demand, up to 60 % of the memory, so the
# baseline's PyTorch has room. Set before JAX starts; the environment can override either.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
