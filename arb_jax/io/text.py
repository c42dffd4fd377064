"""Text taken from files (key names, notes, file names) made safe to print on one line.

A checkpoint or an image file name can hold control characters: ESC sequences that recolour the
terminal or set its title, BEL, a newline that forges an extra output line, bidirectional
overrides that reorder what is shown. Every message built from such text passes it through
:func:`escape` first, and the command line's error printers escape the whole message again.

This module imports nothing heavy (no JAX, no numpy), so the checkpoint readers can use it.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["brief", "escape"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: Any, limit: int | None = None) -> str:
    """``text`` (a ``str``, or anything ``str()`` accepts) with every non-printable character
    written as a ``repr``-style escape: ``"\\x1b"``, ``"\\n"``, ``"\\u202e"``.

    Printable characters (``str.isprintable``, so also non-ASCII letters) and the space are kept;
    backslashes are kept as they are, so that escaping twice gives the same text as escaping once
    (the result is for display, not meant to be decoded back).

    Parameters
    ----------
    text : Any
        The text to escape; a non-``str`` is converted with ``str()`` first.
    limit : int, optional
        The most characters returned: longer text is cut and ends in ``"…"`` (for text of
        unknown length, such as a library's error message about a hostile file).

    Returns
    -------
    str
        One line with no control, format, separator or unassigned characters.

    Examples
    --------
    >>> escape("blocks.0\\x1b[31m\\nforged")
    'blocks.0\\\\x1b[31m\\\\nforged'
    """
    text = text if isinstance(text, str) else str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape_char(c) for c in text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
for _name in ("maxdict", "maxlist", "maxtuple", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _name, 6)


def brief(value: Any, width: int = 120) -> str:
    """A short, escaped, one-line ``repr`` of ``value`` for an error message.

    Nested containers are cut at depth 3 and after a few items (``reprlib``), so a
    self-referencing or 10⁵-deep container from a hostile file neither recurses nor floods the
    message; anything whose ``repr`` fails is shown by its type name.

    Parameters
    ----------
    value : Any
        The object to show.
    width : int
        The most characters returned (longer text is cut and ends in ``"…"``).

    Returns
    -------
    str
        At most ``width`` printable characters.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a hostile __repr__, or one that recurses: show the type only
        text = f"<{type(value).__name__}>"
    return escape(text, width)
