"""Data sources of the study: an image folder or a tensorflow-datasets split → `Item` s.

An image folder in the ImageNet layout (``class/*.JPEG``) gives class = folder name; images
directly in the folder get class ``""``. ``tfds:NAME[/CONFIG][:SPLIT]`` reads a
tensorflow-datasets split (``pip install 'arb-jax[tfds]'``). Every item has a stable id, which
the sweep folds into the image's PRNG key (`arb_jax.study.grid.image_key`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from arb_jax.io import images

__all__ = [
    "PLACEMENT_SEP",
    "Item",
    "SourceError",
    "folder_items",
    "open_source",
    "placements_of",
    "tfds_items",
]


class SourceError(ValueError):
    """A data source that cannot be read (missing folder, no images, tfds not installed, ...)."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a data source: a stable id, its class (``""`` if none) and a loader.

    ``load()`` returns the image as ``(H, W, 3) uint8`` RGB (it may read a file: call it in a
    worker thread).
    """

    image_id: str
    label: str
    load: Callable[[], np.ndarray] = dataclasses.field(repr=False, compare=False)


def _round_robin(groups: Sequence[Sequence[Item]]) -> list[Item]:
    """Interleave the groups: first item of each, then second of each, ..."""
    out = []
    for row in itertools.zip_longest(*groups):
        out.extend(item for item in row if item is not None)
    return out


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    # resolved through the module at call time (tests may wrap images.read_image)
    return lambda: images.read_image(path)[0]


def folder_items(root: str | Path) -> list[Item]:
    """The images of a folder, class by class in turn (round-robin), as `Item` s.

    Layout: images in ``root/CLASS/`` get class ``CLASS`` (ImageNet / Imagenette layout); images
    directly in ``root`` get class ``""``. Not recursive below the class folders; hidden files and
    folders are ignored; image files are recognised by extension (`arb_jax.io.images`). Within a
    class, files are sorted by name; classes are sorted and interleaved so that ``--limit`` and an
    interrupted sweep cover every class evenly. The id of an image is its path relative to
    ``root``, with ``/`` separators (e.g. ``"n01440764/ILSVRC2012_val_00000293.JPEG"``).

    Raises
    ------
    SourceError
        ``root`` is not a folder or holds no image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"data folder not found: {root}")

    def image_files(folder: Path) -> list[Path]:
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            raise SourceError(f"cannot read folder {folder}: {e.strerror or e}") from e
        return [
            p
            for p in entries
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in images.IMAGE_EXTENSIONS
        ]

    groups: list[list[Item]] = []
    top = image_files(root)
    if top:
        groups.append([Item(p.name, "", _file_loader(p)) for p in top])
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(sub)
        if files:
            groups.append([Item(f"{sub.name}/{p.name}", sub.name, _file_loader(p)) for p in files])
    if not groups:
        raise SourceError(
            f"no image files ({', '.join(sorted(images.IMAGE_EXTENSIONS))}) in {root} or its class folders"
        )
    return _round_robin(groups)


TFDS_INSTALL = (
    "reading {spec} needs tensorflow-datasets, which is not installed; install the "
    "extra with: pip install 'arb-jax[tfds]'  (tensorflow-datasets and tensorflow-cpu)"
)


def _parse_tfds(spec: str) -> tuple[str, str]:
    body = spec[len("tfds:") :]
    name, _, split = body.partition(":")
    if not name or not re.fullmatch(r"[\w.\-/]+", name):
        raise SourceError(
            f"bad tfds data set {spec!r}; expected tfds:NAME[/CONFIG][:SPLIT], e.g. "
            "tfds:imagenette/320px-v2:validation"
        )
    return name, split or "validation"


def tfds_items(spec: str, data_dir: str | None = None) -> Iterator[Item]:
    """The images of a tensorflow-datasets split, in the data set's order, as `Item` s.

    ``spec``: ``"tfds:NAME[/CONFIG][:SPLIT]"`` (default split ``validation``; the paper's data is
    ``tfds:imagenette`` validation, 3925 images). The id of an image is its ``file_name`` feature
    when the data set has one, else ``"SPLIT/INDEX"``; its class the label's name (``""`` if the
    data set has no ``label``). tfds downloads and prepares the data set on first use.
    ``data_dir``: where tfds keeps its data sets (None: ``$TFDS_DATA_DIR``, read at each call,
    else tfds's default ``~/tensorflow_datasets``); a data set written there in TFDS's format
    (e.g. by ``tfds.dataset_builders.store_as_tfds_dataset``) is read by its name.

    Raises
    ------
    SourceError
        tensorflow-datasets is not installed (the message says how to install it), or
        the data set / split does not exist.
    """
    name, split = _parse_tfds(spec)
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise SourceError(TFDS_INSTALL.format(spec=spec)) from None
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    try:
        ds, info = tfds.load(name, split=split, shuffle_files=False, with_info=True, data_dir=data_dir)
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, ValueError, ...)
        raise SourceError(f"cannot load {spec}: {type(e).__name__}: {e}") from e
    label_feature = info.features["label"] if "label" in info.features else None  # noqa: SIM401

    def loader(img: np.ndarray) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            a = np.asarray(img)
            if a.ndim == 2:
                a = a[..., None]
            if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.dtype != np.uint8:
                raise images.ImageError(f"unexpected tfds image of shape {a.shape}, {a.dtype}")
            return np.ascontiguousarray(np.repeat(a, 3, -1) if a.shape[-1] == 1 else a[..., :3])

        return load

    def items() -> Iterator[Item]:
        for i, ex in enumerate(tfds.as_numpy(ds)):
            fname = ex.get("file_name")
            if fname is not None:
                image_id = fname.decode() if isinstance(fname, bytes) else str(fname)
            else:
                image_id = f"{split}/{i:06d}"
            label = "" if label_feature is None else str(label_feature.int2str(int(ex["label"])))
            yield Item(image_id, label, loader(ex["image"]))

    return items()  # the checks above run now, not at the first image


def open_source(data: str | Path, limit: int | None = None) -> Iterator[Item]:
    """`Item` s of ``data`` (a folder or ``tfds:...``), at most ``limit`` of them."""
    text = str(data)
    items = tfds_items(text) if text.startswith("tfds:") else iter(folder_items(text))
    return itertools.islice(items, limit) if limit is not None else items


PLACEMENT_SEP = "@"


def placements_of(items: Iterable[Item], k: int) -> Iterator[Item]:
    """Each image ``k`` times, as items of their own: ``ID`` (placement 0), ``ID@1`` … ``ID@k-1``.

    Parameters
    ----------
    items : iterable of Item
        The data source.
    k : int
        Noise placements per image (>= 1). Placement ``j`` of an image has the id
        ``f"{image_id}@{j}"`` (the first keeps the plain id), hence its own key
        (`arb_jax.study.grid.image_key`): its own noise position, its own bootstrap samples and
        a row of its own. Raising ``k`` on a resumed sweep adds the new placements and keeps the
        rows already written.

    Yields
    ------
    Item
        The same label and loader as the image.
    """
    for item in items:
        for j in range(k):
            yield item if j == 0 else Item(f"{item.image_id}{PLACEMENT_SEP}{j}", item.label, item.load)
