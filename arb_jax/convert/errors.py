"""Errors raised while reading and converting checkpoints.

Every error names the file or the keys at fault, so that a user can act without a traceback
from deep inside the reader.
"""

from __future__ import annotations

from collections.abc import Sequence


class CheckpointError(Exception):
    """Base class of the conversion errors."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for a global outside the allow-list (it could run code); nothing was run.

    Attributes:
      global_name: the refused global as ``"module.name"`` (e.g. ``"posix.system"``).
    """

    def __init__(self, global_name: str, path: str | None = None):
        self.global_name = global_name
        self.path = path
        where = f" in {path}" if path else ""
        super().__init__(
            f"refusing to load {global_name!r}{where}: only tensor rebuilding, plain containers "
            "and inert data holders are allowed in a checkpoint pickle (this global could run code)"
        )


class CheckpointFormatError(CheckpointError):
    """The file is empty, truncated, corrupt, or not a checkpoint format we read."""


class CheckpointKeysError(CheckpointError):
    """The state dict does not match a ViT of the inferred architecture.

    Attributes:
      missing: expected keys absent from the checkpoint (source names).
      unexpected: keys present that no rule maps or drops.
      misshaped: ``"key: expected (..), got (..)"`` strings.
    """

    def __init__(self, message: str, *, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (), misshaped: Sequence[str] = ()):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.misshaped = list(misshaped)
        parts = [message]
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mis-shaped", self.misshaped)):
            if items:
                shown = ", ".join(items[:20]) + (f", … ({len(items)} in all)"
                                                 if len(items) > 20 else "")
                parts.append(f"{label} keys: {shown}")
        super().__init__("; ".join(parts))
