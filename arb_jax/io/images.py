"""Images in, ImageNet-normalised arrays out (docs/method.md §1).

``read_image`` (file → ``(H, W, 3) uint8`` RGB) → ``prepare`` (resize, crop to patch multiples,
``/255``, ImageNet mean/std → ``(H', W', 3) float32``); ``load_images`` does both for many files,
bringing them to one size for a batch. ``expand_paths`` turns files, folders and globs into a
list of files. ``denormalize`` undoes the normalisation for display. ``prefetch`` decodes the
next batches in threads while the caller's device works; ``try_prepare`` is its loader's shape.

Errors: everything wrong with an image raises :class:`ImageError` (a ``ValueError``) with one line
naming the file or the problem; file names are escaped (:func:`arb_jax.io.text.escape`), so a name
holding ESC or a newline neither recolours the terminal nor breaks the line::

    ImageError              missing, a directory, not an image, corrupt, truncated, bad shape
    └── ImageLimitError     beyond the stated budget: more than ``MAX_PIXELS`` pixels (checked on
                            the header, before decoding at full bit depth), or an aspect ratio
                            beyond ``MAX_ASPECT``:1 where the aspect is kept (its long side would
                            make a huge token grid on the device)

(Checkpoint files have their own hierarchy, :mod:`weights_convert.errors`.)
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from arb_jax.checks import as_int
from arb_jax.io.text import escape

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAX_PIXELS = 1 << 26  # 67 108 864 px (8192 x 8192): the most an image may have, read or resized
MAX_ASPECT = 10  # the widest long side : short side of an image resized keeping its aspect

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ImageError(ValueError):
    """An image that cannot be read or prepared; the message names the file or the problem."""


class ImageLimitError(ImageError):
    """An image beyond the stated budget (``MAX_PIXELS``, ``MAX_ASPECT``), refused before it is
    decoded or sent to the device."""


def gray16_to_rgb8(a: np.ndarray, rows: int = 256) -> np.ndarray:
    """``(H, W)`` 0..65535 integers → ``(H, W, 3) uint8`` (``round(a / 257)``), a block of rows at
    a time, so that no full-size wide temporary is made."""
    out = np.empty((*a.shape, 3), np.uint8)
    for r in range(0, a.shape[0], rows):
        block = np.clip(a[r : r + rows].astype(np.int64), 0, 65535)
        out[r : r + rows] = ((block + 128) // 257).astype(np.uint8)[..., None]
    return out


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    """Convert a loaded Pillow image to 8-bit RGB; returns it and a note on what was done."""
    mode = img.mode
    if mode == "RGB":
        return img, ""
    if mode.startswith("I"):  # 16-bit ("I;16*"), or 32-bit int holding 8- or 16-bit values
        a = np.asarray(img)
        top = int(a.max(initial=0))
        if mode == "I" and top > 65535:
            raise ImageError("32-bit integer images beyond the 16-bit range are not supported")
        if mode == "I" and top <= 255:  # 8-bit values held in 32 bits
            rgb = np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
        else:  # 0..65535 → 0..255
            rgb = gray16_to_rgb8(a)
        return Image.fromarray(rgb), f"{mode} gray → 8-bit RGB"
    if mode == "F":
        raise ImageError("floating-point (mode 'F') images are not supported")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return (
            Image.alpha_composite(white, rgba).convert("RGB"),
            f"{mode} with transparency composited over white → RGB",
        )
    return img.convert("RGB"), f"{mode} → RGB"


def read_image(path: str | Path) -> tuple[np.ndarray, str]:
    """Read an image file as ``(H, W, 3) uint8`` RGB, with a note on any conversion.

    The EXIF orientation is applied. Grayscale, palette, CMYK and 16-bit images are converted to
    RGB; transparent images (RGBA, LA, palette with transparency) are composited over white.

    Returns
    -------
    img : numpy.ndarray, (H, W, 3) uint8
        The RGB image.
    note : str
        A short note saying what was converted (e.g. ``"L → RGB"``), ``""`` for an RGB file. The
        note is also logged at DEBUG level.

    Raises
    ------
    ImageError
        The file is missing, a directory, not an image, corrupt or truncated; the message names the
        path (escaped).
    ImageLimitError
        More than ``MAX_PIXELS`` pixels, refused from the header before decoding.
    """
    path = Path(path).expanduser()
    name = escape(path)
    if not path.exists():
        raise ImageError(f"image file not found: {name}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {name}")
    if path.stat().st_size == 0:
        raise ImageError(f"empty file, not an image: {name}")
    try:
        with Image.open(path) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > MAX_PIXELS:
                raise ImageLimitError(
                    f"image of {w}x{h} px (W x H, mode {im.mode}) has {w * h} pixels, more than "
                    f"the {MAX_PIXELS} (MAX_PIXELS) read: {name}"
                )
            im.load()  # decode now: truncation and corruption surface here, not later
            im = ImageOps.exif_transpose(im) or im
            rgb, note = _to_rgb(im)
            arr = np.array(rgb, dtype=np.uint8)
    except UnidentifiedImageError as e:
        raise ImageError(f"not a recognised image file: {name}") from e
    except Image.DecompressionBombError as e:
        raise ImageLimitError(f"image too large (Pillow's decompression-bomb guard): {name}") from e
    except ImageLimitError:
        raise
    except ImageError as e:
        raise ImageError(f"{e}: {name}") from e
    except PermissionError as e:
        raise ImageError(f"cannot read image file (permission denied): {name}") from e
    except MemoryError as e:
        raise ImageLimitError(f"out of memory decoding the image: {name}") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageError(f"corrupt or truncated image file: {name} ({escape(e)})") from e
    if arr.ndim != 3 or arr.shape[-1] != 3 or min(arr.shape[:2]) == 0:
        raise ImageError(f"image decoded to an unexpected shape {arr.shape}: {name}")
    if note:
        logger.debug("%s: %s", path, note)
    return arr, note


def _check_uint8_rgb(img: Any, what: str = "img") -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 (0..255), got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ImageError(f"{what} must have shape (H, W, 3), got {img.shape}")
    return img


def _target_size(size: int | tuple[int, int], h: int, w: int) -> tuple[int, int]:
    """(H, W) after resizing an ``h × w`` image: short side = ``size``, or exactly ``size``."""
    if isinstance(size, (tuple, list)):
        return _as_pair(size)
    s = as_int(size, "size")
    if h <= w:
        return s, max(1, round(w * s / h))
    return max(1, round(h * s / w)), s


def prepare(img: np.ndarray, size: int | tuple[int, int] | None, patch: int) -> np.ndarray:
    """Resize, crop to patch multiples and normalise one image.

    Parameters
    ----------
    img : numpy.ndarray, (H, W, 3) uint8
        RGB.
    size : int, (int, int) or None
        An int: resize (Pillow bicubic) so the SHORT side is ``size``, keeping the aspect ratio
        (the long side rounded); an ``(H, W)`` pair: resize to exactly that; None: keep the size.
    patch : int
        The ViT patch size in pixels.

    Returns
    -------
    numpy.ndarray, (H', W', 3) float32
        ImageNet-normalised, with ``H' = patch·⌊H/patch⌋`` (likewise W'): the centre crop (an odd
        leftover pixel goes to the bottom/right margin).

    Raises
    ------
    ImageError
        The resized image is smaller than one patch; bad shape.
    ImageLimitError
        An aspect ratio beyond ``MAX_ASPECT``:1 where it is kept (``size`` an int or None), or a
        resized image of more than ``MAX_PIXELS`` pixels; refused before resizing.
    TypeError
        ``img`` is not a uint8 numpy array.
    """
    img = _check_uint8_rgb(img)
    patch = as_int(patch, "patch")
    h, w = img.shape[:2]
    if not isinstance(size, (tuple, list)) and max(h, w) > MAX_ASPECT * min(h, w):
        raise ImageLimitError(
            f"image of {h}x{w} px (H x W) has an aspect ratio of {max(h, w) / max(min(h, w), 1):.0f}:1, "
            f"beyond the {MAX_ASPECT}:1 (MAX_ASPECT) supported with its aspect kept"
        )
    th, tw = (h, w) if size is None else _target_size(size, h, w)
    if th * tw > MAX_PIXELS:
        raise ImageLimitError(
            f"image of {h}x{w} px (H x W) resized to {th}x{tw} would have {th * tw} pixels, more "
            f"than the {MAX_PIXELS} (MAX_PIXELS) supported"
        )
    if th < patch or tw < patch:
        raise ImageError(
            f"image too small: {h}x{w} (H x W) resized to {th}x{tw} is smaller than one {patch}x{patch} patch"
        )
    if (th, tw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((tw, th), Image.Resampling.BICUBIC))
    ch, cw = th - th % patch, tw - tw % patch
    top, left = (th - ch) // 2, (tw - cw) // 2
    return normalize(img[top : top + ch, left : left + cw])


def normalize(img01: np.ndarray) -> np.ndarray:
    """ImageNet-normalise: ``(x − mean) / std`` per channel.

    Parameters
    ----------
    img01 : numpy.ndarray, (..., 3)
        Floats in [0, 1], or uint8 in 0..255 (divided by 255 first).

    Returns
    -------
    numpy.ndarray, (..., 3) float32
    """
    x = np.asarray(img01)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ImageError(f"expected a trailing RGB axis of size 3, got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)
    elif not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"img01 must be float in [0, 1] or uint8, got dtype {x.dtype}")
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)


def denormalize(x: np.ndarray, *, clip: bool = True) -> np.ndarray:
    """Undo ``normalize`` for display: ``x · std + mean`` per channel.

    Parameters
    ----------
    x : numpy.ndarray, (..., 3)
        ImageNet-normalised floats.
    clip : bool
        Clip the result to [0, 1] (the default, for ``imshow``).

    Returns
    -------
    numpy.ndarray, (..., 3) float32
        In [0, 1] when ``clip``.
    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ImageError(f"expected a trailing RGB axis of size 3, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    out = x.astype(np.float32) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
    return np.clip(out, 0.0, 1.0) if clip else out


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def expand_paths(items: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files, folders and glob patterns → a list of image files.

    A file is kept as given; a folder gives its image files (by extension, not recursive) in
    sorted order; a pattern (``*``, ``?``, ``[``; ``**`` recurses) gives its matching image files,
    sorted. Duplicates are dropped, first occurrence kept.

    Raises
    ------
    ImageError
        A path that does not exist, a folder that cannot be read or holds no image, a pattern that
        matches no image.
    """
    if isinstance(items, (str, Path)):
        items = [items]
    out: list[Path] = []
    for item in items:
        if not isinstance(item, (str, Path)):
            raise TypeError(f"paths must be str or Path, got {type(item).__name__}")
        text = os.path.expanduser(str(item))
        path = Path(text)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if _is_image_file(p))
            except OSError as e:
                raise ImageError(f"cannot read folder {escape(path)}: {escape(e.strerror or e)}") from e
            if not found:
                raise ImageError(
                    f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {escape(path)}"
                )
        elif any(c in text for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            found = [p for p in matches if _is_image_file(p)]
            if not found:
                raise ImageError(f"no image file matches {escape(repr(text))}")
        else:
            raise ImageError(f"no such file or folder: {escape(path)}")
        out.extend(found)
    if not out:
        raise ImageError("no image paths given")
    return list(dict.fromkeys(out))


def load_images(
    paths: str | Path | Sequence[str | Path], vit_or_patch: Any, size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """Read, resize, crop and normalise images into one batch.

    Parameters
    ----------
    paths : str, Path or sequence of str or Path
        Files, folders or globs (see ``expand_paths``).
    vit_or_patch : ViT bundle or int
        A ViT bundle (an object with ``.image_size`` ``(H, W)`` and ``.config.patch``): every image
        is resized to exactly its ``image_size``; or an int patch size, with ``size``.
    size : int, (int, int) or None
        With an int patch: every image is resized to ``size × size`` (an int) or to ``size`` (an
        ``(H, W)`` pair). With a bundle, None or equal to its ``image_size``.

    Returns
    -------
    numpy.ndarray, (N, H, W, 3) float32
        ImageNet-normalised; H and W are multiples of the patch.
    """
    if hasattr(vit_or_patch, "image_size") and hasattr(vit_or_patch, "config"):
        patch = as_int(vit_or_patch.config.patch, "vit.config.patch")
        target = tuple(int(s) for s in np.broadcast_to(vit_or_patch.image_size, (2,)))
        if size is not None and _as_pair(size) != target:
            raise ValueError(
                f"size={size!r} disagrees with the model's image_size {target}; "
                f"load the model for that size instead"
            )
    elif isinstance(vit_or_patch, (int, np.integer)) and not isinstance(vit_or_patch, bool):
        patch = as_int(vit_or_patch, "patch")
        if size is None:
            raise ValueError("size is required when vit_or_patch is a patch size")
        target = _as_pair(size)
    else:
        raise TypeError(
            "vit_or_patch must be a ViT bundle (with .image_size and .config.patch) "
            f"or an int patch size, got {type(vit_or_patch).__name__}"
        )
    files = expand_paths(paths)
    return np.stack([prepare(read_image(f)[0], target, patch) for f in files])


def try_prepare(
    load: Callable[[], np.ndarray], size: int | tuple[int, int] | None, patch: int
) -> tuple[np.ndarray | None, str]:
    """``(prepare(load(), size, patch), "")``, or ``(None, reason)`` for an image that cannot be
    read or prepared: never raises for a bad image (for loaders running in worker threads)."""
    try:
        return prepare(load(), size, patch), ""
    except (ImageError, OSError, ValueError, TypeError) as e:
        return None, str(e)


def prefetch(
    items: Iterable[T], batch: int, load: Callable[[T], Any], *, depth: int = 2, workers: int | None = None
) -> Iterator[list[tuple[T, Any]]]:
    """Batches of ``(item, load(item))``, loading up to ``depth`` batches ahead in threads.

    ``load`` runs in a `concurrent.futures.ThreadPoolExecutor` (``workers`` threads, default
    ``min(4, cpu count)``; Pillow decoding and resizing release the GIL), so the next batches are
    decoded while the caller's device works on this one. Order is preserved. ``load`` should not
    raise (an exception propagates when its batch is reached).
    """
    if batch < 1 or depth < 1:
        raise ValueError(f"batch and depth must be >= 1, got {batch} and {depth}")
    workers = workers or min(4, os.cpu_count() or 1)
    source = iter(items)
    chunks = iter(lambda: list(itertools.islice(source, batch)), [])
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="arb-load")
    pending: deque[tuple[list[T], list[Future]]] = deque()

    def submit() -> None:
        chunk = next(chunks, None)
        if chunk:
            pending.append((chunk, [pool.submit(load, item) for item in chunk]))

    try:
        for _ in range(depth):
            submit()
        while pending:
            chunk, futures = pending.popleft()
            submit()
            yield [(item, f.result()) for item, f in zip(chunk, futures, strict=True)]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _as_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"size must be an int or an (H, W) pair, got {size!r}")
        return as_int(size[0], "size[0]"), as_int(size[1], "size[1]")
    s = as_int(size, "size")
    return s, s


SAMPLE_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "coins",
    "moon",
)


def sample_images() -> dict[str, np.ndarray]:
    """Photos shipped with scikit-image, as ``(H, W, 3) uint8`` RGB (gray ones repeated ×3).

    Keys: ``SAMPLE_NAMES`` (astronaut, chelsea, coffee, rocket, immunohistochemistry,
    hubble_deep_field, camera, coins, moon). Public-domain / freely licensed images
    (see ``skimage.data``); no download needed.
    """
    from skimage import data

    out = {}
    for name in SAMPLE_NAMES:
        a = np.asarray(getattr(data, name)())
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        out[name] = np.ascontiguousarray(a[..., :3], dtype=np.uint8)
    return out
