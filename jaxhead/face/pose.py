"""Head pose from 3DDFA_V2's affine camera (``utils/pose.py`` ``P2sRt``, ``matrix2angle``,
``calc_pose``). Batched jnp; angles in radians unless said otherwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

GIMBAL = 0.998  # |R[2, 0]| above this: the reference's gimbal-lock branches


def p2srt(cam: Array) -> tuple[Array, Array, Array]:
    """Affine camera ``P`` [..., 3, 4] -> ``(s [...], R [..., 3, 3], t3d [..., 3])``: s the mean
    norm of P's first two rows, R those rows normalised plus their cross product."""
    r1, r2 = cam[..., 0, :3], cam[..., 1, :3]
    n1 = jnp.linalg.norm(r1, axis=-1, keepdims=True)
    n2 = jnp.linalg.norm(r2, axis=-1, keepdims=True)
    s = (n1[..., 0] + n2[..., 0]) / 2.0
    r1, r2 = r1 / n1, r2 / n2
    return s, jnp.stack([r1, r2, jnp.cross(r1, r2)], axis=-2), cam[..., :, 3]


def matrix2angle(r: Array) -> Array:
    """Rotation [..., 3, 3] -> ``[..., 3]`` angles (x, y, z) = (yaw, pitch, roll) as the
    reference names them: ``x = asin(R20)``, ``y = atan2(R21, R22)``, ``z = atan2(R10, R00)``
    (each over ``cos x``); for ``|R20| > 0.998``, ``x = ±pi/2``, ``z = 0`` and ``y`` from
    ``R01``, ``R02``."""
    r20 = r[..., 2, 0]
    x = jnp.arcsin(jnp.clip(r20, -1.0, 1.0))
    c = jnp.cos(x)
    c = jnp.where(jnp.abs(r20) > GIMBAL, 1.0, c)
    y = jnp.arctan2(r[..., 2, 1] / c, r[..., 2, 2] / c)
    z = jnp.arctan2(r[..., 1, 0] / c, r[..., 0, 0] / c)
    hi, lo = r20 > GIMBAL, r20 < -GIMBAL
    x = jnp.where(hi, jnp.pi / 2, jnp.where(lo, -jnp.pi / 2, x))
    y = jnp.where(hi, jnp.arctan2(-r[..., 0, 1], -r[..., 0, 2]),
                  jnp.where(lo, jnp.arctan2(r[..., 0, 1], r[..., 0, 2]), y))
    z = jnp.where(hi | lo, 0.0, z)
    return jnp.stack([x, y, z], axis=-1)


def calc_pose(param: Array) -> tuple[Array, Array]:
    """62 parameters [..., 62] -> ``(P [..., 3, 4] = [R | t3d] without scale, angles [..., 3]
    in degrees (yaw, pitch, roll))``."""
    cam = jnp.asarray(param)[..., :12].reshape(*jnp.shape(param)[:-1], 3, 4)
    _, r, t3d = p2srt(cam)
    return jnp.concatenate([r, t3d[..., None]], -1), matrix2angle(r) * (180.0 / jnp.pi)
