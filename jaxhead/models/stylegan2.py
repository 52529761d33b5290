"""StyleGAN2 building blocks (mapping, modulated conv, synthesis network), NHWC Flax linen.

Parameters keep the PyTorch names and the original equalized-learning-rate parameterisation: the
raw stored weight (``weight``, ``bias``) is a parameter and its runtime gain is applied in the
forward pass, so converted weights are the PyTorch numbers (conv weights transposed to HWIO,
dense weights kept ``[out, in]``). Buffers (``w_avg``, ``noise_const``) live in the ``buffers``
collection so that optimizers never touch them.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.ops.upfirdn import conv2d, conv2d_up2, upsample2d

NOISE_MODES = ("random", "const", "none")
_SQRT2 = math.sqrt(2.0)


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``x / sqrt(mean(x^2) + eps)`` over the last axis."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def bias_act(x: jax.Array, b: jax.Array | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> jax.Array:
    """Bias, activation (``linear`` or ``lrelu`` with slope 0.2), gain, clamp (channels last)."""
    if b is not None:
        x = x + b.astype(x.dtype)
    if act == "lrelu":
        x = jnp.where(x >= 0, x, x * 0.2)
        gain = _SQRT2 if gain is None else gain
    elif act == "softplus":
        x = jax.nn.softplus(x)
    elif act != "linear":
        raise ValueError(f"unsupported activation {act!r}")
    if gain is not None and gain != 1:
        x = x * gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def _randn(shape):
    return lambda key, *_: jax.random.normal(key, shape, jnp.float32)


class FullyConnectedLayer(nn.Module):
    """Equalized-LR dense layer; ``weight`` stored ``[out, in]`` as in PyTorch."""

    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "linear"
    lr_multiplier: float = 1.0
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weight", lambda k: jax.random.normal(
            k, (self.out_features, self.in_features)) / self.lr_multiplier)
        w = w.astype(x.dtype) * (self.lr_multiplier / np.sqrt(self.in_features))
        b = None
        if self.bias:
            b = self.param("bias", lambda k: jnp.full((self.out_features,), self.bias_init,
                                                      jnp.float32))
            b = b.astype(x.dtype) * self.lr_multiplier
        x = jnp.matmul(x, w.T)
        return bias_act(x, b, self.activation)


class MappingNetwork(nn.Module):
    """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] with truncation toward ``w_avg``."""

    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    num_layers: int = 8
    lr_multiplier: float = 0.01
    last_activation: str = "lrelu"  # PanoHead's t_mapping: "linear"

    @nn.compact
    def __call__(self, z: jax.Array, c: jax.Array, truncation_psi: float = 1.0,
                 truncation_cutoff: int | None = None) -> jax.Array:
        x = normalize_2nd_moment(z.astype(jnp.float32))
        if self.c_dim > 0:
            y = FullyConnectedLayer(self.c_dim, self.w_dim, name="embed")(c.astype(jnp.float32))
            x = jnp.concatenate([x, normalize_2nd_moment(y)], axis=1)
        feats = [x.shape[1]] + [self.w_dim] * self.num_layers
        for i in range(self.num_layers):
            act = self.last_activation if i == self.num_layers - 1 else "lrelu"
            x = FullyConnectedLayer(feats[i], feats[i + 1], activation=act,
                                    lr_multiplier=self.lr_multiplier, name=f"fc{i}")(x)
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,)).value
        x = jnp.broadcast_to(x[:, None], (x.shape[0], self.num_ws, self.w_dim))
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else min(truncation_cutoff, self.num_ws)
            trunc = w_avg + truncation_psi * (x[:, :cut] - w_avg)
            x = jnp.concatenate([trunc, x[:, cut:]], axis=1)
        return x


def modulated_conv2d(x: jax.Array, weight: jax.Array, styles: jax.Array, *,
                     demodulate: bool = True, up: int = 1, padding: int = 0) -> jax.Array:
    """StyleGAN2 modulated convolution, batched without grouped convs.

    ``x * styles -> conv(weight) -> * dcoefs``, which equals the fused grouped form of the
    reference. x ``[N, H, W, I]``, weight HWIO ``[k, k, I, O]``, styles ``[N, I]``.
    """
    x = x * styles[:, None, None, :].astype(x.dtype)
    if up == 1:
        y = conv2d(x, weight, padding)
    else:
        y = conv2d_up2(x, weight, padding=padding)
    if demodulate:
        wsq = jnp.sum(jnp.square(weight), axis=(0, 1))  # [I, O]
        dcoefs = jax.lax.rsqrt(jnp.matmul(jnp.square(styles), wsq,
                                          precision=jax.lax.Precision.HIGHEST) + 1e-8)
        y = y * dcoefs[:, None, None, :].astype(y.dtype)
    return y


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up), noise, bias + lrelu, optional clamp."""

    in_channels: int
    out_channels: int
    w_dim: int
    resolution: int
    up: int = 1
    use_noise: bool = True
    conv_clamp: float | None = None
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str = "random") -> jax.Array:
        styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0,
                                     name="affine")(w)
        k = self.kernel_size
        weight = self.param("weight", _randn((k, k, self.in_channels, self.out_channels)))
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        noise = None
        if self.use_noise:
            res = self.resolution
            noise_const = self.variable("buffers", "noise_const",
                                        lambda: jax.random.normal(self.make_rng("params"),
                                                                  (res, res)))
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            if noise_mode == "random":
                noise = jax.random.normal(self.make_rng("noise"), (x.shape[0], res, res, 1),
                                          x.dtype) * strength
            elif noise_mode == "const":
                noise = (noise_const.value * strength)[None, :, :, None]
        x = modulated_conv2d(x, weight, styles, up=self.up, padding=k // 2)
        if noise is not None:
            x = x + noise.astype(x.dtype)
        return bias_act(x, bias, "lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation, bias, optional clamp."""

    in_channels: int
    out_channels: int
    w_dim: int
    conv_clamp: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0,
                                     name="affine")(w)
        styles = styles * (1.0 / np.sqrt(self.in_channels))
        weight = self.param("weight", _randn((1, 1, self.in_channels, self.out_channels)))
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        x = modulated_conv2d(x, weight, styles, demodulate=False)
        return bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' synthesis network: (const | up-conv), conv, ToRGB."""

    in_channels: int  # 0 = first block (learned constant input)
    out_channels: int
    w_dim: int
    resolution: int
    img_channels: int
    is_last: bool
    conv_clamp: float | None = None

    @property
    def num_conv(self) -> int:
        return 1 if self.in_channels == 0 else 2

    @nn.compact
    def __call__(self, x: jax.Array | None, img: jax.Array | None, ws: jax.Array,
                 noise_mode: str = "random") -> tuple[jax.Array, jax.Array]:
        """ws ``[N, num_conv + 1, w_dim]``; x, img ``[N, res/2, res/2, C]`` (or None)."""
        n = ws.shape[0]
        kw: dict[str, Any] = dict(w_dim=self.w_dim, resolution=self.resolution,
                                  conv_clamp=self.conv_clamp)
        if self.in_channels == 0:
            r = self.resolution
            const = self.param("const", _randn((r, r, self.out_channels)))
            x = jnp.broadcast_to(const[None], (n,) + const.shape)
            x = SynthesisLayer(self.out_channels, self.out_channels, name="conv1", **kw)(
                x, ws[:, 0], noise_mode)
        else:
            x = SynthesisLayer(self.in_channels, self.out_channels, up=2, name="conv0", **kw)(
                x, ws[:, 0], noise_mode)
            x = SynthesisLayer(self.out_channels, self.out_channels, name="conv1", **kw)(
                x, ws[:, 1], noise_mode)
        if img is not None:
            img = upsample2d(img)
        y = ToRGBLayer(self.out_channels, self.img_channels, self.w_dim,
                       conv_clamp=self.conv_clamp, name="torgb")(x, ws[:, self.num_conv])
        img = y if img is None else img + y
        return x, img


def block_channels(img_resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """``{res: min(channel_base // res, channel_max)}`` for res = 4 .. img_resolution."""
    log2 = int(np.log2(img_resolution))
    return {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(2, log2 + 1)}


def synthesis_num_ws(img_resolution: int) -> int:
    """Number of ws consumed by a skip synthesis network: 2 per block, -1 for b4, +1 ToRGB."""
    n_blocks = int(np.log2(img_resolution)) - 1
    return 2 * n_blocks


class SynthesisNetwork(nn.Module):
    """ws ``[N, num_ws, w_dim]`` -> image ``[N, R, R, img_channels]`` ('skip' architecture)."""

    w_dim: int
    img_resolution: int
    img_channels: int
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None

    @property
    def num_ws(self) -> int:
        return synthesis_num_ws(self.img_resolution)

    @nn.compact
    def __call__(self, ws: jax.Array, noise_mode: str = "random") -> jax.Array:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {ws.shape}")
        ch = block_channels(self.img_resolution, self.channel_base, self.channel_max)
        x = img = None
        w_idx = 0
        for res in ch:
            block = SynthesisBlock(ch[res // 2] if res > 4 else 0, ch[res], self.w_dim, res,
                                   self.img_channels, res == self.img_resolution,
                                   conv_clamp=self.conv_clamp, name=f"b{res}")
            x, img = block(x, img, ws[:, w_idx: w_idx + block.num_conv + 1], noise_mode)
            w_idx += block.num_conv
        return img
