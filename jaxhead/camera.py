"""Camera utilities of PanoHead/EG3D: 25-value cameras ``[cam2world (16) | intrinsics (9)]``.

World y is up; cameras look at a pivot from ``radius``; yaw ``h`` and polar angle ``v`` follow
``LookAtPoseSampler`` (``h = v = pi/2`` looks from +z). Intrinsics are normalized by the image
size (principal point 0.5). Everything is jnp and differentiable / vmappable.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

DEFAULT_FOV_DEG = 18.837
DEFAULT_RADIUS = 2.7
# Indices whose sign flips for the yaw-mirrored camera (x -> -x reflection of the pose).
MIRROR_INDICES = (1, 2, 3, 4, 8)


def fov_to_intrinsics(fov_degrees: float = DEFAULT_FOV_DEG) -> jax.Array:
    """Normalized 3x3 intrinsics; reproduces the reference constants (3.14159, 1.414)."""
    focal = 1.0 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414)
    return jnp.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], jnp.float32)


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def create_cam2world(forward: jax.Array, origin: jax.Array) -> jax.Array:
    """Forward vectors / origins ``[N, 3]`` -> cam2world ``[N, 4, 4]`` (y up, no roll)."""
    forward = _normalize(forward)
    up = jnp.broadcast_to(jnp.array([0.0, 1.0, 0.0], forward.dtype), forward.shape)
    right = -_normalize(jnp.cross(up, forward))
    up = _normalize(jnp.cross(forward, right))
    rot = jnp.stack([right, up, forward], axis=-1)  # columns
    n = forward.shape[0]
    m = jnp.tile(jnp.eye(4, dtype=forward.dtype), (n, 1, 1))
    m = m.at[:, :3, :3].set(rot)
    return m.at[:, :3, 3].set(origin)


def lookat_cam2world(h: jax.Array, v: jax.Array, lookat: jax.Array | None = None,
                     radius: float | jax.Array = DEFAULT_RADIUS) -> jax.Array:
    """``LookAtPoseSampler.sample`` without noise: angles ``[N]`` (radians) -> ``[N, 4, 4]``.

    As in the PanoHead code, the origin is on the sphere around the world origin and only the
    viewing direction points at ``lookat`` (the two agree for the default pivot [0, 0, 0]).
    """
    h = jnp.atleast_1d(jnp.asarray(h, jnp.float32))
    v = jnp.atleast_1d(jnp.asarray(v, jnp.float32))
    h, v = jnp.broadcast_arrays(h, v)
    lookat = jnp.zeros(3, jnp.float32) if lookat is None else jnp.asarray(lookat, jnp.float32)
    v = jnp.clip(v, 1e-5, math.pi - 1e-5)
    phi = jnp.arccos(1 - 2 * (v / math.pi))
    origin = radius * jnp.stack([jnp.sin(phi) * jnp.cos(math.pi - h), jnp.cos(phi),
                                 jnp.sin(phi) * jnp.sin(math.pi - h)], axis=-1)
    return create_cam2world(lookat - origin, origin)


def make_camera(yaw: jax.Array, pitch: jax.Array, *, radius: float = DEFAULT_RADIUS,
                fov_deg: float = DEFAULT_FOV_DEG, lookat: jax.Array | None = None) -> jax.Array:
    """Yaw / pitch offsets from the frontal view (radians, ``[N]``) -> cameras ``[N, 25]``.

    ``yaw = pitch = 0`` is the frontal view (``h = v = pi/2``); positive yaw moves the camera
    toward +x, positive pitch moves it down, ``yaw = pi`` looks at the back of the head.
    """
    return _make_camera(yaw, pitch, radius, lookat, fov_deg=fov_deg)


@functools.partial(jax.jit, static_argnames="fov_deg")
def _make_camera(yaw: jax.Array, pitch: jax.Array, radius: float | jax.Array,
                 lookat: jax.Array | None, *, fov_deg: float) -> jax.Array:
    """:func:`make_camera`, one compiled call (eager, its ~40 primitives would each compile on
    first use: seconds per new batch size)."""
    c2w = lookat_cam2world(math.pi / 2 + jnp.asarray(yaw), math.pi / 2 + jnp.asarray(pitch),
                           lookat, radius)
    k = jnp.broadcast_to(fov_to_intrinsics(fov_deg).reshape(1, 9), (c2w.shape[0], 9))
    return jnp.concatenate([c2w.reshape(-1, 16), k], axis=1)


def mirror_camera(c: jax.Array) -> jax.Array:
    """The yaw-mirrored camera (reflection x -> -x): negate ``c[:, [1, 2, 3, 4, 8]]``.

    Rendering the mirrored camera gives (for a symmetric head) the width-flipped image.
    """
    sign = jnp.ones(c.shape[-1], c.dtype).at[jnp.array(MIRROR_INDICES)].set(-1)
    return c * sign


def orbit(num: int, *, pitch: float = 0.0, yaw_range: float = 2 * math.pi,
          radius: float = DEFAULT_RADIUS, fov_deg: float = DEFAULT_FOV_DEG) -> jax.Array:
    """``num`` cameras evenly spaced in yaw over ``yaw_range`` (default a full turn): [num, 25]."""
    yaw = jnp.arange(num, dtype=jnp.float32) * (yaw_range / num)
    return make_camera(yaw, jnp.full((num,), pitch, jnp.float32), radius=radius, fov_deg=fov_deg)
