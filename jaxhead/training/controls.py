"""Control images for the teacher's ControlNets, computed inside the train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxhead.ops.canny import canny_control
from jaxhead.ops.resize import resize_bilinear

Array = jax.Array


def renderer_depth_control(depth: Array, size: int, far: float = 2.85) -> Array:
    """The official ``normalize_depth`` of the renderer's depth: clip at ``far``, min-max over
    each view, ``|d - 1|`` (near = bright); resized to ``size`` px, 3 channels in [0, 1].

    depth ``[N, r, r, 1]`` (world units) -> ``[N, size, size, 3]``.
    """
    lo = jnp.min(depth, axis=(1, 2, 3), keepdims=True)
    d = jnp.clip(depth, lo, far)
    lo, hi = jnp.min(d, axis=(1, 2, 3), keepdims=True), jnp.max(d, axis=(1, 2, 3), keepdims=True)
    d = jnp.abs((d - lo) / (hi - lo + 1e-6) - 1.0)
    d = resize_bilinear(d, size, align_corners=False)
    return jax.lax.stop_gradient(jnp.repeat(d, 3, axis=-1))


def single_view_control(kind: str, image: Array, depth: Array | None = None,
                        depth_fn=None) -> Array | None:
    """Control for the single-view score from the frozen render ``image`` [B, 512, 512, 3]."""
    if kind == "none":
        return None
    if kind == "canny":
        return canny_control(jax.lax.stop_gradient(image))
    if kind == "depth":
        if depth_fn is not None:  # Depth Anything
            return depth_fn(image, image.shape[1])
        return renderer_depth_control(depth, image.shape[1])
    raise ValueError(f"unknown single-view control {kind!r}")
