"""A class-folder data set of the real photos available offline (scikit-image, scikit-learn).

No one here made these images: scikit-image's colour photos, scikit-learn's two sample photos
(``load_sample_images``) and scikit-image's natural greyscale photos as RGB. ``write_photo_dataset``
writes them as lossless PNGs into ``OUT/<class>/<name>.png``, the layout ``arb sweep`` and
``arb finetune`` read, with one class per source and kind:

* ``skimage_colour``: astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry, retina,
  rocket, and the two views of stereo_motorcycle;
* ``sklearn_colour``: china, flower;
* ``skimage_grey``: camera, coins, moon, clock, grass, gravel, brick, horse (a binary silhouette,
  0/255), page — each grey value repeated in R, G and B.

``arb photos OUT`` is the command (`arb_jax.cli.photos`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from arb_jax.io.files import write_atomic

__all__ = ["CLASSES", "photo_dataset", "write_photo_dataset"]

SKIMAGE_COLOUR = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)
SKIMAGE_GREY = ("camera", "coins", "moon", "clock", "grass", "gravel", "brick", "horse", "page")
SKLEARN = ("china", "flower")
CLASSES = ("skimage_colour", "sklearn_colour", "skimage_grey")


def _sklearn_images() -> Path:
    """scikit-learn's sample-image folder (``sklearn/datasets/images``), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "scikit-learn is not installed: its sample photos (china, flower) are missing"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"


def _rgb(a: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8`` from a grey, boolean or RGB(A) array."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a[..., :3], dtype=np.uint8)


def photo_dataset() -> dict[str, dict[str, Callable[[], np.ndarray]]]:
    """``{class: {name: loader}}`` of every photo; each loader returns ``(H, W, 3) uint8`` RGB.

    Returns
    -------
    dict
        20 photos in the three classes of ``CLASSES`` (nothing is downloaded).
    """
    from skimage import data

    colour = {n: (lambda n=n: _rgb(getattr(data, n)())) for n in SKIMAGE_COLOUR}
    colour["stereo_motorcycle_left"] = lambda: _rgb(data.stereo_motorcycle()[0])
    colour["stereo_motorcycle_right"] = lambda: _rgb(data.stereo_motorcycle()[1])

    def sklearn_photo(name: str) -> np.ndarray:
        # The JPEG that sklearn.datasets.load_sample_image reads, opened without importing
        # scikit-learn: its vendored OpenMP runtime beside torch's in one process is a
        # suspect in aborted test workers (bench/README.md, seventh session).
        with Image.open(_sklearn_images() / f"{name}.jpg") as im:
            return _rgb(np.asarray(im.convert("RGB")))

    return {
        "skimage_colour": colour,
        "sklearn_colour": {n: (lambda n=n: sklearn_photo(n)) for n in SKLEARN},
        "skimage_grey": {n: (lambda n=n: _rgb(getattr(data, n)())) for n in SKIMAGE_GREY},
    }


def write_photo_dataset(out: str | Path) -> dict[str, int]:
    """Write the photos as ``out/<class>/<name>.png`` (each file written atomically).

    Parameters
    ----------
    out : path
        The data set folder (created); files already there with the same name are replaced.

    Returns
    -------
    dict of str to int
        Images written per class.
    """
    out = Path(out).expanduser()
    counts = {}
    for cls, photos in photo_dataset().items():
        (out / cls).mkdir(parents=True, exist_ok=True)
        for name, load in photos.items():
            img = Image.fromarray(load())
            write_atomic(out / cls / f"{name}.png", lambda t, im=img: im.save(t, format="PNG"))
        counts[cls] = len(photos)
    return counts
