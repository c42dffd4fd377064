"""Errors raised while reading and converting checkpoints: one hierarchy under ``CheckpointError``.

Everything that goes wrong with a checkpoint file raises a :class:`CheckpointError`, whose message
is one line naming the file and the problem; text taken from the file or its name is escaped
(:func:`arb_jax.io.text.escape`), so no control character reaches the terminal::

    CheckpointError                     anything wrong with a checkpoint file
    ├── UnsafeCheckpointError           the pickle names a global that could run code
    ├── CheckpointFormatError           empty, truncated, corrupt, or not a format we read
    │   └── CheckpointLimitError        declares more memory than its bytes and the budget allow
    │                                   (sizes, strides, views, zip inflation, nesting, memo DAGs)
    ├── CheckpointKeysError             the tensors do not match a ViT (missing / unexpected /
    │   │                               mis-shaped keys, listed by source name)
    │   └── CheckpointIntegrityError    two sources for one parameter, or NaN / ±inf weights
    ├── CheckpointArchitectureError     (also a ValueError) the heads cannot be inferred, or the
    │                                   inferred architecture is invalid
    └── CheckpointNotFoundError         (also a FileNotFoundError) no such file, or a directory
                                        holding no weights file

No other exception type escapes :func:`arb_jax.convert.read_checkpoint` for a bad file
(``RecursionError``, ``OverflowError``, ``MemoryError``, zip ``RuntimeError`` /
``NotImplementedError`` … are turned into one of these); a bad *argument* (``which="x"``,
``heads=0``) is a plain ``ValueError``. Images have their own error,
:class:`arb_jax.images.ImageError` (a ``ValueError``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from arb_jax.io.text import escape


class CheckpointError(Exception):
    """Base class of the conversion errors.

    Attributes
    ----------
    path : str or None
        The (escaped) file name the error is about, when known. ``str(error)`` starts with it
        unless the message names the file already.
    """

    path: str | None = None

    def with_path(self, path: str | os.PathLike) -> CheckpointError:
        """Record ``path`` as the file at fault (if none is recorded yet) and return ``self``."""
        if self.path is None:
            self.path = escape(os.fspath(path))
        return self

    def __str__(self) -> str:
        text = escape(super().__str__())
        if self.path and self.path not in text:
            return f"{self.path}: {text}"
        return text


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for a global outside the allow-list (it could run code); nothing was run.

    Attributes
    ----------
    global_name : str
        The refused global as ``"module.name"`` (e.g. ``"posix.system"``).
    """

    def __init__(self, global_name: str, path: str | os.PathLike | None = None):
        self.global_name = global_name
        if path is not None:
            self.path = escape(os.fspath(path))
        where = f" in {self.path}" if self.path else ""
        super().__init__(
            f"refusing to load {escape(repr(global_name))}{where}: only tensor rebuilding, plain "
            "containers and inert data holders are allowed in a checkpoint pickle (this global "
            "could run code)"
        )


class CheckpointFormatError(CheckpointError):
    """The file is empty, truncated, corrupt, or not a checkpoint format we read."""


class CheckpointLimitError(CheckpointFormatError):
    """The file declares more memory or nesting than its actual bytes and the stated budget allow.

    Raised before anything is allocated: a storage or tensor larger than the file can back (a
    stride-0 ``expand`` saved as is, many copied views of one storage), zip members that inflate
    beyond the budget, containers nested too deep, referring to themselves, or whose shared
    references expand exponentially. See :class:`arb_jax.convert.safe_pickle.ReadLimits`.
    """


class CheckpointKeysError(CheckpointError):
    """The state dict does not match a ViT of the inferred architecture.

    Attributes
    ----------
    missing : list of str
        Expected keys absent from the checkpoint (source names).
    unexpected : list of str
        Keys present that no rule maps or drops.
    misshaped : list of str
        ``"key: expected (..), got (..)"`` strings.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        misshaped: Sequence[str] = (),
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.misshaped = list(misshaped)
        parts = [message]
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.misshaped),
        ):
            if items:
                shown = ", ".join(escape(i) for i in items[:20]) + (
                    f", … ({len(items)} in all)" if len(items) > 20 else ""
                )
                parts.append(f"{label} keys: {shown}")
        super().__init__("; ".join(parts))


class CheckpointIntegrityError(CheckpointKeysError):
    """The tensors are there but cannot be trusted: two sources for one parameter (a flat
    ``"blocks.0.norm1.weight"`` and a nested ``blocks → 0 → norm1 → weight``), or NaN / ±inf
    values.

    Attributes
    ----------
    tensors : list of str
        The source names at fault (both sources of a shadowed parameter).
    """

    def __init__(self, message: str, tensors: Sequence[str] = ()):
        self.tensors = list(tensors)
        super().__init__(message)


def check_conversion(
    what: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    misshaped: Sequence[str],
    nonfinite: Sequence[str],
    labels: Sequence[str] | None = None,
) -> None:
    """Raise what a conversion found wrong, in one place for every layout.

    ``what``: the inferred model, e.g. "big_vision ViT (dim=384, depth=12, patch=16)".
    ``nonfinite``: the source names with NaN or ±inf values; ``labels`` how to show each (default
    the escaped name), the first 20 listed.

    Raises
    ------
    CheckpointKeysError
        Parameters missing, unexpected or of the wrong shape.
    CheckpointIntegrityError
        Non-finite weights.
    """
    if missing or unexpected or misshaped:
        raise CheckpointKeysError(
            f"checkpoint does not match the inferred {what}",
            missing=missing,
            unexpected=unexpected,
            misshaped=misshaped,
        )
    if nonfinite:
        shown = list(labels) if labels is not None else [escape(n) for n in nonfinite]
        raise CheckpointIntegrityError(
            f"non-finite weights (NaN or ±inf) in {len(nonfinite)} tensor(s): "
            + ", ".join(shown[:20])
            + (f", … ({len(nonfinite)} in all)" if len(nonfinite) > 20 else ""),
            tensors=nonfinite,
        )


class CheckpointArchitectureError(CheckpointError, ValueError):
    """The tensors describe no buildable ViT: heads not inferable, or an invalid architecture."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist, or a directory holds no weights file."""

    def __init__(self, message: str):
        super().__init__(message)
