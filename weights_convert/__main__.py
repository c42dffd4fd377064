"""``python -m weights_convert SRC DST`` (the same as ``arb convert SRC DST``)."""

import sys

from weights_convert.convert import main

sys.exit(main())
