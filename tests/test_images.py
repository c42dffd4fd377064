"""``arb_jax.io.images``: reading, resizing, cropping and normalising real photos (``skimage.data``).

References are plain numpy (normalisation, crops, palette look-up, alpha compositing) on the
uint8 pixels scikit-image ships; the JPEG decode is compared with the source at a stated PSNR.
"""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from skimage import data

from arb_jax.io import images
from arb_jax.io.images import ImageError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _ref_normalize(u8: np.ndarray) -> np.ndarray:
    """float64 numpy reference of /255 and ImageNet normalisation."""
    return (u8.astype(np.float64) / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos written as JPEG / PNG / grayscale PNG / RGBA PNG / palette PNG."""
    d = tmp_path_factory.mktemp("photos")
    chelsea, coffee, camera = data.chelsea(), data.coffee(), data.camera()
    Image.fromarray(chelsea).save(d / "chelsea.jpg", quality=95)
    Image.fromarray(coffee).save(d / "coffee.png")
    Image.fromarray(camera).save(d / "camera_gray.png")
    alpha = np.tile(np.linspace(0, 255, coffee.shape[1]).round().astype(np.uint8), (coffee.shape[0], 1))
    Image.fromarray(np.dstack([coffee, alpha])).save(d / "coffee_rgba.png")
    Image.fromarray(np.dstack([coffee, np.full(alpha.shape, 255, np.uint8)])).save(d / "coffee_opaque.png")
    pal = Image.fromarray(chelsea).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.save(d / "chelsea_pal.png")
    (d / "notes.txt").write_text("not an image")
    return SimpleNamespace(dir=d, chelsea=chelsea, coffee=coffee, camera=camera, alpha=alpha, pal=pal)


# ----------------------------------------------------------------------------- read_image


def test_read_png_exact(photos):
    img, note = images.read_image(photos.dir / "coffee.png")
    assert note == ""
    assert img.dtype == np.uint8 and img.shape == (400, 600, 3)
    np.testing.assert_array_equal(img, photos.coffee)


def test_read_jpeg_close_to_source(photos):
    img, note = images.read_image(str(photos.dir / "chelsea.jpg"))
    assert note == ""
    assert img.dtype == np.uint8 and img.shape == photos.chelsea.shape
    mse = np.mean((img.astype(np.float64) - photos.chelsea) ** 2)
    psnr = 10 * np.log10(255.0**2 / mse)
    assert psnr > 35.0, psnr  # quality-95 JPEG of a photo


def test_read_grayscale_to_rgb_with_note(photos):
    img, note = images.read_image(photos.dir / "camera_gray.png")
    assert img.shape == (512, 512, 3) and note == "L → RGB"
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], photos.camera)


def test_read_rgba_composited_over_white(photos):
    opaque, _ = images.read_image(photos.dir / "coffee_opaque.png")
    np.testing.assert_array_equal(opaque, photos.coffee)
    img, note = images.read_image(photos.dir / "coffee_rgba.png")
    assert note == "RGBA with transparency composited over white → RGB"
    a = photos.alpha[..., None] / 255.0
    ref = photos.coffee * a + 255.0 * (1 - a)
    assert np.abs(img - ref).max() <= 1.0  # Pillow rounds in integer arithmetic
    np.testing.assert_array_equal(img[:, -1], photos.coffee[:, -1])  # alpha 255 at the right
    assert (img[:, 0] == 255).all()  # alpha 0 at the left: white


def test_read_palette_matches_lookup(photos):
    img, note = images.read_image(photos.dir / "chelsea_pal.png")
    assert note == "P → RGB"
    lut = np.array(photos.pal.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(img, lut[np.asarray(photos.pal)])


def test_read_16bit_and_exif_orientation(tmp_path):
    cam = data.camera()
    Image.fromarray(cam.astype(np.uint16) * 257).save(tmp_path / "cam16.png")
    img, note = images.read_image(tmp_path / "cam16.png")
    np.testing.assert_array_equal(img[..., 1], cam)
    assert note == "I;16 gray → 8-bit RGB"

    rocket = data.rocket()[:40, :60]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rocket).save(tmp_path / "rot.png", exif=exif)
    np.testing.assert_array_equal(images.read_image(tmp_path / "rot.png")[0], np.rot90(rocket, -1))


def _write(path, payload: bytes):
    path.write_bytes(payload)
    return path


def test_read_errors_name_the_path(photos, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(photos.chelsea).save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(photos.coffee).save(buf, "PNG")
    png = buf.getvalue()
    cases = {
        tmp_path / "missing.jpg": "image file not found",
        _write(tmp_path / "corrupt.jpg", jpg[:600] + b"\0" * 4000 + jpg[4600:]): "corrupt",
        _write(tmp_path / "text.jpg", b"hello, this is text\n" * 5): "not a recognised image",
        _write(tmp_path / "trunc.png", png[: len(png) // 2]): "truncated",
        _write(tmp_path / "trunc.jpg", jpg[: len(jpg) // 3]): "truncated",
        _write(tmp_path / "empty.png", b""): "empty file",
        tmp_path: "got a directory",
    }
    for path, words in cases.items():
        with pytest.raises(ImageError) as ei:
            images.read_image(path)
        assert words in str(ei.value) and str(path) in str(ei.value), (path, str(ei.value))
        assert isinstance(ei.value, ValueError)


# ----------------------------------------------------------------------------- prepare


def test_prepare_short_side_and_patch_crop(photos):
    x = images.prepare(photos.chelsea, 64, 8)  # 300x451 → 64x96.2 → 64x96
    assert x.dtype == np.float32 and x.shape == (64, 96, 3)
    y = images.prepare(photos.chelsea, 70, 14)  # → 70x105 → crop 70x98
    assert y.shape == (70, 98, 3)
    tall = images.prepare(np.ascontiguousarray(photos.chelsea.transpose(1, 0, 2)), 64, 8)
    assert tall.shape == (96, 64, 3)
    sq = images.prepare(photos.chelsea, (61, 45), 8)  # exact (H, W), then crop 56x40
    assert sq.shape == (56, 40, 3)
    # ranges: normalised values of uint8 pixels lie within [(0-mean)/std, (1-mean)/std]
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (x >= lo - 1e-6).all() and (x <= hi + 1e-6).all()


def test_prepare_centre_crop_matches_numpy(photos):
    img = photos.coffee[100:137, 200:245]  # 37x45, no resize
    for size in (None, (37, 45)):
        x = images.prepare(np.ascontiguousarray(img), size, 8)
        assert x.shape == (32, 40, 3)
        np.testing.assert_allclose(x, _ref_normalize(img[2:34, 2:42]), rtol=0, atol=2e-6)


def test_prepare_resize_properties():
    const = np.full((50, 70, 3), (12, 130, 250), np.uint8)
    x = images.prepare(const, 24, 8)
    assert x.shape == (24, 32, 3)
    np.testing.assert_allclose(x, np.broadcast_to(_ref_normalize(const[0, 0]), x.shape), atol=2e-6)
    # Bicubic reproduces a linear ramp: downscaling 2x samples it at output pixel centres.
    ramp = np.tile(np.arange(128) * 2, (16, 1))  # pixel value = 2·x, 0..254
    u8 = np.repeat(ramp[..., None], 3, axis=-1).astype(np.uint8)
    out = images.denormalize(images.prepare(u8, (8, 64), 8), clip=False)[..., 0] * 255
    centres = (np.arange(64) + 0.5) * 2 - 0.5  # input x of each output pixel centre
    interior = slice(4, 60)  # away from the borders, where Pillow renormalises the kernel
    # 2·centre = 4j + 1 is an integer, so Pillow's rounding to uint8 loses nothing: exact up to
    # the float32 normalise/denormalise round trip.
    assert np.abs(out[:, interior] - 2 * centres[interior]).max() <= 1e-4


def test_prepare_errors(photos):
    with pytest.raises(ImageError, match="smaller than one 8x8 patch"):
        images.prepare(np.zeros((5, 40, 3), np.uint8), None, 8)
    with pytest.raises(ImageError, match=r"resized to 4x6 is smaller than one 14x14 patch"):
        images.prepare(photos.chelsea, 4, 14)
    with pytest.raises(TypeError, match="uint8"):
        images.prepare(photos.chelsea.astype(np.float32), 64, 8)
    with pytest.raises(ImageError, match=r"\(H, W, 3\)"):
        images.prepare(photos.camera, 64, 8)
    with pytest.raises(ValueError, match="patch must be >= 1, got 0"):
        images.prepare(photos.chelsea, 64, 0)
    with pytest.raises(ValueError, match="size must be >= 1, got -3"):
        images.prepare(photos.chelsea, -3, 8)
    with pytest.raises(TypeError, match="size must be an integer, got float 64.0"):
        images.prepare(photos.chelsea, 64.0, 8)


# ----------------------------------------------------------------------------- normalise


def test_normalize_round_trip(photos):
    u8 = photos.chelsea
    x = images.normalize(u8.astype(np.float64) / 255)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, _ref_normalize(u8), rtol=0, atol=2e-6)
    np.testing.assert_allclose(images.normalize(u8), x, atol=1e-6)  # uint8 accepted
    back = images.denormalize(x)
    np.testing.assert_allclose(back, u8 / 255.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.rint(back * 255).astype(np.uint8), u8)
    wild = np.array([[-5.0, 0.0, 5.0]])
    assert images.denormalize(wild).min() >= 0 and images.denormalize(wild).max() <= 1
    np.testing.assert_allclose(images.denormalize(wild, clip=False), wild * STD + MEAN, atol=1e-6)
    with pytest.raises(ImageError, match="trailing RGB axis"):
        images.normalize(np.zeros((4, 4)))
    with pytest.raises(TypeError, match="dtype int64"):
        images.normalize(np.zeros((4, 4, 3), np.int64))


# ----------------------------------------------------------------------------- paths, batches


def test_expand_paths(photos, tmp_path):
    d = photos.dir
    listed = images.expand_paths([str(d)])
    assert listed == sorted(listed) and d / "notes.txt" not in listed
    assert {p.name for p in listed} == {
        "chelsea.jpg",
        "coffee.png",
        "camera_gray.png",
        "coffee_rgba.png",
        "coffee_opaque.png",
        "chelsea_pal.png",
    }
    assert images.expand_paths(str(d / "coffee*.png")) == [
        d / "coffee.png",
        d / "coffee_opaque.png",
        d / "coffee_rgba.png",
    ]
    both = images.expand_paths([d / "coffee.png", str(d / "c*.png"), d / "chelsea.jpg"])
    assert both[0] == d / "coffee.png" and len(both) == len(set(both)) == 6
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    Image.fromarray(photos.coffee[:16, :16]).save(tmp_path / "sub" / "deep" / "a.PNG")
    assert images.expand_paths(str(tmp_path / "**" / "*.PNG")) == [tmp_path / "sub" / "deep" / "a.PNG"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(ImageError, match=f"no image files .* in folder {empty}"):
        images.expand_paths([empty])
    with pytest.raises(ImageError, match=f"no such file or folder: {tmp_path / 'nope'}"):
        images.expand_paths([tmp_path / "nope"])
    with pytest.raises(ImageError, match="no image file matches"):
        images.expand_paths([str(tmp_path / "*.jpg")])
    with pytest.raises(ImageError, match="no image paths given"):
        images.expand_paths([])


def test_unreadable_folder(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_iterdir = type(locked).iterdir

    def deny(self):
        if self == locked:  # chmod 0 does not stop root, so simulate what the OS would say
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(type(locked), "iterdir", deny)
    with pytest.raises(ImageError, match=f"cannot read folder {locked}: Permission denied"):
        images.expand_paths([locked])


def test_load_images_patch_and_bundle(photos):
    batch = images.load_images([photos.dir], 8, size=48)
    assert batch.shape == (6, 48, 48, 3) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    bundle = SimpleNamespace(image_size=(48, 64), config=SimpleNamespace(patch=16))
    b2 = images.load_images([photos.dir / "coffee.png", photos.dir / "chelsea.jpg"], bundle)
    assert b2.shape == (2, 48, 64, 3)
    # one image at its own size: exactly normalize(pixels)
    one = images.load_images(photos.dir / "coffee.png", 8, size=(400, 600))
    np.testing.assert_allclose(one[0], _ref_normalize(photos.coffee), atol=2e-6)
    crop = images.load_images(photos.dir / "coffee.png", 14, size=(400, 600))  # 392x588
    np.testing.assert_allclose(crop[0], _ref_normalize(photos.coffee[4:396, 6:594]), atol=2e-6)


def test_load_images_errors(photos):
    with pytest.raises(ValueError, match="size is required"):
        images.load_images([photos.dir], 8)
    bundle = SimpleNamespace(image_size=(48, 64), config=SimpleNamespace(patch=16))
    with pytest.raises(ValueError, match=r"disagrees with the model's image_size \(48, 64\)"):
        images.load_images([photos.dir], bundle, size=32)
    with pytest.raises(TypeError, match="ViT bundle"):
        images.load_images([photos.dir], "vits8")
    with pytest.raises(ImageError, match="notes.txt"):
        images.load_images([photos.dir / "notes.txt"], 8, size=32)


def test_sample_images():
    s = images.sample_images()
    assert {"astronaut", "chelsea", "coffee", "rocket", "camera"} <= set(s)
    for name, img in s.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3, name
    np.testing.assert_array_equal(s["astronaut"], data.astronaut())
    cam = s["camera"]
    assert (cam[..., 0] == cam[..., 1]).all() and (cam[..., 1] == cam[..., 2]).all()
    np.testing.assert_array_equal(cam[..., 0], data.camera())


def test_prefetch_keeps_order_and_loads_ahead():
    started: list[int] = []
    release = threading.Event()

    def load(i):
        started.append(i)
        if i >= 2:
            release.wait(5)
        return i * 10

    gen = images.prefetch(range(7), 2, load, depth=2, workers=2)
    first = next(gen)  # while the caller holds batch 0, batches 1 and 2 are already submitted
    assert first == [(0, 0), (1, 10)]
    deadline = time.monotonic() + 5
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(started) >= {0, 1, 2, 3}
    release.set()
    rest = list(gen)
    assert rest == [[(2, 20), (3, 30)], [(4, 40), (5, 50)], [(6, 60)]]
    with pytest.raises(ValueError, match="batch and depth"):
        next(images.prefetch(range(3), 0, load))


def test_try_prepare_returns_the_reason_instead_of_raising():
    rgb = data.chelsea()
    x, reason = images.try_prepare(lambda: rgb, 48, 8)
    assert reason == "" and x.shape == (48, 72, 3)
    np.testing.assert_array_equal(x, images.prepare(rgb, 48, 8))

    def corrupt():
        raise ImageError("photo.jpg: not a recognised image")

    assert images.try_prepare(corrupt, 48, 8) == (None, "photo.jpg: not a recognised image")
    x, reason = images.try_prepare(lambda: rgb, 4, 8)  # smaller than one patch
    assert x is None and "too small" in reason
    x, reason = images.try_prepare(lambda: rgb[..., :2], 48, 8)
    assert x is None and "3" in reason
