"""The 68 sparse landmarks of 3DDFA_V2's BFM (``bfm/bfm.py`` ``BFMModel`` and
``TDDFA.recon_vers(dense_flag=False)``) from the 62 de-normalised parameters.

BFM arrays (converted by ``python -m convert_weights.tddfa``) from
``configs/bfm_noneck_v3.pkl``: the mean shape and its keypoint rows (``u[keypoints]``,
``w_shp[keypoints, :40]``, ``w_exp[keypoints, :10]``)::

    u [3N]  u_base [204]  w_shp_base [204, 40]  w_exp_base [204, 10]

Rows are vertex-major ``(x0, y0, z0, x1, ...)``; landmarks are in the 120x120 crop frame
(map them to the image with :func:`jaxhead.face.roi.crop_to_image`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

NUM_LANDMARKS = 68
POSE_DIM, SHAPE_DIM, EXP_DIM = 12, 40, 10


def split_params(param: Array) -> tuple[Array, Array, Array, Array]:
    """62 parameters [..., 62] -> ``(R [..., 3, 3], offset [..., 3, 1], alpha_shp [..., 40, 1],
    alpha_exp [..., 10, 1])``; R is the scaled rotation part of the affine camera ``P``."""
    p = jnp.asarray(param)
    cam = p[..., :POSE_DIM].reshape(*p.shape[:-1], 3, 4)
    shp = p[..., POSE_DIM:POSE_DIM + SHAPE_DIM][..., None]
    exp = p[..., POSE_DIM + SHAPE_DIM:][..., None]
    return cam[..., :3], cam[..., 3:], shp, exp


def landmarks(bfm: dict[str, Any], param: Array) -> Array:
    """62 parameters [..., 62] -> the 68 landmarks [..., 3, 68] in the crop frame:
    ``R @ (u + W_shp a_shp + W_exp a_exp) + offset`` on the keypoint rows."""
    r, offset, shp, exp = split_params(param)
    v = bfm["u_base"][:, None] + bfm["w_shp_base"] @ shp + bfm["w_exp_base"] @ exp
    pts = jnp.swapaxes(v[..., 0].reshape(*v.shape[:-2], -1, 3), -1, -2)  # [..., 3, 68]
    return r @ pts + offset


def mean_depth(bfm: dict[str, Any]) -> float:
    """Mean z of the BFM's mean shape over all its vertices, the object-centre offset
    PanoHead's recropping adds along z: ``u.reshape(3, -1, order="F")[2].mean()`` evaluated
    in numpy float32 exactly as the reference writes it (same summation, same bits)."""
    import numpy as np

    u = np.asarray(bfm["u"], np.float32).reshape(-1, 1)
    return float(u.reshape(3, -1, order="F")[2].mean())
