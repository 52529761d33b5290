"""Preview renders: fixed identities from front / side / back, frozen (before) vs trained
(after), and the 2x2 grid with its control image."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead import camera, losses
from jaxhead.latents import check_fit, read_ws, ws_files
from jaxhead.ops.resize import resize_bilinear
from jaxhead.training.controls import renderer_depth_control
from jaxhead.training.models import Models
from jaxhead.training.optim import merge
from jaxhead.training.sampling import conditioning_ws
from jaxhead.utils.compile import jit

PREVIEW_YAWS = (0.0, math.pi / 2, math.pi)  # front, side, back
GRID_YAWS = (0.0, math.pi / 2, math.pi, -math.pi / 2)


def read_preview_ws(config) -> list[tuple[str, np.ndarray]] | None:
    """The inverted identities of ``config.preview_ws`` (``[(name, w [1, num_ws, w_dim])]``,
    every ``.npz`` file by name) or None; a missing, empty or unreadable directory or file
    raises :class:`jaxhead.errors.DataError` naming it."""
    if not config.preview_ws:
        return None
    return [(q.stem, read_ws(q)) for q in ws_files(config.preview_ws)]


def check_preview_ws(items: list[tuple[str, np.ndarray]], G, config) -> None:
    """Each preview ``w`` fits the generator (:func:`jaxhead.latents.check_fit`)."""
    for name, w in items:
        check_fit(w, G.num_ws, G.w_dim, where=f"{Path(config.preview_ws) / name}.npz")


def make_preview_fn(models: Models, config, num_ids: int, seed: int,
                    ws: np.ndarray | None = None):
    """jitted ``(trainable, frozen) -> dict`` of uint8-ready images (values in [-1, 1]).

    ``ws [num_ids, num_ws, w_dim]``: fixed identities (inverted photos) instead of
    ``num_ids`` seeded ones mapped with the training's conditioning and truncation."""
    G = models.G
    z = jax.random.normal(jax.random.key(seed + 12345), (num_ids, G.z_dim))
    fixed = None if ws is None else jnp.asarray(ws, jnp.float32)
    r = G.camera_radius
    c = camera.make_camera(jnp.asarray(PREVIEW_YAWS), jnp.zeros(len(PREVIEW_YAWS)), radius=r)
    cg = camera.make_camera(jnp.asarray(GRID_YAWS), jnp.full(4, 0.1), radius=r)

    def syn(params, ws, cams, **kw):
        rep = G.representation(params, ws, noise_mode="const")
        return G.render(params, ws, cams, rep, noise_mode="const", deterministic=True,
                        background="white", **kw)

    @jit
    def preview(trainable: Any, frozen: Any) -> dict[str, jax.Array]:
        fparams = frozen["generator"]
        params = merge(fparams, trainable)
        ws = conditioning_ws(G, config, fparams, z) if fixed is None else fixed
        nv = len(PREVIEW_YAWS)
        wsr = jnp.repeat(ws, nv, axis=0)
        cr = jnp.tile(c, (num_ids, 1))
        before = syn(fparams, wsr, cr)["image"]
        after = syn(params, wsr, cr)["image"]
        # grid of the first identity (trained generator) and its depth control (frozen)
        g_after = syn(params, jnp.repeat(ws[:1], 4, 0), cg, superresolution=False)
        g_frozen = syn(fparams, jnp.repeat(ws[:1], 4, 0), cg, superresolution=False)
        half = G.image_size // 2
        grid = losses.make_grid(resize_bilinear(g_after["image_raw"], half, align_corners=True))
        ctl = losses.make_grid(renderer_depth_control(g_frozen["image_depth"], half))
        shp = (num_ids, nv) + before.shape[1:]
        return {"before": before.reshape(shp), "after": after.reshape(shp), "grid": grid,
                "grid_control": ctl * 2 - 1}

    return preview


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text_strip(width: int, height: int, labels: list[tuple[int, str]]) -> np.ndarray:
    """A white strip ``[height, width, 3]`` with each ``(offset, text)`` written at ``offset``
    px along it."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = _font(max(12, min(height // 2, 28)))
    for off, text in labels:
        d.text((off + 6, height // 2), text, fill="black", font=font, anchor="lm")
    return np.asarray(img)


def _deg(yaw: float) -> str:
    return f"yaw {round(math.degrees(yaw)):+d}°"


def compose(p: dict[str, np.ndarray], names: list[str] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 previews -> (identities sheet, grid sheet), both labelled.

    Sheet: a header row naming each column's yaw; per identity two rows, ``frozen`` (the
    generator before training) and ``stylized``, named in a left column (``names[i]``, by
    default ``id i``). Grid sheet: the
    stylized 2x2 grid of identity 0 (each tile's yaw written on it) next to the frozen
    renderer's depth (the grid's depth control when ``grid.control=renderer_depth``)."""
    n_ids, nv, size = p["before"].shape[:3]
    label_w, head_h = max(160, size // 3), max(32, size // 12)
    rows = [_text_strip(label_w + nv * size, head_h,
                        [(label_w + j * size, _deg(y)) for j, y in enumerate(PREVIEW_YAWS)])]
    for i in range(n_ids):
        for name, imgs in (("frozen", p["before"][i]), ("stylized", p["after"][i])):
            label = names[i] if names else f"id {i}"
            rows.append(np.concatenate([_left_label(size, label_w, label, name), *imgs],
                                       axis=1))
    sheet = np.concatenate(rows, axis=0)
    g, c = p["grid"], p["grid_control"]
    half = g.shape[0] // 2
    g = _stamp(g, [((x, y), _deg(yaw)) for (y, x), yaw in
                   zip([(0, 0), (0, half), (half, 0), (half, half)], GRID_YAWS, strict=True)])
    body = np.concatenate([g, c], axis=1)
    head = _text_strip(body.shape[1], head_h, [(0, "stylized 2x2 grid (identity 0, before SR)"),
                                               (g.shape[1], "frozen renderer depth")])
    return sheet, np.concatenate([head, body], axis=0)


def _left_label(height: int, width: int, *lines: str) -> np.ndarray:
    """White ``[height, width, 3]`` block with ``lines`` written one under the other."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = _font(max(12, min(width // 6, 28)))
    for k, text in enumerate(lines):
        d.text((8, height // 2 + (k - (len(lines) - 1) / 2) * font.size * 1.3), text,
               fill="black", font=font, anchor="lm")
    return np.asarray(img)


def _stamp(img: np.ndarray, labels: list[tuple[tuple[int, int], str]]) -> np.ndarray:
    """``img`` with each ``((x, y), text)`` written at its top-left corner on a white box."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    font = _font(max(12, img.shape[0] // 24))
    for (x, y), text in labels:
        box = d.textbbox((x + 6, y + 6), text, font=font)
        d.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill="white")
        d.text((x + 6, y + 6), text, fill="black", font=font)
    return np.asarray(im)
