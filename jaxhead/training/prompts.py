"""The prompts of a run and which one conditions each teacher row.

Every prompt the step may need is encoded once when the models are built (``frozen["text"]``):

* ``cond`` / ``neg``: the style prompt and the negative prompt (always);
* ``cond_views``: the style prompt with the view suffixes ``, front view`` / ``, side view`` /
  ``, back view`` (with ``config.view_prompts``; DreamFusion's view-dependent prompting,
  threestudio's suffixes and thresholds);
* ``blend`` (and ``blend_views``): the neutral prompt ``y`` of the identity-aware blend
  (``config.blend``, HeadSculpt's IESD);
* ``obj:<key>``: the extra prompts the selected objective registered (NFSD's negative prompt).

A teacher row carries its view direction (``TeacherRows.view_dir``: 0 front, 1 side, 2 back, or
None for the plain prompt); :func:`row_text` picks each row's embedding from these tables.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxhead import losses

Array = jax.Array

VIEW_SUFFIXES = (", front view", ", side view", ", back view")
FRONT_DEG = 45.0  # |yaw| < 45 deg: front (threestudio's front_threshold)
BACK_DEG = 45.0  # |yaw| > 180 - 45 deg: back (threestudio's back_threshold)


def camera_yaw(cameras: Array) -> Array:
    """Yaw (radians, 0 = frontal, positive towards +x) of cameras ``[N, 25]`` from their
    position (``c2w`` translation): ``atan2(x, z)``."""
    return jnp.arctan2(cameras[:, 3], cameras[:, 11])


def view_direction(cameras: Array, *, front_deg: float = FRONT_DEG,
                   back_deg: float = BACK_DEG) -> Array:
    """``[N]`` int32: 0 front (``|yaw| < front_deg``), 2 back (``|yaw| > 180 - back_deg``),
    1 side otherwise."""
    a = jnp.abs(camera_yaw(cameras))
    front = a < math.radians(front_deg)
    back = a > math.radians(180.0 - back_deg)
    return jnp.where(front, 0, jnp.where(back, 2, 1)).astype(jnp.int32)


def blend_on(config) -> bool:
    return bool(config.blend.enabled)


def prompt_texts(config) -> dict[str, list[str]]:
    """Every prompt table the config needs: ``{name: [texts]}`` (see the module docstring)."""
    out = {"cond": [config.prompt], "neg": [config.negative_prompt]}
    if config.view_prompts:
        out["cond_views"] = [config.prompt + s for s in VIEW_SUFFIXES]
    if blend_on(config):
        out["blend"] = [config.blend.prompt]
        if config.view_prompts:
            out["blend_views"] = [config.blend.prompt + s for s in VIEW_SUFFIXES]
    if config.objective in losses.OBJECTIVES:
        for k, text in losses.objective_prompts(config.objective, config.objective_kw).items():
            out["obj:" + k] = [text]
    return out


def variants(config) -> list[str]:
    """The conditional prompt variants the teacher is asked for, besides the style prompt:
    ``"blend"`` and ``"obj:<key>"`` (each costs one more CFG pass over every row)."""
    out = ["blend"] if blend_on(config) else []
    if config.objective in losses.OBJECTIVES:
        out += ["obj:" + k for k in losses.OBJECTIVES[config.objective].prompts]
    return out


def row_text(text: dict[str, Array], variant: str, view_dir: Array | None, n: int) -> Array:
    """Conditional embeddings ``[n, L, D]`` of ``n`` rows for prompt ``variant`` (``"cond"``,
    ``"blend"``, ``"obj:<key>"``): the view-suffixed prompt of each row's direction where the
    variant has view suffixes and the row a direction, else the plain prompt."""
    plain = text[variant]
    views = text.get(variant + "_views")
    if view_dir is None or views is None:
        return jnp.broadcast_to(plain, (n,) + plain.shape[1:])
    return views[view_dir]
