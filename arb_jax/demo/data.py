"""Procedural labelled images for the embedded demo ViT, from photographs scikit-image ships.

No pretrained DINO weights can be downloaded offline, so the project trains its own small ViT
(`arb_jax.demo.train`) on synthetic composites: an object cut from one of the photographs that
ship inside the scikit-image wheel (no download needed) is pasted at a random position, scale,
rotation and flip, with colour jitter, onto a background crop of another image (textures and
photos that contain none of the objects). Only the object tells the class, so a classifier must
look at it, and its last-layer CLS attention should concentrate on it.

Classes (`CLASSES`; cut-out regions are fixed pixel boxes of the scikit-image photographs):

- ``cat``: the cat's face in `skimage.data.chelsea`, elliptical cut-out;
- ``cup``: the espresso cup and saucer in `skimage.data.coffee`, elliptical cut-out;
- ``rocket``: the launcher in `skimage.data.rocket`, segmented from the sky by its red channel;
- ``astronaut``: the astronaut's head in `skimage.data.astronaut`, elliptical cut-out;
- ``coin``: any one of the coins of `skimage.data.coins` (disc cut-outs), tinted bronze to silver;
- ``horse``: the silhouette `skimage.data.horse` filled with a random colour times a texture;
- ``logo``: the scikit-image logo disc `skimage.data.logo`.

Backgrounds (`BACKGROUNDS`): ``brick``, ``grass``, ``gravel``, ``camera``, ``moon``, ``page``,
``text``, ``cell``, ``clock`` (grey, colourised with a random tint) and ``hubble_deep_field``,
``immunohistochemistry``, ``retina``, ``stereo_motorcycle`` (colour), randomly cropped and
colour-jittered.

The generator is pure numpy + Pillow and deterministic given the seed (``numpy.random.
default_rng(seed)``); about 1,000 images of 64 px per second on one CPU core.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from PIL import Image

from arb_jax.checks import as_int

__all__ = [
    "CLASSES",
    "BACKGROUNDS",
    "RECIPE",
    "DemoData",
    "composite",
    "cutout",
    "make_dataset",
    "patch_coverage",
]

CLASSES: tuple[str, ...] = ("cat", "cup", "rocket", "astronaut", "coin", "horse", "logo")
BACKGROUNDS: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "moon",
    "page",
    "text",
    "cell",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)

# Sampling ranges (documented in the trained model's JSON record).
_SCALE = (0.35, 0.95)  # longest side of the pasted object, as a fraction of the image side
_ASPECT = (0.85, 1.18)  # width stretch of the object
_ROTATE = 15.0  # degrees, uniform in [-_ROTATE, _ROTATE]
_BG_CROP = (0.3, 1.0)  # background crop side, as a fraction of the source's shorter side
_SPRITE_MAX = 160  # sprites are stored with this longest side (px)
_BG_MAX = 256  # backgrounds are stored with this shorter side at most (px)

RECIPE: dict = {
    "generator": "arb_jax.demo_data.make_dataset",
    "classes": list(CLASSES),
    "backgrounds": list(BACKGROUNDS),
    "object_scale": list(_SCALE),
    "object_aspect": list(_ASPECT),
    "object_rotation_deg": _ROTATE,
    "horizontal_flip": 0.5,
    "background_crop": list(_BG_CROP),
    "source": "photographs shipped in the scikit-image wheel (skimage.data), no download",
}


class DemoData(NamedTuple):
    """A batch of composites.

    images: (N, S, S, 3) uint8 RGB; labels: (N,) int32 index into `CLASSES`;
    masks: (N, S, S) bool, True on the pixels of the pasted object.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


# --------------------------------------------------------------------------- sources


def _load(name: str) -> np.ndarray:
    import skimage.data

    out = getattr(skimage.data, name)()
    return out[0] if isinstance(out, tuple) else out


def _ellipse(h: int, w: int, shrink: float = 0.98) -> np.ndarray:
    """Boolean (h, w) ellipse inscribed in the box, radii scaled by ``shrink``."""
    yy, xx = np.mgrid[:h, :w]
    ry, rx = shrink * h / 2, shrink * w / 2
    return ((yy + 0.5 - h / 2) / ry) ** 2 + ((xx + 0.5 - w / 2) / rx) ** 2 <= 1.0


def _rgba(rgb: np.ndarray, mask: np.ndarray) -> Image.Image:
    """RGBA Pillow image from uint8 (h, w, 3) and a bool mask, shrunk to `_SPRITE_MAX`."""
    im = Image.fromarray(np.dstack([rgb, mask.astype(np.uint8) * 255]), "RGBA")
    factor = _SPRITE_MAX / max(im.size)
    if factor < 1:
        im = im.resize(
            (max(1, round(im.width * factor)), max(1, round(im.height * factor))),
            Image.Resampling.LANCZOS,
        )
    return im


def _coin_sprites() -> list[Image.Image]:
    from scipy import ndimage

    gray = _load("coins")
    fg = ndimage.binary_opening(gray > 107, iterations=2)
    labels, n = ndimage.label(fg)
    sprites = []
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h < 36 or w < 36 or not 0.85 <= h / w <= 1.18:
            continue  # debris, or coins merged with their neighbours or the border
        crop = gray[sl]
        sprites.append(_rgba(np.dstack([crop] * 3), _ellipse(h, w, 1.0)))
    return sprites


def _rocket_sprite() -> Image.Image:
    from scipy import ndimage

    rgb = _load("rocket")[115:385, 295:350]
    mask = ndimage.binary_opening(rgb[..., 0] > 70)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return _rgba(rgb, labels == 1 + int(np.argmax(sizes)))


@functools.lru_cache(maxsize=1)
def _sprites() -> dict[str, list[Image.Image]]:
    """Class name -> list of RGBA cut-outs (the horse's RGB is a placeholder, filled later)."""
    chelsea = _load("chelsea")[10:310, 50:400]
    coffee = _load("coffee")[60:390, 78:478]
    head = _load("astronaut")[7:183, 153:297]
    logo = _load("logo")[5:495, 5:495, :3]
    horse = ~_load("horse")
    return {
        "cat": [_rgba(chelsea, _ellipse(*chelsea.shape[:2]))],
        "cup": [_rgba(coffee, _ellipse(*coffee.shape[:2]))],
        "rocket": [_rocket_sprite()],
        "astronaut": [_rgba(head, _ellipse(*head.shape[:2]))],
        "coin": _coin_sprites(),
        "horse": [_rgba(np.zeros((*horse.shape, 3), np.uint8), horse)],
        "logo": [_rgba(logo, _ellipse(*logo.shape[:2], 1.0))],
    }


@functools.lru_cache(maxsize=1)
def _backgrounds() -> list[np.ndarray]:
    """Background sources as float32 (h, w, 3) in [0, 1] (grey ones have 1 channel)."""
    out = []
    for name in BACKGROUNDS:
        im = Image.fromarray(_load(name))
        factor = _BG_MAX / min(im.size)
        if factor < 1:
            im = im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS)
        arr = np.asarray(im, np.float32) / 255.0
        out.append(arr[..., None] if arr.ndim == 2 else arr[..., :3])
    return out


@functools.lru_cache(maxsize=1)
def _textures() -> list[np.ndarray]:
    """Grey float32 textures in [0, 1] that fill the horse silhouette."""
    return [b[..., 0] for b in _backgrounds()[:3]]


# --------------------------------------------------------------------------- sampling


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (h, w[, c]) in [0, 1] -> (size[1], size[0][, c]) by bilinear interpolation."""
    if arr.ndim == 3:
        return np.stack([_resize(arr[..., c], size) for c in range(arr.shape[-1])], -1)
    return np.asarray(Image.fromarray(arr, "F").resize(size, Image.Resampling.BILINEAR))


def _random_crop(
    rng: np.random.Generator, src: np.ndarray, frac: tuple[float, float], size: int
) -> np.ndarray:
    h, w = src.shape[:2]
    side = max(8, int(rng.uniform(*frac) * min(h, w)))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return _resize(src[y : y + side, x : x + side], (size, size))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    sources = _backgrounds()
    src = sources[rng.integers(len(sources))]
    bg = _random_crop(rng, src, _BG_CROP, size)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    if bg.shape[-1] == 1:  # colourise a grey texture: a random tint between two colours
        lo, hi = rng.uniform(0, 0.5, 3), rng.uniform(0.5, 1, 3)
        bg = lo + bg * (hi - lo)
    gain = rng.uniform(0.6, 1.3) * rng.uniform(0.8, 1.2, 3)
    contrast = rng.uniform(0.6, 1.3)
    mean = bg.mean()
    return np.clip((bg - mean) * contrast + mean * gain, 0, 1).astype(np.float32)


def cutout(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A jittered cut-out: RGB float32 (h, w, 3) in [0, 1] and alpha float32 (h, w)."""
    options = _sprites()[CLASSES[label]]
    sprite = options[rng.integers(len(options))]
    longest = rng.uniform(*_SCALE) * size
    aspect = rng.uniform(*_ASPECT)
    w0, h0 = sprite.size
    factor = longest / max(w0 * aspect, h0)
    w, h = max(2, round(w0 * aspect * factor)), max(2, round(h0 * factor))
    im = sprite.resize((w, h), Image.Resampling.BILINEAR)
    im = im.rotate(rng.uniform(-_ROTATE, _ROTATE), Image.Resampling.BILINEAR, expand=True)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if max(im.size) > size:  # rotation grew it past the image: shrink to fit
        f = size / max(im.size)
        im = im.resize((max(2, int(im.width * f)), max(2, int(im.height * f))), Image.Resampling.BILINEAR)
    arr = np.asarray(im, np.float32) / 255.0
    rgb, alpha = arr[..., :3], arr[..., 3]
    name = CLASSES[label]
    if name == "horse":
        textures = _textures()
        tex = _random_crop(rng, textures[rng.integers(len(textures))], (0.2, 0.6), max(alpha.shape))[
            : alpha.shape[0], : alpha.shape[1]
        ]
        rgb = rng.uniform(0.05, 1.0, 3) * (0.55 + 0.45 * tex[..., None])
    elif name == "coin":
        rgb = rgb * rng.uniform(0.75, 1.0, 3)  # silver to bronze
    grey = rgb.mean(-1, keepdims=True)
    rgb = grey + (rgb - grey) * rng.uniform(0.7, 1.3)  # saturation
    rgb = (rgb - 0.5) * rng.uniform(0.8, 1.2) + 0.5  # contrast
    rgb = rgb * rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)  # brightness, colour
    return np.clip(rgb, 0, 1).astype(np.float32), alpha


def composite(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One training image: a `cutout` of class ``label`` pasted on a random texture.

    Returns
    -------
    tuple of numpy.ndarray
        The image, (size, size, 3) uint8 RGB, and the object's mask, (size, size) bool.
    """
    bg = _background(rng, size)
    rgb, alpha = cutout(rng, label, size)
    h, w = alpha.shape
    y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    a = alpha[..., None]
    region = bg[y : y + h, x : x + w]
    bg[y : y + h, x : x + w] = region * (1 - a) + rgb * a
    mask = np.zeros((size, size), bool)
    mask[y : y + h, x : x + w] = alpha > 0.5
    return np.round(bg * 255).astype(np.uint8), mask


def make_dataset(n: int, *, image_size: int = 64, seed: int = 0) -> DemoData:
    """Generate ``n`` labelled composites, deterministically from ``seed``.

    Parameters
    ----------
    n : int
        number of images (>= 1).
    image_size : int, default 64
        side S of the square images in pixels (>= 16).
    seed : int, default 0
        seed of `numpy.random.default_rng`; the same seed gives the same images.

    Returns
    -------
    DemoData
        `DemoData`: images (n, S, S, 3) uint8 RGB, labels (n,) int32 (balanced: label i % K
        shuffled), masks (n, S, S) bool on the object's pixels (alpha > 0.5).
    """
    n = as_int(n, "n", 1)
    image_size = as_int(image_size, "image_size", 16)
    seed = as_int(seed, "seed", 0)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int32)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    masks = np.empty((n, image_size, image_size), bool)
    for i, label in enumerate(labels):
        images[i], masks[i] = composite(rng, int(label), image_size)
    return DemoData(images, labels, masks)


def patch_coverage(masks: np.ndarray, patch: int) -> np.ndarray:
    """Fraction of each ``patch`` x ``patch`` cell covered by the mask.

    Parameters
    ----------
    masks : np.ndarray
        (N, H, W) bool or {0, 1}, H and W multiples of ``patch``.
    patch : int
        patch side p in pixels.

    Returns
    -------
    np.ndarray
        (N, H/p, W/p) float32 in [0, 1].
    """
    patch = as_int(patch, "patch", 1)
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    n, h, w = masks.shape
    if h % patch or w % patch:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the patch size {patch}")
    cells = masks.astype(np.float32).reshape(n, h // patch, patch, w // patch, patch)
    return cells.mean(axis=(2, 4))
