"""ΔD, the paper's geometry-preservation metric: how far the rendered depth of the stylized
generator moved from the frozen generator's, over several views, inside the frozen
generator's silhouette.

    out_a = G_stylized(..., cameras); out_b = G_frozen(..., cameras)   # same cameras, seeds
    dd = depth_difference(out_a["image_depth"], out_b["image_depth"], out_b["image_acc"],
                          depth_range=cfg.ray_end - cfg.ray_start)      # [N views]
    dd.mean()                                                            # ΔD of the run

The paper calls it an L2 difference and gives no normalisation. Here, per view, it is the root
mean square of the depth difference over the pixels inside the mask (weighted by the mask, so
a soft opacity works too), divided by ``depth_range``:

    ΔD = sqrt( sum m (d_a - d_b)^2 / sum m ) / depth_range

* Units: with ``depth_range = ray_end - ray_start`` (PanoHead: 3.3 - 2.25 = 1.05 world units)
  it is a fraction of the depth interval the renderer searches, so 0 is identical geometry,
  0.01 is a 1% shift, and views and generators with other ray bounds compare. With
  ``depth_range=None`` it is the RMSE in world units (PanoHead's head is about 0.4 units deep).
* An RMS per view, not a sum over pixels: independent of the render resolution and of how much
  of the image the head covers. Views are averaged by the caller (``[N]`` is returned), so the
  mean over views weighs every view alike.
* The mask is the frozen generator's opacity (``image_acc``; ``image_acc > 0.5`` for a hard
  mask): background depth is meaningless and is ignored. A view whose mask is empty gives NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def depth_difference(depth_a: Array, depth_b: Array, mask: Array, *,
                     depth_range: float | None = None) -> Array:
    """Masked RMS depth difference per view, ``[N]`` (see the module docstring).

    ``depth_a``, ``depth_b``: ``[N, H, W]`` or ``[N, H, W, 1]`` rendered depth (world units);
    ``mask``: the same shape, weights in [0, 1] (bool allowed). Returns float32; divided by
    ``depth_range`` when given.
    """
    a, b = jnp.asarray(depth_a, jnp.float32), jnp.asarray(depth_b, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)
    if a.shape != b.shape or a.shape != m.shape or a.ndim not in (3, 4):
        raise ValueError(f"expected depth_a, depth_b and mask of one shape [N, H, W(, 1)], got "
                         f"{a.shape}, {b.shape}, {m.shape}")
    axes = tuple(range(1, a.ndim))
    diff2 = jnp.where(m > 0, jnp.square(a - b), 0.0)  # inf / NaN background never leaks in
    w = jnp.sum(m, axis=axes)
    rmse = jnp.sqrt(jnp.sum(m * diff2, axis=axes) / jnp.where(w > 0, w, jnp.nan))
    return rmse if depth_range is None else rmse / depth_range


__all__ = ["depth_difference"]
