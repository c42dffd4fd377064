"""``python -m arb_jax.convert SRC DST`` (the same as ``arb convert SRC DST``)."""

import sys

from arb_jax.convert.convert import main

sys.exit(main())
