"""Loading the converted 3DDFA_V2 bundle (``python -m convert_weights.tddfa``): FaceBoxes, the
MobileNet regressor, the 62-d parameter mean / std and the BFM keypoint rows, one directory
(``params.safetensors`` + ``config.json``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxhead.errors import DataError, MissingWeightsError
from jaxhead.face.bfm import EXP_DIM, NUM_LANDMARKS, SHAPE_DIM
from jaxhead.models import faceboxes, tddfa

MODEL_NAME = "tddfa_v2"
CONVERT_HINT = "python -m convert_weights.tddfa PATH/TO/3DDFA_V2 checkpoints/tddfa"


@dataclass(frozen=True)
class TDDFAWeights:
    """Converted 3DDFA_V2: ``faceboxes`` and ``mobilenet`` params (see their modules), ``bfm``
    {u [3N] (the whole mean shape, vertex-major x, y, z), u_base [204], w_shp_base [204, 40],
    w_exp_base [204, 10]}, ``param_mean`` / ``param_std`` [62], and the ``config`` written by
    the converter (arch, widen_factor, bfm_vertices N, sources)."""

    faceboxes: dict[str, Any]
    mobilenet: dict[str, Any]
    bfm: dict[str, Any]
    param_mean: jax.Array
    param_std: jax.Array
    config: dict[str, Any]


def param_shapes(widen_factor: float, n_vertices: int) -> dict[str, Any]:
    """Expected shapes of the whole converted bundle (``keypoints`` [204] int64 included) for
    a BFM of ``n_vertices`` vertices."""
    n = 3 * NUM_LANDMARKS
    return {"faceboxes": faceboxes.param_shapes(),
            "mobilenet": tddfa.param_shapes(widen_factor),
            "bfm": {"u": (3 * n_vertices,), "u_base": (n,), "w_shp_base": (n, SHAPE_DIM),
                    "w_exp_base": (n, EXP_DIM), "keypoints": (n,)},
            "param_mean": (tddfa.NUM_PARAMS,), "param_std": (tddfa.NUM_PARAMS,)}


def load_tddfa(directory: str | os.PathLike) -> TDDFAWeights:
    """The bundle in ``directory``. Raises :class:`MissingWeightsError` naming the convert command
    if it is not there, :class:`DataError` if it is not a converted 3DDFA_V2 bundle."""
    from jaxhead.utils.params_io import check_tree, load_params

    try:
        params, config = load_params(directory, what="3DDFA_V2", convert_hint=CONVERT_HINT)
    except FileNotFoundError as e:
        raise MissingWeightsError(str(e)) from None
    if config.get("model") != MODEL_NAME:
        raise DataError(f"{os.fspath(directory)}: not a converted 3DDFA_V2 bundle (config.json "
                        f"model={config.get('model')!r}, expected {MODEL_NAME!r})")
    wf = config.get("widen_factor")
    if not isinstance(wf, (int, float)) or wf <= 0:
        raise DataError(f"{os.fspath(directory)}: config.json widen_factor={wf!r} is not a "
                        "positive number")
    nv = config.get("bfm_vertices")
    if not isinstance(nv, int) or nv <= 0:
        raise DataError(f"{os.fspath(directory)}: config.json bfm_vertices={nv!r} is not a "
                        "positive integer")
    check_tree(params, param_shapes(float(wf), nv), what=f"3DDFA_V2 params in {directory}")
    to_jnp = lambda t: jax.tree.map(jnp.asarray, t)  # noqa: E731
    bfm = {k: jnp.asarray(v) for k, v in params["bfm"].items() if k != "keypoints"}
    return TDDFAWeights(to_jnp(params["faceboxes"]), to_jnp(params["mobilenet"]), bfm,
                        jnp.asarray(params["param_mean"]), jnp.asarray(params["param_std"]),
                        config)
