"""Make ``docs/identity_crop.png``: the camera-derived ArcFace crop on renders of a synthetic
head, for a frontal and a turned camera.

    python docs/make_identity_crop.py [--out docs/identity_crop.png]

The head is ray-cast here (no generator weights needed) through the renderer's own rays
(``jaxhead.models.panohead.renderer.ray_sampler``): an ellipsoid whose front passes near the
canonical landmarks ``jaxhead.metrics.identity.PANOHEAD_LANDMARKS_3D``, dark spheres at the
eyes, a nose sphere whose tip is the nose landmark and red lips between the mouth corners.
Left: the render with the projected landmarks (dots) and the crop window (the 112 px square
mapped back into the render); right: the 112 px crop (shown at 2x) with the ArcFace template
points (crosses) it aligns to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jaxhead.camera import make_camera
from jaxhead.metrics import identity as I
from jaxhead.models.panohead import renderer

RES = 256
COLOURS = [(0, 160, 255), (0, 220, 120), (255, 200, 0), (255, 255, 255), (120, 255, 255)]
SKIN, EYE, NOSE, MOUTH, BACKGROUND = ((0.93, 0.76, 0.64), (0.12, 0.10, 0.10),
                                      (0.95, 0.70, 0.58), (0.75, 0.15, 0.20), (0.35, 0.38, 0.42))


def _sphere_hits(o, d, centre, r):
    oc = o - centre
    b = np.sum(oc * d, -1)
    disc = b * b - (np.sum(oc * oc, -1) - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc > 0) & (t > 0), t, np.inf)


def render(camera: np.ndarray) -> np.ndarray:
    """One ``[RES, RES, 3]`` float image in [0, 1] of the synthetic head."""
    o, d = renderer.ray_sampler(jnp.asarray(camera[None, :16]).reshape(1, 4, 4),
                                jnp.asarray(camera[None, 16:]).reshape(1, 3, 3), RES)
    o, d = np.asarray(o[0], np.float64), np.asarray(d[0], np.float64)
    p = I.PANOHEAD_LANDMARKS_3D
    # ellipsoid hits solved in its unit-sphere frame: t is the same along the scaled ray
    centre, axes = np.array([0.0, -0.0865, -0.018]), np.array([0.17, 0.25, 0.22])
    oc, dc = (o - centre) / axes, d / axes
    a = np.sum(dc * dc, -1)
    b = np.sum(oc * dc, -1)
    disc = b * b - a * (np.sum(oc * oc, -1) - 1)
    t_head = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    parts = [(t_head, SKIN, lambda x: (x - centre) / axes ** 2)]
    for k in (0, 1):
        parts.append((_sphere_hits(o, d, p[k], 0.02), EYE, lambda x, c=p[k]: x - c))
    nose_c = p[2] - np.array([0.0, 0.0, 0.03])
    parts.append((_sphere_hits(o, d, nose_c, 0.03), NOSE, lambda x, c=nose_c: x - c))
    for s in np.linspace(0, 1, 15):  # lips bulging forward between the corners
        c = p[3] + s * (p[4] - p[3]) + np.array([0.0, 0.0, 0.02 * np.sin(np.pi * s)])
        parts.append((_sphere_hits(o, d, c, 0.013), MOUTH, lambda x, c=c: x - c))
    ts = np.stack([q[0] for q in parts])
    which = np.argmin(ts, 0)
    t = np.min(ts, 0)
    hit = np.isfinite(t)
    x = o + np.where(hit, t, 0)[:, None] * d
    img = np.tile(np.array(BACKGROUND), (RES * RES, 1))
    light = np.array([0.35, 0.55, 1.0]) / np.linalg.norm([0.35, 0.55, 1.0])
    for k, (_, colour, normal) in enumerate(parts):
        m = hit & (which == k)
        if m.any():
            n = normal(x[m])
            n = n / np.linalg.norm(n, axis=-1, keepdims=True)
            shade = 0.35 + 0.65 * np.clip(n @ light, 0, 1)
            img[m] = np.array(colour) * shade[:, None]
    return img.reshape(RES, RES, 3)


def panel(camera: np.ndarray) -> Image.Image:
    img = render(camera)
    lm = np.asarray(I.render_landmarks(camera[None], RES))[0]
    crop = np.asarray(I.align_faces(img[None].astype(np.float32), lm[None]))[0]
    m = np.asarray(I.similarity_transform(lm, I.ARCFACE_TEMPLATE))
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    corners = np.array([[-0.5, -0.5], [111.5, -0.5], [111.5, 111.5], [-0.5, 111.5]])
    quad = corners @ inv[:, :2].T + inv[:, 2]

    left = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    dl = ImageDraw.Draw(left)
    dl.polygon([tuple(q + 0.5) for q in quad], outline=(255, 255, 255))
    for (x, y), col in zip(lm, COLOURS, strict=True):
        dl.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col, outline=(0, 0, 0))
    right = Image.fromarray((np.clip(crop, 0, 1) * 255).astype(np.uint8)).resize(
        (224, 224), Image.NEAREST)
    dr = ImageDraw.Draw(right)
    for (x, y), col in zip(I.ARCFACE_TEMPLATE * 2 + 1, COLOURS, strict=True):
        dr.line([x - 5, y, x + 5, y], fill=col, width=2)
        dr.line([x, y - 5, x, y + 5], fill=col, width=2)
    out = Image.new("RGB", (RES + 224 + 24, RES + 8), (255, 255, 255))
    out.paste(left, (4, 4))
    out.paste(right, (RES + 20, 4 + (RES - 224) // 2))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("identity_crop.png")))
    a = ap.parse_args(argv)
    cams = np.asarray(make_camera(jnp.array([0.0, 0.55]), jnp.array([0.0, -0.15])), np.float64)
    panels = [panel(c) for c in cams]
    fig = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), (255, 255, 255))
    for k, p in enumerate(panels):
        fig.paste(p, (0, k * p.height))
    fig = fig.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    fig.save(a.out, optimize=True)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
