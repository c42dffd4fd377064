"""A ready-to-run ViT: configuration + parameters for one image size + jitted entry points.

``build_vit`` checks a canonical parameter tree (or makes a random-init fixture), resamples the
position embeddings once to the bundle's image size, and returns a frozen ``ViT``. Its
``apply(params, images)`` is the pure model function (usable inside other ``jit``/``vmap``);
``cls_attention``, ``features`` and (with a linear head) ``logits`` are jitted conveniences on the
bundle's own parameters. ``with_head`` attaches a linear head ``{kernel (D, K), bias (K,)}`` (the
one representation of a classifier, as ``weights_convert`` reads it) and ``stored_params`` gives
the tree back on the stored position grid, ready to save.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, cast

import flax
import jax
import jax.numpy as jnp
import numpy as np

from arb_jax.models import xla_options
from arb_jax.models.config import ViTConfig, get_config
from arb_jax.models.posembed import interpolate_pos_embed
from arb_jax.models.vit import VisionTransformer, check_images

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, eq=False)
class ViT:
    """A ViT with parameters for one input size.

    Attributes
    ----------
    config
        the architecture.
    params
        canonical parameter tree (float32), ``pos_embed`` already resampled to
        ``image_size``: (1, 1 + h·w, D).
    image_size
        (H, W) in pixels, multiples of the patch.
    dtype
        compute dtype, "float32" (matmuls at HIGHEST precision) or "bfloat16".
    meta
        provenance (source, sha256, ...); ``meta["random_init"]`` is True for fixtures;
        a fine-tuned model also has ``meta["classes"]`` (the K class names, in logit order).
    pos_embed_stored
        ``pos_embed`` as given to ``build_vit``, before resampling (numpy
        float32); ``stored_params`` puts it back.
    """

    config: ViTConfig
    params: dict = dataclasses.field(repr=False)
    image_size: tuple[int, int]
    dtype: str = "float32"
    meta: dict = dataclasses.field(default_factory=dict)
    pos_embed_stored: Any = dataclasses.field(default=None, repr=False)

    @functools.cached_property
    def module(self) -> VisionTransformer:
        """The linen module (compute dtype and precision set from ``dtype``)."""
        precision = "highest" if self.dtype == "float32" else None
        return VisionTransformer(self.config, _DTYPES[self.dtype], precision)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) = (H/p, W/p)."""
        return (self.image_size[0] // self.config.patch, self.image_size[1] // self.config.patch)

    @property
    def patch(self) -> int:
        return self.config.patch

    @property
    def n_heads(self) -> int:
        return self.config.heads

    def apply(self, params: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
        """The model as a pure function; see ``VisionTransformer`` for the output dict.

        Parameters
        ----------
        params : Mapping[str, Any]
            a canonical parameter tree (e.g. ``self.params``).
        images : jax.Array
            (N, H, W, 3) float, ImageNet-normalised, NHWC.
        """
        return cast(dict[str, jax.Array], self.module.apply({"params": params}, images))

    @functools.cached_property
    def _attn_fn(self):
        return xla_options.jit(lambda params, images: self.apply(params, images)["attn"])

    @functools.cached_property
    def _features_fn(self):
        return xla_options.jit(lambda params, images: self.apply(params, images)["features"])

    def cls_attention(self, images: jax.Array) -> jax.Array:
        """Last-block CLS attention, (N, H, W, 3) → (N, heads, h, w) float32 (jitted)."""
        self._check(images)
        return self._attn_fn(self.params, images)

    def features(self, images: jax.Array) -> jax.Array:
        """CLS features after the final LayerNorm, (N, H, W, 3) → (N, D) float32 (jitted)."""
        self._check(images)
        return self._features_fn(self.params, images)

    @functools.cached_property
    def _logits_fn(self):
        return xla_options.jit(lambda params, images: self.apply(params, images)["logits"])

    @property
    def head(self) -> dict | None:
        """The linear head ``{"kernel": (D, K), "bias": (K,)}``, or None without one."""
        return self.params.get("head") if self.config.n_classes else None

    def logits(self, images: jax.Array) -> jax.Array:
        """Class scores ``features(images) @ kernel + bias``, (N, H, W, 3) → (N, K) float32 (jitted).

        Raises
        ------
        ValueError
            the model has no linear head (``config.n_classes == 0``).
        """
        if not self.config.n_classes:
            raise ValueError(
                "this ViT has no classification head (config.n_classes == 0); "
                "attach one with with_head() or load a fine-tuned model"
            )
        self._check(images)
        return self._logits_fn(self.params, images)

    def with_head(self, kernel: Any, bias: Any, *, meta: Mapping[str, Any] | None = None) -> ViT:
        """The same backbone with the linear head ``kernel`` (D, K), ``bias`` (K,) (replacing any).

        ``meta`` entries are added to (override) the bundle's ``meta``.
        """
        kernel = np.asarray(kernel, dtype=np.float32)
        bias = np.asarray(bias, dtype=np.float32)
        D = self.config.dim
        if kernel.ndim != 2 or kernel.shape[0] != D or kernel.shape[1] < 1:
            raise ValueError(f"head kernel must have shape (D={D}, K>=1), got {kernel.shape}")
        if bias.shape != (kernel.shape[1],):
            raise ValueError(f"head bias must have shape ({kernel.shape[1]},), got {bias.shape}")
        config = dataclasses.replace(self.config, n_classes=int(kernel.shape[1]))
        params = {**self.params, "head": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
        return dataclasses.replace(self, config=config, params=params, meta={**self.meta, **(meta or {})})

    def stored_params(self) -> dict:
        """The parameter tree as numpy float32 with ``pos_embed`` on the stored M×M grid
        (M = ``config.pos_grid``), i.e. the canonical tree to save (``weights_convert``).

        Raises
        ------
        ValueError
            the bundle was built from a ``pos_embed`` already on another grid.
        """
        out = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), self.params)
        out["pos_embed"] = self._stored_pos_embed()
        return out

    def _stored_pos_embed(self) -> np.ndarray:
        """``pos_embed`` on the stored M×M grid, (1, 1 + M², D) numpy float32."""
        M = self.config.pos_grid
        pos = self.pos_embed_stored
        if pos is None and self.params["pos_embed"].shape[1] == 1 + M * M:
            pos = self.params["pos_embed"]
        if pos is None or np.shape(pos)[1] != 1 + M * M:
            raise ValueError(
                f"the stored pos_embed is not on the config's {M}x{M} grid: this bundle was built "
                "from position embeddings already resampled to another grid"
            )
        return np.asarray(pos, dtype=np.float32)

    def at_size(self, image_size: int | tuple[int, int]) -> ViT:
        """The same model for inputs of ``image_size`` (position embeddings resampled from the
        stored grid, as ``load_vit(..., image_size=)`` would, without reading the checkpoint again)."""
        size = _image_size(image_size, self.config)
        if size == tuple(self.image_size):
            return self
        pos = _pos_embed_for(self._stored_pos_embed(), self.config, size)
        return dataclasses.replace(
            self, params={**self.params, "pos_embed": jnp.asarray(pos)}, image_size=size
        )

    def _check(self, images) -> None:
        check_images(images, self.config.patch, (self.image_size[0], self.image_size[1]))


def _image_size(image_size, config: ViTConfig) -> tuple[int, int]:
    if image_size is None:
        return config.native_size
    if isinstance(image_size, int | np.integer):
        image_size = (image_size, image_size)
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in size):
        raise ValueError(f"image_size must be an int or (H, W) of positive ints, got {image_size!r}")
    if size[0] % config.patch or size[1] % config.patch:
        raise ValueError(f"image_size {size} is not a multiple of the patch size {config.patch}")
    return int(size[0]), int(size[1])


def _checked_params(params: Mapping, expected: Mapping, grid: tuple[int, int]) -> dict:
    """Canonical tree → dict of float32 numpy arrays, checking keys and shapes."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping (canonical tree), got {type(params).__name__}")
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(cast(Any, params)), sep="/")
    want = flax.traverse_util.flatten_dict(flax.core.unfreeze(cast(Any, expected)), sep="/")
    missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
    if missing or extra:
        raise ValueError(f"params do not match the config: missing {missing}, unexpected {extra}")
    out = {}
    for key, value in flat.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"params[{key!r}] must be float, got dtype {value.dtype}")
        shape, target = value.shape, want[key].shape
        if key == "pos_embed" and shape[:1] + shape[2:] == target[:1] + target[2:]:
            if shape[1] not in (target[1], 1 + grid[0] * grid[1]):
                raise ValueError(
                    f"params['pos_embed'] has {shape[1]} tokens; expected {target[1]} (stored "
                    f"grid) or {1 + grid[0] * grid[1]} (this image size's grid {grid})"
                )
        elif shape != target:
            raise ValueError(f"params[{key!r}] has shape {shape}, expected {target}")
        out[key] = value.astype(np.float32)
    return flax.traverse_util.unflatten_dict(out, sep="/")


def random_params(config: ViTConfig, seed: int = 0) -> dict:
    """A random-init canonical tree (float32 numpy) for ``config``: a test FIXTURE, not a model.

    Kernels N(0, 1/fan_in), tokens and position embeddings N(0, 0.02²), biases 0, LayerNorm
    scales and LayerScale gammas 1. Drawn on the host (numpy), deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    shapes = flax.traverse_util.flatten_dict(_param_shapes(config), sep="/")
    out = {}
    for key in sorted(shapes):
        shape, leaf = shapes[key].shape, key.rsplit("/", 1)[-1]
        if leaf == "kernel":
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        elif leaf == "bias":
            value = np.zeros(shape)
        elif leaf in ("scale", "gamma"):
            value = np.ones(shape)
        else:  # cls_token, reg_tokens, pos_embed
            value = 0.02 * rng.standard_normal(shape)
        out[key] = value.astype(np.float32)
    return flax.traverse_util.unflatten_dict(out, sep="/")


def _param_shapes(config: ViTConfig) -> dict:
    """Canonical tree of ``jax.ShapeDtypeStruct`` for ``config`` (stored M×M position grid)."""
    dummy = jax.ShapeDtypeStruct((1, *config.native_size, 3), jnp.float32)
    return jax.eval_shape(VisionTransformer(config).init, jax.random.key(0), dummy)["params"]


def build_vit(
    config: ViTConfig | str,
    params: Mapping[str, Any] | None = None,
    image_size: int | tuple[int, int] | None = None,
    dtype: str = "float32",
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> ViT:
    """Bundle a configuration and parameters into a ``ViT`` for one image size.

    Parameters
    ----------
    config : ViTConfig | str
        a ``ViTConfig`` or a registered name (``arb_jax.models.CONFIGS``).
    params : Mapping[str, Any] | None, default None
        canonical parameter tree; None makes a random-init FIXTURE from ``seed``
        (``random_params``; not a pretrained model, ``meta["random_init"]`` is then True).
    image_size : int | tuple[int, int] | None, default None
        (H, W) or a side, multiples of the patch; default the native
        ``pos_grid·patch`` square.
    dtype : str, default 'float32'
        "float32" or "bfloat16" compute.
    seed : int, default 0
        PRNG seed for the random init.
    meta : Mapping[str, Any] | None, default None
        provenance to record (source, sha256, ...).

    Returns
    -------
    ViT
        A ``ViT`` whose ``pos_embed`` is resampled (DINO's bicubic, once) to ``image_size``.
    """
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, ViTConfig):
        raise TypeError(f"config must be a ViTConfig or a name, got {type(config).__name__}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    size = _image_size(image_size, config)
    grid = (size[0] // config.patch, size[1] // config.patch)
    if params is None:
        params = random_params(config, seed)
        meta = {"source": "random_init", "seed": seed, **(meta or {}), "random_init": True}
    else:
        params = _checked_params(params, _param_shapes(config), grid)
        meta = {"random_init": False, **(meta or {})}
    stored = params["pos_embed"]
    params = {**params, "pos_embed": _pos_embed_for(stored, config, size)}
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return ViT(config, cast(dict, params), size, dtype, dict(meta), pos_embed_stored=stored)


def _pos_embed_for(pos: np.ndarray, config: ViTConfig, size: tuple[int, int]) -> Any:
    """``pos`` (1, 1 + tokens, D) for an input of ``size`` pixels: as it is when it already has
    that grid, else resampled (``config.pos_interp``'s bicubic; numpy in: float64 on the host)."""
    grid = (size[0] // config.patch, size[1] // config.patch)
    if pos.shape[1] == 1 + grid[0] * grid[1]:
        return pos
    return interpolate_pos_embed(cast(Any, pos), grid, config.pos_interp)
