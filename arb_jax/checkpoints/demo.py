"""The shipped demo ViT's weights: ``arb_jax/assets/demo_vit.{msgpack,json}``, checked on load.

The weights are made by ``arb train-demo`` (`arb_jax.demo.train`); this module only reads them,
so loading a model never imports the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from arb_jax.io.files import sha256_file
from arb_jax.models import ViTConfig

__all__ = ["ASSETS", "NOT_DINO", "RECORD_FILE", "WEIGHTS_FILE", "DemoWeightsError", "load_demo_params"]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
WEIGHTS_FILE = "demo_vit.msgpack"
RECORD_FILE = "demo_vit.json"
NOT_DINO = (
    "These are weights trained by this project (arb_jax.train_demo) on synthetic composites of "
    "scikit-image photographs (arb_jax.demo_data), NOT DINO: a small demo model whose last-layer "
    "CLS attention concentrates on the pasted object."
)


class DemoWeightsError(ValueError):
    """The demo weights are missing, or do not match their JSON record."""


def load_demo_params(directory: str | Path | None = None) -> tuple[ViTConfig, dict, dict]:
    """Load the demo ViT's weights after checking them against their record.

    Parameters
    ----------
    directory : str | Path | None, default None
        folder holding ``demo_vit.msgpack`` and ``demo_vit.json``; default the
        shipped ``arb_jax/assets``.

    Returns
    -------
    tuple[ViTConfig, dict, dict]
        (config, params, meta): the `ViTConfig`, the canonical parameter tree (nested dict of
        float32 numpy arrays, ``pos_embed`` on the stored grid) and the JSON record (plus
        ``"source"``, the weights path).

    Raises
    ------
    DemoWeightsError
        a file is missing, or the weights' sha256 differs from the record's.
    """
    folder = ASSETS if directory is None else Path(directory)
    weights, meta_path = folder / WEIGHTS_FILE, folder / RECORD_FILE
    for path in (weights, meta_path):
        if not path.is_file():
            raise DemoWeightsError(
                f"demo weights not found: {path} is missing (run 'arb train-demo --out DIR' to make them)"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DemoWeightsError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise DemoWeightsError(f"{meta_path} has no 'config' entry: not a demo weights record")
    digest = sha256_file(weights)
    if digest != meta.get("sha256"):
        raise DemoWeightsError(
            f"{weights} has sha256 {digest}, but {meta_path} records {meta.get('sha256')}: "
            "the weights are corrupt or do not belong to this record"
        )
    config = ViTConfig.from_dict(meta["config"])
    state = flax.serialization.msgpack_restore(weights.read_bytes())
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), state)
    return config, params, {**meta, "source": str(weights)}
