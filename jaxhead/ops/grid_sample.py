"""Trilinear ``grid_sample`` (5-D, ``align_corners=False``, ``padding_mode='zeros'``) in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grid_sample_3d(volume: jax.Array, coords: jax.Array) -> jax.Array:
    """Sample a feature volume at normalized coordinates, as PyTorch's 5-D ``grid_sample``.

    Args:
      volume: ``[B, D, H, W, C]`` features.
      coords: ``[B, M, 3]`` points ``(x, y, z)`` in ``[-1, 1]``; x indexes W, y indexes H,
        z indexes D; ``align_corners=False`` (pixel centres at ``(i + 0.5) / size * 2 - 1``).
    Returns:
      ``[B, M, C]``; corners outside the volume contribute zero (``padding_mode='zeros'``).
    """
    return jax.vmap(_sample_one)(volume, coords)


def _sample_one(vol: jax.Array, xyz: jax.Array) -> jax.Array:
    d, h, w, c = vol.shape
    flat = vol.reshape(d * h * w, c)
    # Unnormalize (align_corners=False).
    ix = ((xyz[:, 0] + 1) * w - 1) * 0.5
    iy = ((xyz[:, 1] + 1) * h - 1) * 0.5
    iz = ((xyz[:, 2] + 1) * d - 1) * 0.5
    x0, y0, z0 = jnp.floor(ix), jnp.floor(iy), jnp.floor(iz)
    fx, fy, fz = ix - x0, iy - y0, iz - z0
    out = jnp.zeros((xyz.shape[0], c), vol.dtype)
    for dz, wz in ((0, 1 - fz), (1, fz)):
        zi = z0 + dz
        for dy, wy in ((0, 1 - fy), (1, fy)):
            yi = y0 + dy
            for dx, wx in ((0, 1 - fx), (1, fx)):
                xi = x0 + dx
                valid = ((xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
                         & (zi >= 0) & (zi <= d - 1))
                idx = (jnp.clip(zi, 0, d - 1).astype(jnp.int32) * (h * w)
                       + jnp.clip(yi, 0, h - 1).astype(jnp.int32) * w
                       + jnp.clip(xi, 0, w - 1).astype(jnp.int32))
                wgt = jnp.where(valid, wx * wy * wz, 0.0).astype(vol.dtype)
                out = out + jnp.take(flat, idx, axis=0) * wgt[:, None]
    return out
