"""Writing output files all or nothing (one home for the temporary-file-then-rename pattern), and
one writer per output folder (an OS-level lock)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_TMP = re.compile(r"^\..+\.(\d+)\.tmp(\.[^.]*)?$")  # the names write_atomic's temporary files have


class FolderLockedError(RuntimeError):
    """Another process holds an output folder's lock (the message names it)."""


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


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, name: str = ".arb.lock", what: str = "arb", *, wait: bool = False
) -> Iterator[Path]:
    """Hold the output folder ``folder`` for this process, or fail at once (or wait for it).

    An exclusive ``flock`` on ``folder/name`` (created; kept afterwards): the OS releases it
    when the holder exits or is killed, so a killed run never blocks its own resume. The file
    records the holder (pid, what, since when) for the message a second process gets. On a file
    system that has no ``flock`` (some network mounts answer ENOLCK or EOPNOTSUPP) the folder is
    used unlocked, as before locks existed: multi-host sweeps write one rows file per host.

    Parameters
    ----------
    folder : path
        An existing folder.
    name : str
        The lock file's name (one per writer of the folder, e.g. per host of a sharded sweep).
    what : str
        Who holds it, for the record (e.g. ``"arb sweep"``).
    wait : bool, default False
        Wait for another holder to let go instead of failing (one line on stderr says whom
        this process waits for): for a shared cache that the first process fills and the
        others then reuse.

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    FolderLockedError
        Another process holds the lock; the message names the folder and that process.
    """
    path = Path(folder) / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise FolderLockedError(
                    f"{folder} is in use by {holder}; wait for it to finish, or write to another folder"
                ) from None
            print(f"arb: {path} is held by {holder}; waiting for it ...", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without flock (some network mounts): go on unlocked
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            yield path
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def path_lock(path: str | os.PathLike, what: str) -> contextlib.AbstractContextManager[Path]:
    """Wait for, then hold, the lock of one file or folder ``path`` that several processes may
    want to create (a cache entry): ``folder_lock(parent, ".<name>.lock", what, wait=True)``,
    the parent folder created first. The one that gets it first creates ``path``; the others,
    once they hold it, find ``path`` there and reuse it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return folder_lock(path.parent, f".{path.name}.lock", what=what, wait=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``write_atomic`` left in ``folder`` when its process was killed.

    Call it while holding the folder's lock (`folder_lock`): then no other process of ours writes
    there, and every ``.NAME.PID.tmp[.EXT]`` file but this process's own is stale.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    for path in Path(folder).iterdir():
        m = _TMP.match(path.name)
        if m and int(m.group(1)) != os.getpid() and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
