"""Control images for the teacher's ControlNets, computed inside the train step.

:data:`CONTROLS` is the registry the config names (``single.control``, ``grid.control``): each
entry says which ControlNet of the converted teacher it feeds and what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxhead.ops.canny import canny_control
from jaxhead.ops.resize import resize_bilinear

Array = jax.Array


class Control(NamedTuple):
    """A control signal: the ControlNet it feeds (``controlnet_<name>/`` of the converted SD
    folder; None for no ControlNet), whether it needs the frozen generator's super-resolved
    ``image`` and whether it runs Depth Anything V2 (whose weights must then exist)."""

    controlnet: str | None
    needs_image: bool = False
    depth_model: bool = False


CONTROLS: dict[str, Control] = {
    "none": Control(None),
    # Canny(50, 250) of the frozen render (the official single-view control)
    "canny": Control("edge", needs_image=True),
    # Depth Anything V2 of the frozen renders (the official grid control)
    "depth_anything": Control("depth", needs_image=True, depth_model=True),
    # the frozen renderer's own 64 px depth: no extra weights, only when chosen explicitly
    "renderer_depth": Control("depth"),
}


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


def control_image(kind: str, renders: dict[str, Array], size: int,
                  depth_fn: Callable[[Array, int], Array] | None = None) -> Array | None:
    """The control image ``[N, size, size, 3]`` in [0, 1] of kind ``kind`` from the frozen
    generator's renders (``image`` [N, S, S, 3] in [-1, 1] and ``image_depth``), or None."""
    if kind == "none":
        return None
    if kind == "canny":
        img = jax.lax.stop_gradient(renders["image"])
        if img.shape[1] != size:  # grid tiles: the SR render at the tile size
            img = resize_bilinear(img, size, antialias=True)
        return canny_control(img)
    if kind == "depth_anything":
        if depth_fn is None:
            raise ValueError("depth_anything control needs the Depth Anything model")
        return depth_fn(renders["image"], size)
    if kind == "renderer_depth":
        return renderer_depth_control(renders["image_depth"], size)
    raise ValueError(f"unknown control {kind!r} (registered: {sorted(CONTROLS)})")
