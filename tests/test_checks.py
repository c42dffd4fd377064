"""arb_jax.checks: the one wording of a bad count, used by every module that takes one."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from arb_jax.checks import as_int


def test_as_int_accepts_integers_and_refuses_the_rest():
    assert as_int(3, "n") == 3 and type(as_int(np.int64(3), "n")) is int
    assert as_int(0, "seed", 0) == 0
    assert as_int(None, "chunk", allow_none=True) is None
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        as_int(0, "n")
    with pytest.raises(ValueError, match="image_size must be >= 16, got 8"):
        as_int(8, "image_size", 16)
    with pytest.raises(TypeError, match="n must be an integer, got bool True"):
        as_int(True, "n")
    with pytest.raises(TypeError, match="n must be an integer, got float 2.5"):
        as_int(2.5, "n")
    with pytest.raises(TypeError, match="chunk must be an integer or None, got str"):
        as_int("4", "chunk", allow_none=True)
    with pytest.raises(TypeError, match="n must be an integer, got NoneType"):
        as_int(None, "n")
    with pytest.raises(TypeError, match="n must be a static Python int"):
        jax.jit(lambda n: as_int(n, "n"))(2)


def test_one_key_and_one_image():
    from arb_jax.checks import one_image, one_key

    typed, raw = jax.random.key(1), jax.random.PRNGKey(1)
    assert one_key(typed) is not None and one_key(np.asarray(raw)).shape == (2,)
    with pytest.raises(ValueError, match="single PRNG key"):
        one_key(jax.random.split(typed, 3))
    with pytest.raises(TypeError, match="PRNG key"):
        one_key(np.zeros(2, np.int32))
    with pytest.raises(TypeError, match="PRNG key"):
        one_key(7)
    img = np.zeros((4, 5, 3), np.float32)
    assert one_image(img).shape == (4, 5, 3)
    with pytest.raises(TypeError, match=r"array \(H, W, C\), got list"):
        one_image(img.tolist())
    with pytest.raises(ValueError, match=r"shape \(H, W, C\)"):
        one_image(img[None])
    with pytest.raises(TypeError, match="float array"):
        one_image(img.astype(np.uint8))
    with pytest.raises(ValueError, match="at least 2 pixel"):
        one_image(img[:1, :1], min_pixels=2)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        one_image(img[:0])
