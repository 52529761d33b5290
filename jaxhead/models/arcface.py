"""ArcFace-style face-recognition embeddings for the identity metrics: insightface's iresnet50
(``w600k_r50.onnx``, :mod:`jaxhead.models.iresnet`) and the IR-SE50 of pSp / e4e / PTI
(``model_ir_se50.pth``, :mod:`jaxhead.models.ir_se`), behind one loader.

    params = load_arcface("checkpoints/arcface_r50")   # python -m convert_weights.arcface
    emb = embed(params, faces)   # [N, 112, 112, 3] aligned RGB in [-1, 1] -> raw [N, 512]

``ArcFaceParams`` is a pytree whose leaves are the weights; the configuration (which network,
its sizes) is static data, so ``jax.jit(embed)(params, faces)`` and ``jax.vmap`` work. Both
networks take the same input: 112x112 faces aligned to the ArcFace 5-point template
(:mod:`jaxhead.metrics.identity` makes them), RGB, ``2 x - 1`` of [0, 1] pixel values. The
embedding is raw; the metrics normalise it.
"""

from __future__ import annotations

import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.models import ir_se, iresnet
from jaxhead.models.arcface_config import ARCHS, MODEL_NAME, ArcFaceConfig

Array = jax.Array
INPUT_SIZE = 112
CONVERT_HINT = ("python -m convert_weights.arcface SRC DST (SRC: insightface's w600k_r50.onnx "
                "from the buffalo_l pack, an arcface_torch backbone .pth, or pSp/e4e's "
                "model_ir_se50.pth)")


IRESNET50 = ArcFaceConfig("iresnet")
IR_SE50 = ArcFaceConfig("ir_se")
_NETS = {"iresnet": iresnet, "ir_se": ir_se}


@flax.struct.dataclass
class ArcFaceParams:
    """Converted weights (nested dict of arrays) with their configuration."""

    config: ArcFaceConfig = flax.struct.field(pytree_node=False)
    weights: dict[str, Any]


def param_shapes(config: ArcFaceConfig) -> dict[str, Any]:
    """Expected shapes of every weight of ``config``'s network."""
    return _NETS[config.arch].param_shapes(config)


def embed(params: ArcFaceParams, faces: Array) -> Array:
    """Raw face embeddings, ``[N, embedding_dim]`` float32. ``faces``: ``[N, 112, 112, 3]``
    ArcFace-aligned RGB in [-1, 1]."""
    faces = jnp.asarray(faces)
    if faces.ndim != 4 or faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"ArcFace expects [N, {INPUT_SIZE}, {INPUT_SIZE}, 3] aligned faces, "
                         f"got shape {faces.shape}")
    cfg = params.config
    return _NETS[cfg.arch].forward(params.weights, cfg, faces.astype(jnp.float32))


def random_params(config: ArcFaceConfig, seed: int = 0) -> ArcFaceParams:
    """Random weights of the right shapes (He-normal convs and fc, BatchNorms near identity,
    PReLU slopes 0.25), drawn on the host (no per-leaf compiles): for benchmarks and smoke
    tests; the embeddings mean nothing."""
    rng = np.random.default_rng(seed)

    def leaf(parent: dict, name: str, shape: tuple) -> np.ndarray:
        if "running_var" in parent:  # a BatchNorm
            if name in ("weight", "running_var"):
                return rng.uniform(0.5, 1.5, shape)
            return 0.05 * rng.standard_normal(shape)
        if len(shape) == 1:  # a PReLU slope (the only 1-D "weight" outside BN) or a bias
            return np.full(shape, 0.25) if name == "weight" else 0.05 * rng.standard_normal(
                shape)
        return rng.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[:-1]))

    def init(tree: dict) -> dict:
        return {n: init(s) if isinstance(s, dict) else
                jnp.asarray(leaf(tree, n, s), jnp.float32) for n, s in tree.items()}

    return ArcFaceParams(config=config, weights=init(param_shapes(config)))


def load_arcface(directory: str | os.PathLike) -> ArcFaceParams:
    """Converted ArcFace weights from ``directory`` (``params.safetensors`` + ``config.json``
    written by ``python -m convert_weights.arcface``), float32. Raises ``MissingWeightsError``
    naming the convert command if the files are not there, ``DataError`` if they are not
    converted ArcFace weights."""
    from jaxhead.errors import DataError, MissingWeightsError
    from jaxhead.utils.params_io import check_tree, load_params

    try:
        weights, config = load_params(directory, what="ArcFace", convert_hint=CONVERT_HINT)
    except FileNotFoundError as e:
        raise MissingWeightsError(str(e)) from None
    if config.get("model") != MODEL_NAME:
        raise DataError(f"{directory}: not converted ArcFace weights (config.json model="
                        f"{config.get('model')!r}, expected {MODEL_NAME!r})")
    try:
        cfg = ArcFaceConfig.from_json(config)
        check_tree(weights, param_shapes(cfg), what=f"ArcFace params in {directory}")
    except (ValueError, TypeError) as e:
        raise DataError(str(e)) from None
    return ArcFaceParams(config=cfg, weights=jax.tree.map(jnp.asarray, weights))


__all__ = ["ARCHS", "INPUT_SIZE", "IRESNET50", "IR_SE50", "ArcFaceConfig", "ArcFaceParams",
           "embed", "load_arcface", "param_shapes", "random_params"]
