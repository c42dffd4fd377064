"""Position-embedding interpolation against torch.nn.functional.interpolate as DINO calls it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate as torch_interpolate

from arb_jax.models.posembed import bicubic_matrix, interpolate_pos_embed

# (M, h, w): upsampling (ViT-S/8 at 488: 28 -> 61), downsampling, non-square, one side equal to M.
CASES = [(28, 61, 61), (14, 61, 61), (37, 16, 40), (14, 3, 9), (4, 7, 5), (5, 5, 8), (3, 40, 2), (37, 37, 20)]


def _torch_dino(pos: np.ndarray, h: int, w: int) -> np.ndarray:
    """DINO's interpolate_pos_encoding, in torch (dtype of ``pos``)."""
    M, D = int(round((pos.shape[1] - 1) ** 0.5)), pos.shape[2]
    grid = torch.from_numpy(pos[:, 1:]).reshape(1, M, M, D).permute(0, 3, 1, 2)
    grid = torch_interpolate(
        grid, scale_factor=((h + 0.1) / M, (w + 0.1) / M), mode="bicubic", align_corners=False
    )
    assert grid.shape[-2:] == (h, w)
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, D).numpy()
    return np.concatenate([pos[:, :1], grid], axis=1)


def _pos(M: int, D: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 1 + M * M, D))


@pytest.mark.parametrize("M,h,w", CASES)
def test_float64_equals_torch(M, h, w):
    # In float64 PyTorch computes everything (coordinates included) in double: same algorithm,
    # so agreement is to rounding (measured <= 3e-15).
    pos = _pos(M)
    ours = interpolate_pos_embed(pos, (h, w))
    assert ours.dtype == np.float64 and ours.shape == (1, 1 + h * w, pos.shape[2])
    np.testing.assert_allclose(ours, _torch_dino(pos, h, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("M,h,w", CASES)
def test_float32_equals_torch(M, h, w):
    # The brief's 1e-6 holds for |x| <~ 0.5. PyTorch's float32 kernel is itself inexact: its
    # cubic weights lose up to ~ulp(6) = 4.8e-7 to cancellation (probed with one-hot inputs),
    # so its output may differ from the exact value by ~5e-6 * max|x|; measured here
    # <= 1.9e-6 * max|x| at unit-scale inputs. Ours (host float64, rounded) and the jitted float32
    # path are both within 5e-6 * max|x| of torch and within 4e-7 * max|x| of each other.
    pos = _pos(M).astype(np.float32)
    ref = _torch_dino(pos, h, w)
    host = interpolate_pos_embed(pos, (h, w))
    dev = np.asarray(jax.jit(interpolate_pos_embed, static_argnums=1)(jnp.asarray(pos), (h, w)))
    scale = np.abs(pos).max()
    assert host.dtype == np.float32 and dev.dtype == np.float32
    np.testing.assert_allclose(host, ref, rtol=0, atol=5e-6 * scale)
    np.testing.assert_allclose(dev, ref, rtol=0, atol=5e-6 * scale)
    np.testing.assert_allclose(dev, host, rtol=0, atol=4e-7 * scale)


def test_dino_scale_inputs_within_1e6_of_torch_float32():
    # Position embeddings of a trained ViT are O(0.1) (DINO initialises them N(0, 0.02²)).
    pos = (0.1 * _pos(28, D=16, seed=3)).astype(np.float32)
    ref = _torch_dino(pos, 61, 61)
    np.testing.assert_allclose(interpolate_pos_embed(pos, (61, 61)), ref, rtol=0, atol=1e-6)


def test_native_grid_returns_input_unchanged():
    pos = _pos(4)
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    # One side at M is still resampled (DINO's +0.1 makes the scale 4.1/4), as torch does.
    np.testing.assert_allclose(interpolate_pos_embed(pos, (4, 6)), _torch_dino(pos, 4, 6), atol=1e-12)


def test_cls_position_kept_and_constants_preserved():
    pos = np.full((1, 1 + 36, 3), 0.7)
    pos[0, 0] = [1.0, 2.0, 3.0]
    out = interpolate_pos_embed(pos, (9, 4))
    np.testing.assert_array_equal(out[0, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(out[0, 1:], 0.7, atol=1e-14)


@pytest.mark.parametrize("n_in,n_out", [(4, 7), (37, 16), (14, 61), (3, 1)])
def test_bicubic_matrix_rows_are_a_partition_of_unity(n_in, n_out):
    m = bicubic_matrix(n_in, n_out, (n_out + 0.1) / n_in)
    assert m.shape == (n_out, n_in) and m.dtype == np.float64
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    assert not m.flags.writeable  # cached: must not be mutated by callers
    assert bicubic_matrix(n_in, n_out, (n_out + 0.1) / n_in) is m


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"shape \(1, 1 \+ M\*M, D\)"):
        interpolate_pos_embed(np.zeros((17, 8)), (2, 2))
    with pytest.raises(ValueError, match="18 tokens"):
        interpolate_pos_embed(np.zeros((1, 18, 8)), (2, 2))
    with pytest.raises(ValueError, match="two positive ints"):
        interpolate_pos_embed(np.zeros((1, 17, 8)), (0, 3))
    with pytest.raises(ValueError, match="two positive ints"):
        interpolate_pos_embed(np.zeros((1, 17, 8)), (2.0, 3))
    with pytest.raises(TypeError, match="float"):
        interpolate_pos_embed(np.zeros((1, 17, 8), np.int32), (3, 3))
    with pytest.raises(ValueError, match="maps 4 to 7, not 6"):
        bicubic_matrix(4, 6, 7.1 / 4)


def _torch_size(pos: np.ndarray, h: int, w: int) -> np.ndarray:
    """HF ``Dinov2Model.interpolate_pos_encoding``'s resampling: ``size=(h, w)``, in torch."""
    M, D = int(round((pos.shape[1] - 1) ** 0.5)), pos.shape[2]
    grid = torch.from_numpy(pos[:, 1:]).reshape(1, M, M, D).permute(0, 3, 1, 2)
    grid = torch_interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, D).numpy()
    return np.concatenate([pos[:, :1], grid], axis=1)


@pytest.mark.parametrize("M,h,w", CASES)
def test_size_recipe_equals_torch_size(M, h, w):
    """The "size" recipe (HF Dinov2Model, ONNX Resize with sizes) equals torch's interpolate with
    size=: float64 to rounding; float32 within the bound of test_float32_equals_torch (torch's own
    float32 kernel is inexact by up to ~5e-6·max|x|); and it differs from DINO's scale-factor
    recipe wherever that one samples elsewhere."""
    pos = _pos(M)
    np.testing.assert_allclose(
        interpolate_pos_embed(pos, (h, w), "size"), _torch_size(pos, h, w), rtol=0, atol=1e-12
    )
    pos32 = pos.astype(np.float32)
    scale = np.abs(pos32).max()
    ref = _torch_size(pos32, h, w)
    host = interpolate_pos_embed(pos32, (h, w), "size")
    dev = np.asarray(
        jax.jit(interpolate_pos_embed, static_argnums=(1, 2))(jnp.asarray(pos32), (h, w), "size")
    )
    np.testing.assert_allclose(host, ref, rtol=0, atol=5e-6 * scale)
    np.testing.assert_allclose(dev, ref, rtol=0, atol=5e-6 * scale)
    np.testing.assert_allclose(dev, host, rtol=0, atol=4e-7 * scale)
    if (h, w) != (M, M):
        assert (
            np.abs(
                interpolate_pos_embed(pos, (h, w), "size") - interpolate_pos_embed(pos, (h, w), "dino")
            ).max()
            > 1e-3
        )


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown position-embedding recipe 'bilinear'"):
        interpolate_pos_embed(_pos(4), (3, 3), "bilinear")
