"""What the command modules share: the error a user can cause, reported as one line."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """An error to report as one line (no traceback)."""
