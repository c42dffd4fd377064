"""Noise injection of the simulation study (arb_jax.study.simulate) against numpy / scipy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, stats

from arb_jax.study import simulate


def _image(seed: int = 0, shape=(40, 56, 3)) -> np.ndarray:
    """Float32 (H, W, 3) test image with distinct per-channel means and stds."""
    rng = np.random.default_rng(seed)
    scale = np.array([0.5, 1.0, 2.0], np.float32)
    shift = np.array([-1.0, 0.0, 1.5], np.float32)
    return (rng.standard_normal(shape).astype(np.float32) * scale + shift).astype(np.float32)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


# --------------------------------------------------------------------------- square noise


def test_square_roi_is_a_full_square_inside_the_image():
    image = _image()
    keys = jax.random.split(jax.random.key(0), 64)
    for key in keys[:16]:
        noisy, roi = simulate.square_noise(key, image, 13)
        roi = np.asarray(roi)
        assert roi.dtype == bool and roi.shape == image.shape[:2]
        assert roi.sum() == 13 * 13
        r0, r1, c0, c1 = _bbox(roi)
        assert (r1 - r0, c1 - c0) == (13, 13)  # area and bbox agree: a solid square
        assert r0 >= 0 and r1 <= image.shape[0] and c0 >= 0 and c1 <= image.shape[1]
        noisy = np.asarray(noisy)
        np.testing.assert_array_equal(noisy[~roi], image[~roi])  # outside untouched
        assert np.all(noisy[roi] != image[roi])


def test_square_positions_are_uniform_over_all_valid_corners():
    image = _image(shape=(12, 14, 3))
    size = 8  # rows 0..4, cols 0..6
    keys = jax.random.split(jax.random.key(1), 3500)
    rois = np.asarray(jax.vmap(lambda k: simulate.square_noise(k, image, size)[1])(keys))
    rows = rois.any(axis=2).argmax(axis=1)
    cols = rois.any(axis=1).argmax(axis=1)
    row_counts = np.bincount(rows, minlength=5)
    col_counts = np.bincount(cols, minlength=7)
    assert row_counts.size == 5 and col_counts.size == 7  # never outside the valid range
    assert stats.chisquare(row_counts).pvalue > 1e-3
    assert stats.chisquare(col_counts).pvalue > 1e-3
    # joint: 35 corners
    joint = np.bincount(rows * 7 + cols, minlength=35)
    assert joint.size == 35 and stats.chisquare(joint).pvalue > 1e-3


def test_square_noise_is_mean_plus_ddof1_std_times_normal():
    image = _image(1)
    key = jax.random.key(7)
    noisy, roi = simulate.square_noise(key, image, 20)
    r0, r1, c0, c1 = _bbox(np.asarray(roi))
    # documented key use: split(key)[1] draws the (size, size, C) standard normals
    eps = np.asarray(jax.random.normal(jax.random.split(key)[1], (20, 20, 3)), np.float64)
    mean = image.astype(np.float64).mean(axis=(0, 1))
    std = image.astype(np.float64).std(axis=(0, 1), ddof=1)
    np.testing.assert_allclose(np.asarray(noisy)[r0:r1, c0:c1], mean + std * eps, rtol=1e-5, atol=1e-5)


def test_square_noise_moments_per_channel():
    image = _image(2, shape=(64, 64, 3))
    noisy, roi = simulate.square_noise(jax.random.key(3), image, 60)
    pixels = np.asarray(noisy)[np.asarray(roi)].astype(np.float64)  # (3600, 3)
    mean = image.mean(axis=(0, 1), dtype=np.float64)
    std = image.std(axis=(0, 1), ddof=1, dtype=np.float64)
    n = pixels.shape[0]
    for c in range(3):
        # 5 standard errors on the mean and the std
        assert abs(pixels[:, c].mean() - mean[c]) < 5 * std[c] / np.sqrt(n)
        assert abs(pixels[:, c].std(ddof=1) - std[c]) < 5 * std[c] / np.sqrt(2 * n)
        assert stats.kstest((pixels[:, c] - mean[c]) / std[c], "norm").pvalue > 1e-3
    # channels independent
    assert np.all(np.abs(np.corrcoef(pixels.T)[np.triu_indices(3, 1)]) < 5 / np.sqrt(n))


def test_square_fixed_position_and_same_key_reproduces_random_draw():
    image = _image()
    noisy, roi = simulate.square_noise(jax.random.key(11), image, 9)
    r0, _, c0, _ = _bbox(np.asarray(roi))
    noisy_at, roi_at = simulate.square_noise(jax.random.key(11), image, 9, at=(int(r0), int(c0)))
    np.testing.assert_array_equal(np.asarray(roi_at), np.asarray(roi))
    np.testing.assert_array_equal(np.asarray(noisy_at), np.asarray(noisy))
    _, roi_corner = simulate.square_noise(jax.random.key(0), image, 9, at=(31, 47))
    assert _bbox(np.asarray(roi_corner)) == (31, 40, 47, 56)


def test_square_deterministic_and_key_dependent():
    image = _image()
    a = simulate.square_noise(jax.random.key(5), image, 10)
    b = simulate.square_noise(jax.random.key(5), image, 10)
    c = simulate.square_noise(jax.random.key(6), image, 10)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    # raw uint32 keys work too
    d = simulate.square_noise(jax.random.PRNGKey(5), image, 10)
    assert d[1].sum() == 100


def test_square_under_jit_and_vmap():
    image = jnp.asarray(_image())
    key = jax.random.key(2)
    eager = simulate.square_noise(key, image, 10)
    jitted = jax.jit(simulate.square_noise, static_argnames="size")(key, image, 10)
    np.testing.assert_array_equal(np.asarray(jitted[0]), np.asarray(eager[0]))
    np.testing.assert_array_equal(np.asarray(jitted[1]), np.asarray(eager[1]))
    # traced fixed position
    at_jit = jax.jit(lambda k, r, c: simulate.square_noise(k, image, 10, at=(r, c))[1])
    assert _bbox(np.asarray(at_jit(key, 3, 4))) == (3, 13, 4, 14)
    areas = jax.vmap(lambda k: simulate.square_noise(k, image, 10)[1].sum())(jax.random.split(key, 5))
    np.testing.assert_array_equal(np.asarray(areas), 100)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 41}, ValueError, "does not fit"),
        ({"size": 0}, ValueError, "size must be >= 1"),
        ({"size": 10.0}, TypeError, "size must be an integer"),
        ({"size": True}, TypeError, "bool"),
        ({"size": 10, "at": (31, 0)}, ValueError, "outside the image"),
        ({"size": 10, "at": (0, -1)}, ValueError, "outside the image"),
        ({"size": 10, "at": (0.5, 0)}, TypeError, "integer"),
        ({"size": 10, "at": (1, 2, 3)}, ValueError, "pair"),
    ],
)
def test_square_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate.square_noise(jax.random.key(0), _image(), **kwargs)


def test_square_bad_image_and_key():
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        simulate.square_noise(jax.random.key(0), np.zeros((8, 8), np.float32), 2)
    with pytest.raises(TypeError, match="float array"):
        simulate.square_noise(jax.random.key(0), np.zeros((8, 8, 3), np.int32), 2)
    with pytest.raises(ValueError, match="at least 2 pixel"):
        simulate.square_noise(jax.random.key(0), np.zeros((1, 1, 3), np.float32), 1)
    with pytest.raises(TypeError, match="key"):
        simulate.square_noise(np.arange(3), _image(), 2)
    with pytest.raises(ValueError, match="single PRNG key"):
        simulate.square_noise(jax.random.split(jax.random.key(0), 2), _image(), 2)


# --------------------------------------------------------------------------- diffuse noise


def test_smooth_field_matches_numpy_fft():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((48, 40)).astype(np.float32)
    c = 20.0
    fy = np.fft.fftfreq(48)[:, None]
    fx = np.fft.fftfreq(40)[None, :]
    ref = np.fft.ifft2(np.fft.fft2(white.astype(np.float64)) * np.exp(-(fx**2 + fy**2) * c**2)).real
    ref = (ref - ref.min()) / (ref - ref.min()).max()
    got = np.asarray(simulate.smooth_field(white, c))
    assert got.dtype == np.float32
    assert got.min() == 0.0 and got.max() == 1.0
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_smooth_field_is_a_periodic_gaussian_blur():
    """exp(-f^2 c^2) in Fourier space is a Gaussian of sigma c / (pi sqrt 2) px, wrapped."""
    rng = np.random.default_rng(1)
    white = rng.standard_normal((64, 64)).astype(np.float32)
    c = 20.0
    ref = ndimage.gaussian_filter(
        white.astype(np.float64), sigma=c / (np.pi * np.sqrt(2)), mode="wrap", truncate=6.0
    )
    ref = (ref - ref.min()) / (ref - ref.min()).max()
    np.testing.assert_allclose(np.asarray(simulate.smooth_field(white, c)), ref, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("size", [1, 7, 16, 24])
def test_diffuse_roi_has_exactly_size_squared_pixels(size):
    image = _image(3, shape=(24, 32, 3))
    noisy, roi = simulate.diffuse_noise(jax.random.key(size), image, size)
    roi = np.asarray(roi)
    assert roi.dtype == bool and roi.shape == (24, 32)
    assert roi.sum() == size * size
    np.testing.assert_array_equal(np.asarray(noisy)[~roi], image[~roi])


def test_diffuse_roi_is_the_top_of_the_smoothed_field_and_noise_is_per_channel():
    image = _image(4)
    key = jax.random.key(9)
    noisy, roi = simulate.diffuse_noise(key, image, 12)
    key_field, key_noise = jax.random.split(key)
    white = np.asarray(jax.random.normal(key_field, image.shape[:2]), np.float64)
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    field = np.fft.ifft2(np.fft.fft2(white) * np.exp(-(fx**2 + fy**2) * 400.0)).real
    threshold = np.sort(field.ravel())[-144]
    np.testing.assert_array_equal(np.asarray(roi), field >= threshold)
    eps = np.asarray(jax.random.normal(key_noise, image.shape), np.float64)
    expected = (
        image.mean(axis=(0, 1), dtype=np.float64) + image.std(axis=(0, 1), ddof=1, dtype=np.float64) * eps
    )
    roi = np.asarray(roi)
    np.testing.assert_allclose(np.asarray(noisy)[roi], expected[roi], rtol=1e-5, atol=1e-5)


def _neighbour_fraction(mask: np.ndarray) -> float:
    """Fraction of (right, down) neighbour pairs of ROI pixels that are both in the ROI."""
    right = mask[:, :-1] & mask[:, 1:]
    down = mask[:-1, :] & mask[1:, :]
    pairs = mask[:, :-1].sum() + mask[:-1, :].sum()
    return (right.sum() + down.sum()) / pairs


def test_diffuse_roi_is_clustered():
    image = _image(5, shape=(64, 64, 3))
    keys = jax.random.split(jax.random.key(4), 4)
    density = 16 * 16 / 64**2
    for key in keys:
        _, roi = simulate.diffuse_noise(key, image, 16)  # c = 20: sigma ~ 4.5 px
        roi = np.asarray(roi)
        assert _neighbour_fraction(roi) > 0.8
        assert ndimage.label(roi)[1] <= 15  # a few blobs, not 256 scattered pixels
        _, white = simulate.diffuse_noise(key, image, 16, cluster_scale=0.0)
        # no smoothing: a uniformly random set, neighbours in the ROI at the density
        assert _neighbour_fraction(np.asarray(white)) < density + 0.1
        assert ndimage.label(np.asarray(white))[1] > 100


@pytest.mark.slow
def test_diffuse_deterministic_jit_vmap():
    image = jnp.asarray(_image(6, shape=(32, 32, 3)))
    key = jax.random.key(1)
    a = simulate.diffuse_noise(key, image, 8)
    b = jax.jit(simulate.diffuse_noise, static_argnames="size")(key, image, 8)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    c = simulate.diffuse_noise(jax.random.key(2), image, 8)
    assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))
    areas = jax.vmap(lambda k: simulate.diffuse_noise(k, image, 8)[1].sum())(jax.random.split(key, 3))
    np.testing.assert_array_equal(np.asarray(areas), 64)


def test_diffuse_bad_arguments():
    image = _image(shape=(8, 8, 3))
    with pytest.raises(ValueError, match="exceeds"):
        simulate.diffuse_noise(jax.random.key(0), image, 9)
    with pytest.raises(ValueError, match="cluster_scale"):
        simulate.diffuse_noise(jax.random.key(0), image, 2, cluster_scale=-1.0)
    with pytest.raises(TypeError, match="size"):
        simulate.diffuse_noise(jax.random.key(0), image, 2.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        simulate.smooth_field(np.zeros((2, 3, 4), np.float32))


# --------------------------------------------------------------------------- ROI on patches, filter


def test_roi_patch_weights_counts_pixels_per_patch():
    rng = np.random.default_rng(2)
    mask = rng.random((24, 40)) < 0.3
    got = np.asarray(simulate.roi_patch_weights(mask, 8))
    assert got.shape == (3, 5) and got.dtype == np.float32
    for i in range(3):
        for j in range(5):
            assert got[i, j] == mask[8 * i : 8 * i + 8, 8 * j : 8 * j + 8].sum() / 64
    np.testing.assert_array_equal(np.asarray(simulate.roi_patch_weights(mask, 1)), mask)
    with pytest.raises(ValueError, match="multiple of patch"):
        simulate.roi_patch_weights(mask, 7)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        simulate.roi_patch_weights(mask[None], 8)


def test_mean_z_in_roi_equals_pixel_mean():
    rng = np.random.default_rng(3)
    for trial in range(5):
        p = 4
        z = rng.standard_normal((5, 7)).astype(np.float32)
        mask = np.zeros((20, 28), bool)
        r, c = rng.integers(0, 10), rng.integers(0, 15)
        mask[r : r + 9 + trial, c : c + 11] = True  # not aligned with the 4 px patches
        pixel_z = np.repeat(np.repeat(z, p, 0), p, 1)
        ref = pixel_z[mask].astype(np.float64).mean()
        weights = simulate.roi_patch_weights(mask, p)
        np.testing.assert_allclose(float(simulate.mean_z_in_roi(z, weights)), ref, rtol=1e-5, atol=1e-6)
    batched = simulate.mean_z_in_roi(np.stack([z, 2 * z]), weights)
    np.testing.assert_allclose(np.asarray(batched), [ref, 2 * ref], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="match"):
        simulate.mean_z_in_roi(z[:4], weights)


def test_passes_z_filter():
    mean_z = jnp.asarray([-1.0, -0.3, 1.0, 1.0001, -2.0, jnp.nan])
    np.testing.assert_array_equal(
        np.asarray(simulate.passes_z_filter(mean_z)), [True, True, True, False, False, False]
    )
    np.testing.assert_array_equal(
        np.asarray(simulate.passes_z_filter(mean_z, bound=2.0)), [True, True, True, True, True, False]
    )
    assert np.all(np.asarray(simulate.passes_z_filter(mean_z, bound=None)))
    assert bool(jax.jit(simulate.passes_z_filter)(0.5))
    with pytest.raises(ValueError, match="bound"):
        simulate.passes_z_filter(mean_z, bound=-1.0)
