"""The 2x2 multi-view grid (grid score distillation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxhead.ops.resize import resize_bilinear

Array = jax.Array


def make_grid(tiles: Array) -> Array:
    """``[..., 4, h, w, C]`` -> ``[..., 2h, 2w, C]``; order top-left, top-right, bottom-left,
    bottom-right (as the official ``resize_and_grid``)."""
    top = jnp.concatenate([tiles[..., 0, :, :, :], tiles[..., 1, :, :, :]], axis=-2)
    bottom = jnp.concatenate([tiles[..., 2, :, :, :], tiles[..., 3, :, :, :]], axis=-2)
    return jnp.concatenate([top, bottom], axis=-3)


def split_grid(grid: Array) -> Array:
    """Inverse of :func:`make_grid`: ``[..., 2h, 2w, C]`` -> ``[..., 4, h, w, C]``."""
    h, w = grid.shape[-3] // 2, grid.shape[-2] // 2
    tl, tr = grid[..., :h, :w, :], grid[..., :h, w:, :]
    bl, br = grid[..., h:, :w, :], grid[..., h:, w:, :]
    return jnp.stack([tl, tr, bl, br], axis=-4)


def resize_and_grid(tiles: Array, size: int, *, align_corners: bool = True,
                    antialias: bool = False) -> Array:
    """Resize 4 tiles ``[4, h, w, C]`` (bilinear) to ``size`` and assemble ``[2s, 2s, C]``.

    Before-SR mode: 64 px raw renders, ``size=256`` (x4, ``align_corners=True``, official).
    After-SR mode: 512 px SR renders, ``size=256``.
    """
    return make_grid(resize_bilinear(tiles, size, align_corners=align_corners,
                                     antialias=antialias))
