"""``python -m arb_jax COMMAND ...``: the same as ``arb COMMAND ...``."""

import sys

from arb_jax.cli import entry

sys.exit(entry())
