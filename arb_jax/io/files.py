"""Writing output files all or nothing: one home for the temporary-file-then-rename pattern."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temporary file beside it (same
    suffix, so writers that choose a format by extension work), which is then renamed onto
    ``path``. A kill or an error leaves the previous file (or none) and no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``write_atomic`` of a text file."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks (constant memory).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    chunk_bytes : int, default 1 MiB
        Bytes per read.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
