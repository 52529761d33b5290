"""Depth Anything V2 in Flax (DINOv2 ViT backbone + DPT head) and the depth control image.

Module and parameter names mirror the official PyTorch implementation
(DepthAnything/Depth-Anything-V2, ``depth_anything_v2/dpt.py`` and ``dinov2.py``): ``pretrained``
is the DINOv2 ViT (patch 14, no register tokens, layer scale), ``depth_head`` the DPT head with its
``projects_i`` / ``resize_layers_i`` / ``scratch`` submodules. ModuleList entries are ``name_i``.
``convert_weights.depth_anything`` maps both the official state dict and a transformers
``DepthAnythingForDepthEstimation`` folder onto these names.

Everything is NHWC. Resizes that must match PyTorch / OpenCV / PIL exactly (bilinear with
``align_corners=True`` from ``jaxhead.ops.resize``; here bicubic with A = -0.75 and clamped
borders, and PIL's antialiased Lanczos) are small interpolation matrices built at trace time
(static shapes) and applied as matmuls: exact up to float rounding, and on the accelerator.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.ops.resize import resize_bilinear

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVERT_HINT = "python -m convert_weights.depth_anything depth_anything_v2_vitb.pth {dst}"


@dataclasses.dataclass(frozen=True)
class DepthAnythingConfig:
    """Architecture of one Depth Anything V2 model (defaults: ViT-B, the paper's choice)."""

    embed_dim: int = 768  # ViT width
    depth: int = 12  # number of ViT blocks
    num_heads: int = 12  # attention heads (official models: embed_dim // 64)
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pos_grid: int = 37  # side of the stored position-embedding grid (518 / 14)
    intermediate_layers: tuple[int, ...] = (2, 5, 8, 11)  # 0-based blocks fed to the DPT head
    features: int = 128  # DPT fusion width
    out_channels: tuple[int, ...] = (96, 192, 384, 768)  # DPT reassemble widths
    head_hidden: int = 32  # width of the last 3x3 conv of the head
    layer_norm_eps: float = 1e-6
    # Position-embedding interpolation for token grids other than pos_grid x pos_grid: the source
    # index scale is pos_grid / (grid + offset). Official DINOv2 uses offset 0.1 (scale_factor
    # mode); transformers uses 0.0 (size mode). 518 px square inputs never interpolate.
    interpolate_offset: float = 0.1

    def __post_init__(self):
        if len(self.out_channels) != 4 or len(self.intermediate_layers) != 4:
            raise ValueError("Depth Anything V2 uses exactly 4 intermediate layers / out_channels")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        object.__setattr__(self, "out_channels", tuple(int(c) for c in self.out_channels))
        object.__setattr__(self, "intermediate_layers",
                           tuple(int(i) for i in self.intermediate_layers))

    def to_dict(self) -> dict[str, Any]:
        return {"model": "depth_anything_v2", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthAnythingConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"model", "source"})
        if unknown:
            raise ValueError(f"unknown Depth Anything config fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})


# The official checkpoints (Depth-Anything-V2 README / run.py model_configs).
CONFIGS = {
    "vits": DepthAnythingConfig(embed_dim=384, num_heads=6, features=64,
                                out_channels=(48, 96, 192, 384)),
    "vitb": DepthAnythingConfig(),
    "vitl": DepthAnythingConfig(embed_dim=1024, depth=24, num_heads=16, features=256,
                                out_channels=(256, 512, 1024, 1024),
                                intermediate_layers=(4, 11, 17, 23)),
}


# ----------------------------------------------------------------------------------------------
# Interpolation matrices (numpy, float64 -> float32), [out, in].


@cache
def cubic_matrix(n_in: int, n_out: int, scale: float | None = None) -> np.ndarray:
    """Bicubic (A = -0.75, half-pixel centres, clamped borders) along one axis: OpenCV's
    ``INTER_CUBIC`` and PyTorch's ``bicubic, align_corners=False``. ``scale`` = source pixels per
    output pixel (default ``n_in / n_out``; PyTorch's ``scale_factor`` mode passes ``1 / factor``).
    No antialiasing (neither library antialiases here)."""
    a = -0.75
    scale = n_in / n_out if scale is None else scale
    src = scale * (np.arange(n_out) + 0.5) - 0.5
    x0 = np.floor(src).astype(int)
    t = src - x0
    m = np.zeros((n_out, n_in))
    for k in range(-1, 3):
        d = np.abs(k - t)
        w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                     np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
        np.add.at(m, (np.arange(n_out), np.clip(x0 + k, 0, n_in - 1)), w)
    return m.astype(np.float32)


@cache
def lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """PIL ``Image.resize(..., LANCZOS)`` along one axis (support 3, antialiased when shrinking,
    weights normalized per output pixel), as used by diffusers' ControlNet image processor."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 3.0 * fscale
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        x = (np.arange(lo, hi) - center + 0.5) / fscale
        w = np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
        m[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    return m.astype(np.float32)


def _apply(mat: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
    """Resample ``x`` along ``axis`` with a constant ``[out, in]`` matrix (fp32, exact matmul)."""
    x = jnp.moveaxis(x, axis, -1)
    y = jnp.einsum("...i,oi->...o", x, jnp.asarray(mat, x.dtype),
                   precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(y, -1, axis)


def resize_cubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, *size, C]``, ``cv2.resize(..., INTER_CUBIC)`` semantics."""
    x = _apply(cubic_matrix(x.shape[1], size[0]), x, 1)
    return _apply(cubic_matrix(x.shape[2], size[1]), x, 2)


def resize_control(control: jax.Array, size: tuple[int, int] | int) -> jax.Array:
    """Resize a ``[0, 1]`` control image ``[B, H, W, C]`` as diffusers' ControlNet pipeline does
    with a uint8 PIL image: Lanczos, width pass then height pass, each rounded to 1/255 levels.

    ``control`` must already hold multiples of 1/255 (see :func:`depth_control`).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = jnp.round(control * 255.0)
    if size[1] != x.shape[2]:
        x = jnp.clip(jnp.floor(_apply(lanczos_matrix(x.shape[2], size[1]), x, 2) + 0.5), 0, 255)
    if size[0] != x.shape[1]:
        x = jnp.clip(jnp.floor(_apply(lanczos_matrix(x.shape[1], size[0]), x, 1) + 0.5), 0, 255)
    return x / 255.0


# ----------------------------------------------------------------------------------------------
# Network.


def _conv(features: int, k: int, name: str, *, stride: int = 1, bias: bool = True) -> nn.Conv:
    pad = k // 2
    return nn.Conv(features, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                   use_bias=bias, name=name)


class ConvTranspose(nn.Module):
    """PyTorch ``ConvTranspose2d(c, c, kernel_size=f, stride=f, padding=0)``: every input pixel
    becomes an ``f x f`` patch (no overlap), so it is one einsum. kernel ``[f, f, in, out]``."""

    features: int
    factor: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f = self.factor
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (f, f, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel)
        b, h, _, w, _, o = y.shape
        return y.reshape(b, h * f, w * f, o) + bias


class Attention(nn.Module):
    """Multi-head self-attention with fused ``qkv`` (q, k, v blocks of ``dim`` outputs each)."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        qkv = nn.Dense(3 * d, name="qkv")(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
        y = jax.nn.dot_product_attention(q, k, v)
        return nn.Dense(d, name="proj")(y.reshape(b, n, d))


class Mlp(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(nn.Dense(self.hidden, name="fc1")(x), approximate=False)
        return nn.Dense(x.shape[-1], name="fc2")(h)


class LayerScale(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.param("gamma", nn.initializers.ones, (x.shape[-1],))


class Block(nn.Module):
    """Pre-norm ViT block with layer scale:
    ``x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))``."""

    config: DepthAnythingConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False,
                                         name=name)
        x = x + LayerScale(name="ls1")(Attention(c.num_heads, name="attn")(norm("norm1")(x)))
        hidden = int(c.embed_dim * c.mlp_ratio)
        return x + LayerScale(name="ls2")(Mlp(hidden, name="mlp")(norm("norm2")(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv ``proj``: ``[B, H, W, 3]`` -> tokens ``[B, N, D]``."""

    embed_dim: int
    patch: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch
        y = nn.Conv(self.embed_dim, (p, p), strides=p, padding="VALID", name="proj")(x)
        return y.reshape(y.shape[0], -1, self.embed_dim)


def interpolate_pos_embed(pos_embed: jax.Array, grid: tuple[int, int], pixels: tuple[int, int],
                          offset: float) -> jax.Array:
    """Position embeddings ``[1, 1 + S*S, D]`` for a ``grid`` of tokens (``pixels`` = input size).

    Kept as stored when the token count matches and the input is square (both reference
    implementations' condition); otherwise the patch part is resampled bicubically (PyTorch
    ``bicubic, align_corners=False``) with source scale ``S / (grid + offset)``.
    """
    s = math.isqrt(pos_embed.shape[1] - 1)
    if grid[0] * grid[1] == s * s and pixels[0] == pixels[1]:
        return pos_embed
    cls_pos, patch = pos_embed[:, :1], pos_embed[:, 1:].reshape(1, s, s, -1)
    patch = _apply(cubic_matrix(s, grid[0], s / (grid[0] + offset)), patch, 1)
    patch = _apply(cubic_matrix(s, grid[1], s / (grid[1] + offset)), patch, 2)
    return jnp.concatenate([cls_pos, patch.reshape(1, grid[0] * grid[1], -1)], axis=1)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT without registers. Returns the final-normed patch tokens ``[B, gh*gw, D]`` of
    each block in ``config.intermediate_layers``."""

    config: DepthAnythingConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        c = self.config
        b, h, w, _ = x.shape
        p = c.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {p}")
        tokens = PatchEmbed(c.embed_dim, p, name="patch_embed")(x)
        gh, gw = h // p, w // p
        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, c.embed_dim))
        pos_embed = self.param("pos_embed", init, (1, c.pos_grid ** 2 + 1, c.embed_dim))
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, c.embed_dim)), tokens], axis=1)
        x = x + interpolate_pos_embed(pos_embed, (gh, gw), (h, w), c.interpolate_offset)
        norm = nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name="norm")
        outs = []
        for i in range(c.depth):  # XLA drops blocks after the last intermediate layer
            x = Block(c, name=f"blocks_{i}")(x)
            if i in c.intermediate_layers:
                outs.append(norm(x)[:, 1:])
        return outs


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (3x3 convs, no batch norm)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f = x.shape[-1]
        y = _conv(f, 3, "conv1")(jax.nn.relu(x))
        return x + _conv(f, 3, "conv2")(jax.nn.relu(y))


class FeatureFusionBlock(nn.Module):
    """DPT fusion: add the refined skip, refine, upsample (bilinear, align_corners) to ``size``
    (default 2x), 1x1 ``out_conv``. The deepest block has no skip, so its ``resConfUnit1``
    weights exist in checkpoints but are never used (the converter drops them)."""

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None,
                 size: tuple[int, int] | None = None) -> jax.Array:
        if skip is not None:
            x = x + ResidualConvUnit(name="resConfUnit1")(skip)
        x = ResidualConvUnit(name="resConfUnit2")(x)
        x = resize_bilinear(x, size or (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        return _conv(x.shape[-1], 1, "out_conv")(x)


class Scratch(nn.Module):
    """DPT ``scratch``: per-level 3x3 ``layerN_rn``, fusion ``refinenet4..1`` and the output convs.
    Returns the non-negative depth ``[B, gh*patch, gw*patch, 1]``."""

    config: DepthAnythingConfig

    @nn.compact
    def __call__(self, levels: Sequence[jax.Array], grid: tuple[int, int]) -> jax.Array:
        c = self.config
        l1, l2, l3, l4 = (_conv(c.features, 3, f"layer{i + 1}_rn", bias=False)(x)
                          for i, x in enumerate(levels))
        path = FeatureFusionBlock(name="refinenet4")(l4, size=l3.shape[1:3])
        path = FeatureFusionBlock(name="refinenet3")(path, l3, size=l2.shape[1:3])
        path = FeatureFusionBlock(name="refinenet2")(path, l2, size=l1.shape[1:3])
        path = FeatureFusionBlock(name="refinenet1")(path, l1)
        out = _conv(c.features // 2, 3, "output_conv1")(path)
        out = resize_bilinear(out, (grid[0] * c.patch_size, grid[1] * c.patch_size),
                              align_corners=True)
        out = jax.nn.relu(_conv(c.head_hidden, 3, "output_conv2_0")(out))
        return jax.nn.relu(_conv(1, 1, "output_conv2_2")(out))


class DPTHead(nn.Module):
    """Reassemble the 4 token maps to strides 4, 8, 16, 32 (relative to the patch grid x 4) and
    fuse them into a depth map."""

    config: DepthAnythingConfig

    @nn.compact
    def __call__(self, tokens: Sequence[jax.Array], grid: tuple[int, int]) -> jax.Array:
        c = self.config
        levels = []
        for i, (x, ch) in enumerate(zip(tokens, c.out_channels, strict=True)):
            x = x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])
            x = _conv(ch, 1, f"projects_{i}")(x)
            if i < 2:  # ConvTranspose 4x4 / 2x2, stride = kernel
                x = ConvTranspose(ch, 4 // (i + 1), name=f"resize_layers_{i}")(x)
            elif i == 3:  # 3x3 stride-2 conv; level 2 stays at the patch grid
                x = _conv(ch, 3, "resize_layers_3", stride=2)(x)
            levels.append(x)
        return Scratch(c, name="scratch")(levels, grid)


class DepthAnythingV2(nn.Module):
    """Relative inverse depth (disparity-like: near = large) from normalized images.

    ``__call__(x)``: ``x`` ``[B, H, W, 3]`` ImageNet-normalized RGB with H, W multiples of the
    patch size (518 x 518 for 512 px renders) -> ``[B, H, W]`` non-negative float32.
    """

    config: DepthAnythingConfig = DepthAnythingConfig()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.config.patch_size
        grid = (x.shape[1] // p, x.shape[2] // p)
        tokens = DinoVisionTransformer(self.config, name="pretrained")(x)
        return DPTHead(self.config, name="depth_head")(tokens, grid)[..., 0]

    def param_shapes(self) -> Any:
        """Expected variables tree (``ShapeDtypeStruct`` leaves) for ``params_io.check_tree``."""
        s = self.config.pos_grid * self.config.patch_size
        return jax.eval_shape(self.init, jax.random.key(0), jnp.zeros((1, s, s, 3)))


# ----------------------------------------------------------------------------------------------
# Pre-/post-processing and the control image.


def net_input_size(h: int, w: int, input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Network input size for an ``h x w`` image, as the official ``Resize`` transform
    (keep aspect ratio, ``lower_bound``: the short side becomes ``input_size``; each side rounded
    half-to-even to a multiple of ``multiple``, rounded up if that falls below ``input_size``).
    512 x 512 -> 518 x 518."""
    scale = max(input_size / h, input_size / w)

    def constrain(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return y if y >= input_size else int(np.ceil(x / multiple) * multiple)

    return constrain(scale * h), constrain(scale * w)


def preprocess(images01: jax.Array, input_size: int = 518, multiple: int = 14) -> jax.Array:
    """``[B, H, W, 3]`` RGB in [0, 1] -> network input: bicubic resize (``cv2.INTER_CUBIC``
    semantics) to :func:`net_input_size`, then ImageNet mean/std normalization."""
    x = resize_cubic(images01.astype(jnp.float32),
                     net_input_size(*images01.shape[1:3], input_size, multiple))
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def depth_control(model: DepthAnythingV2, params: Any, images: jax.Array,
                  out_size: int | tuple[int, int] | None = None, *, input_size: int = 518,
                  quantize: bool = True) -> jax.Array:
    """Depth ControlNet image from generator renders, following the official ``train_LD.py``.

    Steps (per image): ``x01 = 0.5 * x + 0.5`` (not clipped, as the official code); resize to the
    518-px network input (:func:`preprocess`); Depth Anything V2; bilinear (align_corners) back to
    ``H x W``; min-max normalize ``(d - min) / (max - min + 1e-6)``; with ``quantize``, truncate
    to 1/255 levels (the official ``(d * 255).astype(uint8)``); resize to ``out_size`` with PIL's
    Lanczos on those levels (diffusers' control-image resize, :func:`resize_control`); 3 channels.

    The official grid path min-max normalizes each 512 px view, tiles 4 views into a 1024 grid
    and lets diffusers resize the grid to 512: call this with ``out_size=None`` and resize the
    assembled grid with :func:`resize_control`, or with ``out_size=256`` per view (identical but
    for Lanczos taps crossing tile seams: <= 3 output px either side of a seam).

    Args:
      model, params: from :func:`load` (bind ``model`` with ``functools.partial`` before jit).
      images: ``[B, H, W, 3]`` RGB in ``[-1, 1]`` (generator output convention).
      out_size: output side or ``(h, w)``; None keeps ``H x W``.
      input_size: short side of the network input (official 518).
      quantize: mimic the uint8 round trips of the official control image.

    Returns:
      ``[B, out_h, out_w, 3]`` float32 in [0, 1] (near = bright). Gradients are stopped.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images [B, H, W, 3], got shape {images.shape}")
    h, w = images.shape[1:3]
    x = preprocess(0.5 * images + 0.5, input_size, model.config.patch_size)
    d = model.apply(params, x)[..., None]  # [B, h', w', 1]
    d = resize_bilinear(d, (h, w), align_corners=True)
    lo = d.min(axis=(1, 2, 3), keepdims=True)
    hi = d.max(axis=(1, 2, 3), keepdims=True)
    d = (d - lo) / (hi - lo + 1e-6)
    size = (h, w) if out_size is None else (
        (out_size, out_size) if isinstance(out_size, int) else tuple(out_size))
    if quantize:
        d = jnp.floor(d * 255.0) / 255.0
        if size != (h, w):
            d = resize_control(d, size)
    elif size != (h, w):
        d = _apply(lanczos_matrix(w, size[1]), _apply(lanczos_matrix(h, size[0]), d, 1), 2)
    return jax.lax.stop_gradient(jnp.repeat(d, 3, axis=-1))


# ----------------------------------------------------------------------------------------------
# Loading converted weights.


def weights_available(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a converted model (``params.safetensors`` + ``config.json``)."""
    from jaxhead.utils.params_io import CONFIG_FILE, PARAMS_FILE

    return (Path(path) / PARAMS_FILE).is_file() and (Path(path) / CONFIG_FILE).is_file()


def load(path: str | os.PathLike, *, verify: bool = True) -> tuple[DepthAnythingV2, Any]:
    """Load converted Depth Anything V2 weights: ``(module, params)``.

    Raises ``MissingWeightsError`` (a ``FileNotFoundError``) naming the missing files and the
    convert command, and ``DataError`` (a ``ValueError``) for a corrupted file (``verify``:
    content hash and finiteness) or missing / unexpected / mis-shaped parameters.
    """
    from jaxhead.errors import DataError
    from jaxhead.utils.params_io import check_tree, data_errors, load_params

    params, cfg = load_params(path, what="Depth Anything V2",
                              convert_hint=CONVERT_HINT.format(dst=path), verify=verify)
    if cfg.get("model") != "depth_anything_v2":
        raise DataError(f"{str(path)!r} holds a {cfg.get('model')!r} model, "
                        "not depth_anything_v2")
    with data_errors(f"{os.fspath(path)}/config.json"):
        model = DepthAnythingV2(DepthAnythingConfig.from_dict(cfg))
    check_tree(params, model.param_shapes(), what=f"parameters in {str(path)!r}")
    return model, jax.tree.map(jnp.asarray, params)
