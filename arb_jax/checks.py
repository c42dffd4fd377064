"""Argument checks shared across modules: one wording for a bad count or size."""

from __future__ import annotations

import operator
from typing import Any


def as_int(value: Any, name: str, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` as a Python int >= ``minimum`` (None passes when ``allow_none``).

    TypeError for what is not an integer (bool, float, a traced value: counts set array shapes);
    ValueError for an integer below ``minimum``. Numpy integers are accepted.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        if hasattr(value, "aval"):  # a JAX tracer: the count is not known while tracing
            raise TypeError(f"{name} must be a static Python int (it sets an array shape; mark "
                            "it static under jit), got a traced value") from None
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, got "
                        f"{type(value).__name__} {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out
