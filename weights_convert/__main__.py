"""``python -m weights_convert SRC DST``: the same as ``arb convert SRC DST`` (now in ``arb_jax.convert``)."""

import sys

from arb_jax.convert.convert import main

sys.exit(main())
