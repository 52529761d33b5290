"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph as ported by pytorch-fid), up to the
2048-d pool3 features used by FID and KID.

Pure functions over a params dict, images NHWC::

    params = load_inception("checkpoints/inception_fid")   # python -m convert_weights.inception
    f = inception_features(params, images)                  # [N, H, W, 3] in [0, 1] -> [N, 2048]

Preprocessing as pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``: float
images in [0, 1] (uint8 images are divided by 255, as ``ToTensor`` does) are resized to 299x299
with ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing), then mapped to
[-1, 1] by ``2x - 1``. No ImageNet ``transform_input`` (it is off for FID). torch-fidelity
feeds the same weights uint8 images through a TF1-style resize and ``(x - 128) / 128``: its
features differ slightly from pytorch-fid's, and this module follows pytorch-fid.

The network differs from torchvision's Inception-v3 where the TF graph does (pytorch-fid's
``FIDInceptionA/C/E_1/E_2``): the pool branches of the A, C and first E blocks average over a
3x3 window *without* counting the zero padding (``count_include_pad=False``), the last E block
(``Mixed_7c``) max-pools in its pool branch, and every BatchNorm has eps = 0.001.

Params layout mirrors the PyTorch state dict: ``params["Mixed_5b"]["branch5x5_2"]`` is
``{"conv": {"weight": [kh, kw, cin, cout]}, "bn": {"weight", "bias", "running_mean",
"running_var": [cout]}}``; ``params["fc"]`` (``weight`` [2048, 1008], ``bias`` [1008]) is kept
for the logits (Inception Score) although the features stop before it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhead.ops.resize import resize_bilinear
from jaxhead.utils.compile import jit

Array = jax.Array
Params = dict[str, Any]

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's softmax (1000 ImageNet classes + 8 unused)
BN_EPS = 1e-3
CONVERT_HINT = ("python -m convert_weights.inception pt_inception-2015-12-05-6726825d.pth DST "
                "(pytorch-fid's FID weights; torch-fidelity's "
                "weights-inception-2015-12-05-6726825d.pth also works)")
MODEL_NAME = "inception-v3-fid"


def _bc(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
        pad: int | tuple[int, int] = 0) -> tuple:
    """One ``BasicConv2d(cin, cout, kernel_size=k, stride=stride, padding=pad)``:
    ``(cin, cout, (kh, kw), stride, (ph, pw))``."""
    k = (k, k) if isinstance(k, int) else k
    pad = (pad, pad) if isinstance(pad, int) else pad
    return (cin, cout, k, stride, pad)


def _block_a(cin: int, pool_features: int) -> dict:
    return {"branch1x1": _bc(cin, 64, 1),
            "branch5x5_1": _bc(cin, 48, 1), "branch5x5_2": _bc(48, 64, 5, pad=2),
            "branch3x3dbl_1": _bc(cin, 64, 1), "branch3x3dbl_2": _bc(64, 96, 3, pad=1),
            "branch3x3dbl_3": _bc(96, 96, 3, pad=1),
            "branch_pool": _bc(cin, pool_features, 1)}


def _block_b(cin: int) -> dict:
    return {"branch3x3": _bc(cin, 384, 3, stride=2),
            "branch3x3dbl_1": _bc(cin, 64, 1), "branch3x3dbl_2": _bc(64, 96, 3, pad=1),
            "branch3x3dbl_3": _bc(96, 96, 3, stride=2)}


def _block_c(cin: int, c7: int) -> dict:
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorized 7x7
    return {"branch1x1": _bc(cin, 192, 1),
            "branch7x7_1": _bc(cin, c7, 1), "branch7x7_2": _bc(c7, c7, row[0], pad=row[1]),
            "branch7x7_3": _bc(c7, 192, col[0], pad=col[1]),
            "branch7x7dbl_1": _bc(cin, c7, 1),
            "branch7x7dbl_2": _bc(c7, c7, col[0], pad=col[1]),
            "branch7x7dbl_3": _bc(c7, c7, row[0], pad=row[1]),
            "branch7x7dbl_4": _bc(c7, c7, col[0], pad=col[1]),
            "branch7x7dbl_5": _bc(c7, 192, row[0], pad=row[1]),
            "branch_pool": _bc(cin, 192, 1)}


def _block_d(cin: int) -> dict:
    return {"branch3x3_1": _bc(cin, 192, 1), "branch3x3_2": _bc(192, 320, 3, stride=2),
            "branch7x7x3_1": _bc(cin, 192, 1),
            "branch7x7x3_2": _bc(192, 192, (1, 7), pad=(0, 3)),
            "branch7x7x3_3": _bc(192, 192, (7, 1), pad=(3, 0)),
            "branch7x7x3_4": _bc(192, 192, 3, stride=2)}


def _block_e(cin: int) -> dict:
    return {"branch1x1": _bc(cin, 320, 1),
            "branch3x3_1": _bc(cin, 384, 1),
            "branch3x3_2a": _bc(384, 384, (1, 3), pad=(0, 1)),
            "branch3x3_2b": _bc(384, 384, (3, 1), pad=(1, 0)),
            "branch3x3dbl_1": _bc(cin, 448, 1), "branch3x3dbl_2": _bc(448, 384, 3, pad=1),
            "branch3x3dbl_3a": _bc(384, 384, (1, 3), pad=(0, 1)),
            "branch3x3dbl_3b": _bc(384, 384, (3, 1), pad=(1, 0)),
            "branch_pool": _bc(cin, 192, 1)}


# The network in order: (PyTorch attribute name, kind, conv spec(s)). "conv" is one BasicConv2d,
# "maxpool" a 3x3/2 max-pool (no params), the letters the mixed blocks; E_1 / E_2 differ only in
# the pool of their pool branch (average without padding / max).
LAYERS: tuple[tuple[str, str, Any], ...] = (
    ("Conv2d_1a_3x3", "conv", _bc(3, 32, 3, stride=2)),
    ("Conv2d_2a_3x3", "conv", _bc(32, 32, 3)),
    ("Conv2d_2b_3x3", "conv", _bc(32, 64, 3, pad=1)),
    ("maxpool1", "maxpool", None),
    ("Conv2d_3b_1x1", "conv", _bc(64, 80, 1)),
    ("Conv2d_4a_3x3", "conv", _bc(80, 192, 3)),
    ("maxpool2", "maxpool", None),
    ("Mixed_5b", "A", _block_a(192, 32)),
    ("Mixed_5c", "A", _block_a(256, 64)),
    ("Mixed_5d", "A", _block_a(288, 64)),
    ("Mixed_6a", "B", _block_b(288)),
    ("Mixed_6b", "C", _block_c(768, 128)),
    ("Mixed_6c", "C", _block_c(768, 160)),
    ("Mixed_6d", "C", _block_c(768, 160)),
    ("Mixed_6e", "C", _block_c(768, 192)),
    ("Mixed_7a", "D", _block_d(768)),
    ("Mixed_7b", "E_1", _block_e(1280)),
    ("Mixed_7c", "E_2", _block_e(2048)),
)


def _conv_shapes(spec: tuple) -> Params:
    cin, cout, (kh, kw), _, _ = spec
    bn = {k: (cout,) for k in ("weight", "bias", "running_mean", "running_var")}
    return {"conv": {"weight": (kh, kw, cin, cout)}, "bn": bn}


def param_shapes() -> Params:
    """Expected shapes of every parameter (for checking converted files)."""
    out: Params = {}
    for name, kind, spec in LAYERS:
        if kind == "conv":
            out[name] = _conv_shapes(spec)
        elif kind != "maxpool":
            out[name] = {b: _conv_shapes(s) for b, s in spec.items()}
    out["fc"] = {"weight": (FEATURE_DIM, NUM_CLASSES), "bias": (NUM_CLASSES,)}
    return out


def random_params(key: Array) -> Params:
    """Random weights of the right shapes (He-normal convs, BatchNorm near identity): for
    benchmarks and smoke tests; features of random weights mean nothing."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        param_shapes(), is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(flat))

    def leaf(path, shape, k):
        name = path[-1].key
        if name == "running_var" or (name == "weight" and path[-2].key == "bn"):
            return jax.random.uniform(k, shape, minval=0.5, maxval=1.5)
        if len(shape) == 1:
            return 0.1 * jax.random.normal(k, shape)
        return jax.random.normal(k, shape) * np.sqrt(2.0 / np.prod(shape[:-1]))

    return jax.tree.unflatten(treedef, [leaf(p, s, k) for (p, s), k in zip(flat, keys,
                                                                           strict=True)])


def basic_conv(p: Params, x: Array, spec: tuple) -> Array:
    """``BasicConv2d``: conv (no bias) -> BatchNorm (eval, eps 0.001) -> ReLU. NHWC."""
    _, _, _, stride, (ph, pw) = spec
    y = lax.conv_general_dilated(x, p["conv"]["weight"].astype(x.dtype), (stride, stride),
                                 ((ph, ph), (pw, pw)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    bn = p["bn"]
    scale = bn["weight"] * lax.rsqrt(bn["running_var"] + BN_EPS)
    return jax.nn.relu((y - bn["running_mean"]) * scale + bn["bias"])


def _max_pool(x: Array, stride: int, pad: int) -> Array:
    """3x3 max-pool; padding (if any) never wins, as in PyTorch."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                             ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_no_pad(x: Array) -> Array:
    """3x3/1 average pool with padding 1 that divides by the number of *real* pixels in each
    window (TF's "SAME" average pool = PyTorch ``count_include_pad=False``)."""
    s = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))

    def counts(n: int) -> np.ndarray:  # pixels of [i-1, i+1] inside [0, n)
        i = np.arange(n)
        return (np.minimum(i + 1, n - 1) - np.maximum(i - 1, 0) + 1).astype(np.float32)

    n = np.outer(counts(x.shape[1]), counts(x.shape[2]))[None, :, :, None]
    return s / jnp.asarray(n, x.dtype)


def _mixed(kind: str, p: Params, x: Array, spec: dict) -> Array:
    """One mixed block; branch outputs are concatenated in PyTorch's order."""
    def c(name: str, h: Array) -> Array:
        return basic_conv(p[name], h, spec[name])

    def chain(names: str, h: Array) -> Array:
        for n in names.split():
            h = c(n, h)
        return h

    if kind == "A":
        return jnp.concatenate([
            c("branch1x1", x),
            chain("branch5x5_1 branch5x5_2", x),
            chain("branch3x3dbl_1 branch3x3dbl_2 branch3x3dbl_3", x),
            c("branch_pool", _avg_pool_no_pad(x))], axis=-1)
    if kind == "B":
        return jnp.concatenate([
            c("branch3x3", x),
            chain("branch3x3dbl_1 branch3x3dbl_2 branch3x3dbl_3", x),
            _max_pool(x, 2, 0)], axis=-1)
    if kind == "C":
        return jnp.concatenate([
            c("branch1x1", x),
            chain("branch7x7_1 branch7x7_2 branch7x7_3", x),
            chain("branch7x7dbl_1 branch7x7dbl_2 branch7x7dbl_3 branch7x7dbl_4 branch7x7dbl_5",
                  x),
            c("branch_pool", _avg_pool_no_pad(x))], axis=-1)
    if kind == "D":
        return jnp.concatenate([
            chain("branch3x3_1 branch3x3_2", x),
            chain("branch7x7x3_1 branch7x7x3_2 branch7x7x3_3 branch7x7x3_4", x),
            _max_pool(x, 2, 0)], axis=-1)
    if kind in ("E_1", "E_2"):
        b3 = c("branch3x3_1", x)
        bd = chain("branch3x3dbl_1 branch3x3dbl_2", x)
        pool = _avg_pool_no_pad(x) if kind == "E_1" else _max_pool(x, 1, 1)
        return jnp.concatenate([
            c("branch1x1", x),
            c("branch3x3_2a", b3), c("branch3x3_2b", b3),
            c("branch3x3dbl_3a", bd), c("branch3x3dbl_3b", bd),
            c("branch_pool", pool)], axis=-1)
    raise ValueError(f"unknown Inception block kind {kind!r}")


def preprocess(images: Array, *, resize: bool = True) -> Array:
    """``[N, H, W, 3]`` images in [0, 1] (float) or uint8 -> float32 in [-1, 1] at 299x299."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"inception expects [N, H, W, 3] images, got shape {images.shape}")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
    if resize:
        x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), align_corners=False, antialias=False)
    return 2.0 * x - 1.0


def pool3(params: Params, x: Array) -> Array:
    """The network on preprocessed ``[N, H, W, 3]`` input in [-1, 1] -> ``[N, 2048]`` (global
    average of Mixed_7c)."""
    h = x
    for name, kind, spec in LAYERS:
        if kind == "conv":
            h = basic_conv(params[name], h, spec)
        elif kind == "maxpool":
            h = _max_pool(h, 2, 0)
        else:
            h = _mixed(kind, params[name], h, spec)
    return jnp.mean(h, axis=(1, 2))


def inception_features(params: Params, images: Array, *, resize: bool = True) -> Array:
    """FID/KID features, ``[N, 2048]`` float32. ``images``: ``[N, H, W, 3]``, float in [0, 1]
    or uint8; resized to 299x299 unless ``resize=False`` (then any size of at least 75 px)."""
    return pool3(params, preprocess(jnp.asarray(images), resize=resize))


def logits(params: Params, features: Array) -> Array:
    """``[N, 2048]`` pool3 features -> ``[N, 1008]`` logits of the TF graph's classifier."""
    return features @ params["fc"]["weight"] + params["fc"]["bias"]


@functools.cache
def _features_jit() -> Callable:
    return jit(inception_features, static_argnames=("resize",))


def features_in_batches(params: Params, images, *, batch_size: int = 50,
                        resize: bool = True) -> np.ndarray:
    """Features of many images (``[N, H, W, 3]`` array, or a sequence of same-size images) in
    batches of ``batch_size``; the last batch is padded so one compiled call serves all.
    Returns a float32 numpy array ``[N, 2048]``."""
    n = len(images)
    out = []
    for i in range(0, n, batch_size):
        batch = np.asarray(images[i:i + batch_size])
        k = len(batch)
        if k < batch_size:
            pad = np.zeros((batch_size - k, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        out.append(np.asarray(_features_jit()(params, batch, resize=resize))[:k])
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def load_inception(directory: str | os.PathLike) -> Params:
    """Converted FID Inception params from ``directory`` (``params.safetensors`` +
    ``config.json``, written by ``python -m convert_weights.inception``). Raises
    ``MissingWeightsError`` naming the convert command if the files are not there."""
    from jaxhead.errors import DataError, MissingWeightsError
    from jaxhead.utils.params_io import check_tree, load_params

    try:
        params, config = load_params(directory, what="FID Inception-v3",
                                     convert_hint=CONVERT_HINT)
    except FileNotFoundError as e:
        raise MissingWeightsError(str(e)) from None
    if config.get("model") != MODEL_NAME:
        raise DataError(f"{directory}: not converted FID Inception weights (config.json model="
                        f"{config.get('model')!r}, expected {MODEL_NAME!r})")
    try:
        check_tree(params, param_shapes(), what=f"Inception params in {directory}")
    except ValueError as e:
        raise DataError(str(e)) from None
    return jax.tree.map(jnp.asarray, params)


__all__ = ["FEATURE_DIM", "LAYERS", "basic_conv", "features_in_batches", "inception_features",
           "load_inception", "logits", "param_shapes", "pool3", "preprocess", "random_params"]
