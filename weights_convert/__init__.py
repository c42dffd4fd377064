"""Moved to :mod:`arb_jax.convert`; this name stays so ``import weights_convert`` keeps working.

``weights_convert.X`` (``readers``, ``formats``, ``safe_pickle``…) is the module
``arb_jax.convert.X``, and ``python -m weights_convert SRC DST`` is ``arb convert SRC DST``.
"""

from arb_jax._moved import install
from arb_jax.convert import *  # noqa: F403
from arb_jax.convert import __all__  # noqa: F401

install(
    {
        f"weights_convert.{name}": f"arb_jax.convert.{name}"
        for name in ("convert", "errors", "formats", "onnx_reader", "orbax_io", "readers", "safe_pickle")
    }
)
