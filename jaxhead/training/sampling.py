"""Per-step random draws of the distillation step: identities, cameras, diffusion steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxhead import camera

Array = jax.Array


def sample_step_index(key: Array, shape: tuple[int, ...], t_range: tuple[float, float],
                      num_steps: int, step_range: tuple[int, ...] = ()) -> Array:
    """DDIM step index (0 = the noisiest of ``num_steps`` steps).

    With ``step_range = (lo, hi)``: uniform over the integers ``lo..hi`` *inclusive* (the
    official ``random.randint(lo, hi)``; ``(35, 49)`` is its command-line default for both
    paths, ``(15, 40)`` the grid default of its ``train()``). Otherwise
    ``floor(u * num_steps)`` with ``u ~ U(t_range)``: the paper's ``(0.70, 0.96)`` of 50 steps
    draws 35..47 and ``(0.30, 0.80)`` draws 15..39, each index with equal probability.
    """
    if step_range:
        lo, hi = int(step_range[0]), int(step_range[1])
        return jax.random.randint(key, shape, lo, hi + 1, dtype=jnp.int32)
    u = jax.random.uniform(key, shape, minval=t_range[0], maxval=t_range[1])
    return jnp.clip(jnp.floor(u * num_steps).astype(jnp.int32), 0, num_steps - 1)


def sample_cameras(key: Array, shape: tuple[int, ...], yaw_range, pitch_range,
                   radius: float) -> Array:
    """Cameras ``shape + (25,)`` with yaw, pitch uniform in the ranges (radians) at
    ``radius`` around the pivot."""
    ky, kp = jax.random.split(key)
    yaw = jax.random.uniform(ky, shape, minval=yaw_range[0], maxval=yaw_range[1])
    pitch = jax.random.uniform(kp, shape, minval=pitch_range[0], maxval=pitch_range[1])
    c = camera.make_camera(yaw.reshape(-1), pitch.reshape(-1), radius=radius)
    return c.reshape(shape + (25,))


def conditioning_ws(G, config, g_params, z: Array) -> Array:
    """z ``[B, z_dim]`` -> ws with the configured conditioning camera and truncation."""
    c_cond = camera.make_camera(jnp.full((z.shape[0],), config.cond_yaw),
                                jnp.full((z.shape[0],), config.cond_pitch),
                                radius=G.camera_radius)
    return G.mapping(g_params, z, c_cond, config.truncation_psi, config.truncation_cutoff)
