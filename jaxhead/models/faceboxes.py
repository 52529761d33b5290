"""FaceBoxes, the face detector 3DDFA_V2 ships (``FaceBoxes/`` in cleardusk/3DDFA_V2, weights
``FaceBoxes/weights/FaceBoxesProd.pth``), as pure functions over a params dict. NHWC.

Input: a BGR image as OpenCV reads it, values in [0, 255]; the network sees it minus the BGR
means (104, 117, 123). :func:`detect` is the reference ``FaceBoxes.__call__``: images taller
than 720 px or wider than 1080 px are first scaled down (one factor for both axes, the
reference's rule), the network gives per-prior box offsets and two-class softmax scores,
boxes are decoded against the priors (variances 0.1 / 0.2) and mapped back to the input
image's pixels, scores <= 0.05 are dropped, the 5000 best kept, greedy NMS at IoU 0.3 (Fast
R-CNN's ``cpu_nms``: a box is suppressed when its IoU with a kept box is >= 0.3, areas with the
"+1" pixel convention), at most 750 kept, and those with score > 0.5 returned.

Architecture (``FaceBoxesNet``, phase "test"): two CReLU convs (conv + BN, then
``relu(cat[x, -x])``) with 3x3/2 max-pools, three Inception blocks (branches 1x1; 3x3 avg-pool
then 1x1; 1x1 then 3x3; 1x1 then two 3x3: 4 x 32 channels), then conv3_1/conv3_2 and
conv4_1/conv4_2 (1x1 then 3x3 stride 2). Three detection sources (strides 32, 64, 128) with a
3x3 ``loc`` and ``conf`` conv each: 21 anchors per cell on the first (densified 32 px x16,
64 px x4, 128 px x1), one (256 px, 512 px) on the others.

Params mirror the PyTorch attribute names (``state_dict`` keys with ``.`` -> ``/``), convs in
HWIO::

    conv1/conv/weight [7, 7, 3, 24]            conv1/bn/{weight, bias, running_mean, running_var}
    inception1/branch3x3/conv/weight [3, 3, 24, 32]   ...
    loc/0/{weight [3, 3, 128, 84], bias}       conf/0/{weight [3, 3, 128, 42], bias}  ...
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhead.models.iresnet import BN_EPS, conv

Array = jax.Array
Params = dict[str, Any]

BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)
MIN_SIZES = ((32, 64, 128), (256,), (512,))
STEPS = (32, 64, 128)
VARIANCES = (0.1, 0.2)
CONFIDENCE_THRESHOLD = 0.05
TOP_K = 5000
NMS_THRESHOLD = 0.3
KEEP_TOP_K = 750
VIS_THRESHOLD = 0.5
MAX_HEIGHT, MAX_WIDTH = 720, 1080
NUM_CLASSES = 2

# (name, cin, cout, kernel, stride) of the plain conv + BN + ReLU layers of an Inception block.
_INCEPTION = (("branch1x1", 128, 32, 1), ("branch1x1_2", 128, 32, 1),
              ("branch3x3_reduce", 128, 24, 1), ("branch3x3", 24, 32, 3),
              ("branch3x3_reduce_2", 128, 24, 1), ("branch3x3_2", 24, 32, 3),
              ("branch3x3_3", 32, 32, 3))
_SOURCES = ((128, 21), (256, 1), (256, 1))  # (channels, anchors per cell) per source


def _basic_shapes(cin: int, cout: int, k: int) -> Params:
    return {"conv": {"weight": (k, k, cin, cout)},
            "bn": {n: (cout,) for n in ("weight", "bias", "running_mean", "running_var")}}


def param_shapes() -> Params:
    """Shapes of every parameter (the released network has only one configuration)."""
    out: Params = {"conv1": _basic_shapes(3, 24, 7), "conv2": _basic_shapes(48, 64, 5)}
    for i in (1, 2, 3):
        out[f"inception{i}"] = {n: _basic_shapes(ci, co, k) for n, ci, co, k in _INCEPTION}
    out.update(conv3_1=_basic_shapes(128, 128, 1), conv3_2=_basic_shapes(128, 256, 3),
               conv4_1=_basic_shapes(256, 128, 1), conv4_2=_basic_shapes(128, 256, 3))
    for head, per in (("loc", 4), ("conf", NUM_CLASSES)):
        out[head] = {str(s): {"weight": (3, 3, c, a * per), "bias": (a * per,)}
                     for s, (c, a) in enumerate(_SOURCES)}
    return out


def _bn(p: Params, x: Array) -> Array:
    scale = p["weight"] * lax.rsqrt(p["running_var"] + BN_EPS)
    return (x - p["running_mean"]) * scale + p["bias"]


def _basic(p: Params, x: Array, stride: int = 1) -> Array:
    """``BasicConv2d``: conv (no bias, "same" padding k // 2) + BN + ReLU."""
    k = p["conv"]["weight"].shape[0]
    return jax.nn.relu(_bn(p["bn"], conv(p["conv"], x, stride, k // 2)))


def _crelu(p: Params, x: Array, stride: int) -> Array:
    """``CRelu``: conv + BN, then ``relu(cat[x, -x])`` over channels."""
    k = p["conv"]["weight"].shape[0]
    y = _bn(p["bn"], conv(p["conv"], x, stride, k // 2))
    return jax.nn.relu(jnp.concatenate([y, -y], axis=-1))


def _max_pool(x: Array) -> Array:
    """``F.max_pool2d(kernel_size=3, stride=2, padding=1)`` (padding never wins)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))


def _avg_pool(x: Array) -> Array:
    """``F.avg_pool2d(kernel_size=3, stride=1, padding=1)``: zero padding counted (/9)."""
    s = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))
    return s / 9.0


def _inception(p: Params, x: Array) -> Array:
    b1 = _basic(p["branch1x1"], x)
    b2 = _basic(p["branch1x1_2"], _avg_pool(x))
    b3 = _basic(p["branch3x3"], _basic(p["branch3x3_reduce"], x))
    b4 = _basic(p["branch3x3_3"], _basic(p["branch3x3_2"], _basic(p["branch3x3_reduce_2"], x)))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


def forward(params: Params, x: Array) -> tuple[Array, Array]:
    """The network on mean-subtracted BGR images ``x`` [B, H, W, 3] -> ``(loc [B, P, 4],
    scores [B, P, 2])`` (softmax over background / face), P priors in :func:`priors` order."""
    x = _max_pool(_crelu(params["conv1"], x, 4))
    x = _max_pool(_crelu(params["conv2"], x, 2))
    for i in (1, 2, 3):
        x = _inception(params[f"inception{i}"], x)
    sources = [x]
    x = _basic(params["conv3_2"], _basic(params["conv3_1"], x), 2)
    sources.append(x)
    x = _basic(params["conv4_2"], _basic(params["conv4_1"], x), 2)
    sources.append(x)
    b = x.shape[0]
    loc, conf = [], []
    for s, src in enumerate(sources):  # NHWC flattening = the reference's permute + view
        loc.append(conv(params["loc"][str(s)], src, 1, 1).reshape(b, -1, 4))
        conf.append(conv(params["conf"][str(s)], src, 1, 1).reshape(b, -1, NUM_CLASSES))
    return jnp.concatenate(loc, 1), jax.nn.softmax(jnp.concatenate(conf, 1), axis=-1)


@functools.lru_cache(maxsize=16)
def priors(height: int, width: int) -> np.ndarray:
    """``[P, 4]`` float32 prior boxes (cx, cy, w, h), relative to the image size, in the order
    of the network's outputs: per source, per cell (row-major), per min size, per dense
    offset (row-major). Not clipped (the reference's ``clip`` is False)."""
    out: list[np.ndarray] = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cell = []
        for m in sizes:
            n = {32: 4, 64: 2}.get(m, 1)
            offs = np.arange(n) / n if n > 1 else np.array([0.5])
            oy, ox = np.meshgrid(offs, offs, indexing="ij")  # cy outer, cx inner
            cell.append(np.stack([ox.ravel(), oy.ravel(),
                                  np.full(n * n, m / width), np.full(n * n, m / height)], -1))
        per_cell = np.concatenate(cell, 0)  # [A, 4]; offsets in cells, sizes relative
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grid = np.zeros((rows, cols, per_cell.shape[0], 4))
        grid[..., 0] = (j[..., None] + per_cell[:, 0]) * step / width
        grid[..., 1] = (i[..., None] + per_cell[:, 1]) * step / height
        grid[..., 2:] = per_cell[:, 2:]
        out.append(grid.reshape(-1, 4))
    return np.concatenate(out, 0).astype(np.float32)


def decode(loc: Array, prior: Array) -> Array:
    """Offsets ``loc`` [..., P, 4] against ``prior`` [P, 4] -> boxes (x1, y1, x2, y2), relative."""
    v0, v1 = VARIANCES
    c = prior[:, :2] + loc[..., :2] * v0 * prior[:, 2:]
    wh = prior[:, 2:] * jnp.exp(loc[..., 2:] * v1)
    xy = c - wh / 2
    return jnp.concatenate([xy, wh + xy], -1)


def detector_scale(height: int, width: int) -> float:
    """The reference's down-scaling factor: fit the height to 720 px, then the width to
    1080 px; 1 for images already within both."""
    scale = 1.0
    if height > MAX_HEIGHT:
        scale = MAX_HEIGHT / height
    if width * scale > MAX_WIDTH:
        scale *= MAX_WIDTH / (width * scale)
    return scale


def nms(dets: np.ndarray, thresh: float = NMS_THRESHOLD) -> list[int]:
    """Fast R-CNN's greedy ``cpu_nms`` on ``dets`` [N, 5] float32 (x1, y1, x2, y2, score):
    indices kept, best first; a box whose IoU ("+1" pixel areas) with a kept box is >= thresh
    is suppressed."""
    dets = np.asarray(dets, np.float32)
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    suppressed = np.zeros(len(dets), bool)
    keep: list[int] = []
    one, zero = np.float32(1), np.float32(0)
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[a + 1:]
        rest = rest[~suppressed[rest]]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[ovr >= np.float32(thresh)]] = True
    return keep


@jax.jit
def _boxes_scores(params: Params, img: Array) -> tuple[Array, Array]:
    h, w = img.shape[1], img.shape[2]
    loc, conf = forward(params, img - BGR_MEAN)
    boxes = decode(loc[0], jnp.asarray(priors(h, w)))
    return boxes, conf[0, :, 1]


def detect(params: Params, image_bgr: np.ndarray | Array) -> np.ndarray:
    """Faces in one BGR image [H, W, 3] (values 0..255) -> ``[N, 5]`` float32 rows
    (x1, y1, x2, y2, score) in the image's pixels, best first, score > 0.5; the reference
    ``FaceBoxes.__call__``. Large images are scaled down by :func:`detector_scale` first: a
    uint8 image as the reference's ``cv2.resize`` does it (:mod:`jaxhead.ops.cv2_resize`,
    bit-exact), a float image with float bilinear interpolation at the same sample points."""
    from jaxhead.ops.cv2_resize import resize_linear_u8
    from jaxhead.ops.resize import resize_bilinear

    if np.ndim(image_bgr) != 3 or np.shape(image_bgr)[-1] != 3:
        raise ValueError(f"detect expects one [H, W, 3] BGR image, got shape "
                         f"{np.shape(image_bgr)}")
    h, w = np.shape(image_bgr)[:2]
    scale = detector_scale(h, w)
    size = (int(scale * h), int(scale * w))
    if scale != 1.0 and np.asarray(image_bgr).dtype == np.uint8:
        img = jnp.asarray(resize_linear_u8(np.asarray(image_bgr), size[::-1]), jnp.float32)
    elif scale != 1.0:
        img = resize_bilinear(jnp.asarray(image_bgr, jnp.float32)[None], size)[0]
    else:
        img = jnp.asarray(image_bgr, jnp.float32)
    hs, ws = img.shape[:2]
    boxes, scores = (np.asarray(a) for a in _boxes_scores(params, img[None]))
    boxes = boxes * np.array([ws, hs, ws, hs], np.float32) / np.float32(scale)
    inds = np.where(scores > CONFIDENCE_THRESHOLD)[0]
    boxes, scores = boxes[inds], scores[inds]
    order = scores.argsort()[::-1][:TOP_K]
    dets = np.hstack((boxes[order], scores[order, None])).astype(np.float32)
    dets = dets[nms(dets)][:KEEP_TOP_K] if len(dets) else dets.reshape(0, 5)
    return dets[dets[:, 4] > VIS_THRESHOLD]


def random_params(seed: int = 0) -> Params:
    """Random weights of the right shapes (He-normal convs, BatchNorms near identity): tests."""
    rng = np.random.default_rng(seed)
    out: Params = {}
    for path, shape in _leaves(param_shapes()):
        name = path[-1]
        if name in ("weight", "running_var") and len(shape) == 1:
            v = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            v = 0.1 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[name] = jnp.asarray(v, jnp.float32)
    return out


def _leaves(tree: Params, prefix: tuple[str, ...] = ()) -> itertools.chain:
    return itertools.chain.from_iterable(
        _leaves(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]
        for k, v in tree.items())
