"""Preview renders: fixed identities from front / side / back, frozen (before) vs trained
(after), and the 2x2 grid with its control image."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead import camera, losses
from jaxhead.ops.resize import resize_bilinear
from jaxhead.training.controls import renderer_depth_control
from jaxhead.training.models import Models
from jaxhead.training.step import StepConfig, conditioning_ws, merge

PREVIEW_YAWS = (0.0, math.pi / 2, math.pi)  # front, side, back
GRID_YAWS = (0.0, math.pi / 2, math.pi, -math.pi / 2)


def make_preview_fn(models: Models, sc: StepConfig, num_ids: int, seed: int):
    """jitted ``(trainable, frozen) -> dict`` of uint8-ready images (values in [-1, 1])."""
    G = models.G
    z = jax.random.normal(jax.random.key(seed + 12345), (num_ids, G.config.z_dim))
    r = G.config.avg_camera_radius
    c = camera.make_camera(jnp.asarray(PREVIEW_YAWS), jnp.zeros(len(PREVIEW_YAWS)), radius=r)
    cg = camera.make_camera(jnp.asarray(GRID_YAWS), jnp.full(4, 0.1), radius=r)
    syn = functools.partial(G.synthesis, noise_mode="const", deterministic=True,
                            background="white")

    @jax.jit
    def preview(trainable: Any, frozen: Any) -> dict[str, jax.Array]:
        fparams = frozen["generator"]
        params = merge(fparams, trainable)
        ws = conditioning_ws(models, sc, fparams, z)
        nv = len(PREVIEW_YAWS)
        wsr = jnp.repeat(ws, nv, axis=0)
        cr = jnp.tile(c, (num_ids, 1))
        before = syn(fparams, wsr, cr)["image"]
        after = syn(params, wsr, cr)["image"]
        # grid of the first identity (trained generator) and its depth control (frozen)
        g_after = syn(params, jnp.repeat(ws[:1], 4, 0), cg, superresolution=False)
        g_frozen = syn(fparams, jnp.repeat(ws[:1], 4, 0), cg, superresolution=False)
        half = G.config.img_resolution // 2
        grid = losses.make_grid(resize_bilinear(g_after["image_raw"], half, align_corners=True))
        ctl = losses.make_grid(renderer_depth_control(g_frozen["image_depth"], half))
        shp = (num_ids, nv) + before.shape[1:]
        return {"before": before.reshape(shp), "after": after.reshape(shp), "grid": grid,
                "grid_control": ctl * 2 - 1}

    return preview


def compose(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """-> (identities sheet: rows = identity, columns = before/after at each yaw;
    grid | control side by side)."""
    rows = []
    for b, a in zip(p["before"], p["after"], strict=True):
        rows.append(np.concatenate([np.concatenate([bv, av], axis=1) for bv, av in zip(b, a,
                                                                                      strict=True)],
                                   axis=1))
    sheet = np.concatenate(rows, axis=0)
    grid = np.concatenate([p["grid"], p["grid_control"]], axis=1)
    return sheet, grid
