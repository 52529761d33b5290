"""Building blocks shared by the Stable Diffusion networks (UNet, ControlNet, VAE) in Flax.

Layout is NHWC. Submodule names mirror diffusers' PyTorch attribute paths with ``.N`` written
as ``_N`` (``down_blocks.0.resnets.1.conv1`` -> ``down_blocks_0/resnets_1/conv1``), so weight
conversion is a rename plus layout rules (see :mod:`jaxhead.models.sd_convert`).

Numerics: activations run in ``dtype`` (float32 or bfloat16); normalisation statistics, softmax
and the timestep embedding are always computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes as flax_dtypes

from jaxhead.ops import platform
from jaxhead.ops.depend import tie_to

Array = jax.Array
Dtype = Any

# Attention implementations (see :func:`attention`).
ATTENTION_IMPLS = ("auto", "dense", "chunked", "cudnn")
# "auto" switches from dense to blocked attention (one head at a time) from this many logits per
# (batch, head): the self-attention at 64x64 and 32x32 latents (4096 and 1024 tokens) is blocked,
# cross-attention (x 77) and the 16x16 / 8x8 self-attention stay dense (measured on a 2-core CPU:
# 1024 x 1024 tokens 97 -> 36 ms, 4096 x 4096 920 -> 340 ms; 256 x 256 and x 77 no faster).
_AUTO_CHUNK_MIN_LOGITS = 1 << 20


# ----------------------------------------------------------------------------------------------
# Attention core
# ----------------------------------------------------------------------------------------------


def _dense_attention(q: Array, k: Array, v: Array, bias: Array | None) -> Array:
    """Softmax attention. q [B, N, H, D], k/v [B, M, H, D], bias broadcastable to [B, H, N, M].

    Logits and the softmax are float32. The normalisation is applied to the [N, D] output
    instead of the [N, M] probabilities (one pass less over the largest array).
    """
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)  # scale the small operand
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits)  # in (0, 1]
    denom = jnp.sum(weights, axis=-1)  # [B, H, N]
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return (out / denom.transpose(0, 2, 1)[..., None]).astype(v.dtype)


def _block_attention(q: Array, k: Array, v: Array, bias: Array | None) -> Array:
    """Softmax attention of one head as plain matrix products: q [c, D], k/v [M, D], bias
    [1, M] or None -> [c, D] (float32 logits and softmax, as :func:`_dense_attention`)."""
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.matmul(q, k.T, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits)
    out = jnp.matmul(weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.sum(weights, axis=-1, keepdims=True)).astype(v.dtype)


def _chunked_attention(q: Array, k: Array, v: Array, bias: Array | None,
                       chunk_size: int) -> Array:
    """Exact attention over blocks of ``chunk_size`` queries of one (batch, head) at a time.

    Each block's logits ([chunk_size, M], 16 MB at 1024 x 4096) stay in the CPU's cache through
    the logits GEMM, the exp and the second GEMM instead of going through memory three times,
    and the products are plain 2-D GEMMs: the SD UNet's 4096-token self-attention ([2, 4096, 8,
    40]) runs in 0.34 s instead of 0.92 s with all heads in one block on a 2-core CPU (torch's
    fused CPU kernel: 0.34 s; docs/performance.md). Peak memory for the logits is one block;
    each block is rematerialised in a backward pass instead of stored.
    """
    b, n, h, d = q.shape
    m = k.shape[1]
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    if bias is not None and bias.shape[-2] != 1:
        raise ValueError("chunked attention supports key masks only (bias [..., 1, M])")
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q
    # heads-major: [B*H, C, c, D] query blocks, [B*H, M, D] keys / values, [B*H, 1, M] bias
    qh = qp.transpose(0, 2, 1, 3).reshape(b * h, n_chunks, chunk_size, d)
    kh = k.transpose(0, 2, 1, 3).reshape(b * h, m, d)
    vh = v.transpose(0, 2, 1, 3).reshape(b * h, m, d)
    bh = None if bias is None else jnp.broadcast_to(bias, (b, h, 1, m)).reshape(b * h, 1, m)

    def one_head(args):
        qi, ki, vi, bi = args
        block = jax.checkpoint(lambda qc: _block_attention(qc, ki, vi, bi))
        return jax.lax.map(block, qi)  # [C, c, D]

    out = jax.lax.map(one_head, (qh, kh, vh, bh))  # [B*H, C, c, D]
    out = out.reshape(b, h, n_chunks * chunk_size, d).transpose(0, 2, 1, 3)
    return out[:, :n] if pad else out


def attention(q: Array, k: Array, v: Array, *, bias: Array | None = None, impl: str = "auto",
              chunk_size: int = 1024) -> Array:
    """Multi-head scaled dot-product attention.

    Args:
      q: queries [B, N, H, D]; k, v: keys/values [B, M, H, D].
      bias: additive logit bias broadcastable to [B, H, N, M] (a mask as 0 / a large negative
        finite value such as float32 min; a row masked entirely by -inf gives NaN), or None.
      impl: "dense" (materialise all logits), "chunked" (exact, blocks of ``chunk_size`` queries
        of one head at a time: memory-efficient, and on CPU the fastest for long sequences),
        "cudnn" (``jax.nn.dot_product_attention`` flash kernel,
        GPU with fp16/bf16 only) or "auto": in programs lowered for CPU chunked for large
        N*M, else dense; for GPU / TPU ``jax.nn.dot_product_attention`` with XLA's choice of
        implementation (:func:`jaxhead.ops.platform.per_platform`).
    Returns:
      [B, N, H, D] in v's dtype.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")
    n = q.shape[1]
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")
    if impl == "auto":
        return platform.per_platform(
            q, k, v, bias, cpu=lambda *a: _cpu_attention(*a, chunk_size=chunk_size),
            accelerator=_accelerator_attention)
    if impl == "chunked":
        return _chunked_attention(q, k, v, bias, min(chunk_size, n))
    return _dense_attention(q, k, v, bias)


def _cpu_attention(q: Array, k: Array, v: Array, bias: Array | None, *,
                   chunk_size: int) -> Array:
    """"auto" on CPU: blocked attention for large N*M with a key mask, else dense."""
    n, m = q.shape[1], k.shape[1]
    key_mask_only = bias is None or bias.shape[-2] == 1
    if n * m >= _AUTO_CHUNK_MIN_LOGITS and key_mask_only:
        with jax.named_scope(platform.CPU_ATTENTION):
            return _chunked_attention(q, k, v, bias, min(chunk_size, n))
    return _dense_attention(q, k, v, bias)


def _accelerator_attention(q: Array, k: Array, v: Array, bias: Array | None) -> Array:
    """"auto" on GPU / TPU: ``jax.nn.dot_product_attention`` (XLA's; cuDNN where it picks)."""
    with jax.named_scope(platform.ACCEL_ATTENTION):
        return jax.nn.dot_product_attention(q, k, v, bias=bias)


# ----------------------------------------------------------------------------------------------
# Small layers
# ----------------------------------------------------------------------------------------------


def group_norm(num_groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    """torch.nn.GroupNorm equivalent (two-pass variance, float32 statistics)."""
    return nn.GroupNorm(num_groups=num_groups, epsilon=eps, dtype=dtype, use_fast_variance=False,
                        name=name)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm equivalent over the last axis."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def promote_after_input(*args: Array | None, dtype: Dtype = None, inexact: bool = True
                        ) -> list[Array | None]:
    """flax's ``promote_dtype`` for a layer's ``(inputs, kernel, bias)``, where on CPU the
    low-precision weights are made to depend on the layer's input first.

    XLA:CPU has no bfloat16 convolution or GEMM, so it converts bfloat16 weights to float32.
    Those converts depend on parameters only, and its scheduler ran them all early: the whole
    teacher's float32 copy was live at once (a bfloat16 SD UNet forward planned 3.2 GiB of
    temporaries, 2x its weights; 0.19 GiB now). ``tie_to`` makes each weight depend on the
    input, so each convert runs when its layer does and its copy dies with it. Values are
    unchanged; nothing changes for float32 weights or in programs lowered for GPU / TPU (native
    bfloat16; :func:`jaxhead.ops.platform.per_platform`).
    """
    x, *rest = args
    low = [a is not None and jnp.dtype(a.dtype) in (jnp.bfloat16, jnp.float16) for a in rest]
    if any(low) and x is not None:
        def tie(x, rest):
            with jax.named_scope(platform.CPU_WEIGHT_TIE):
                return [tie_to(a, x) if is_low else a for a, is_low in zip(rest, low, strict=True)]

        rest = platform.per_platform(x, rest, cpu=tie, accelerator=lambda x, rest: rest)
    return flax_dtypes.promote_dtype(x, *rest, dtype=dtype, inexact=inexact)


def conv2d(features: int, kernel: int, dtype: Dtype, name: str, *, stride: int = 1,
           padding: int | tuple[tuple[int, int], tuple[int, int]] | None = None) -> nn.Conv:
    """torch.nn.Conv2d equivalent (NHWC); default padding keeps the size ((k-1)/2 each side)."""
    if padding is None:
        padding = (kernel - 1) // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   dtype=dtype, promote_dtype=promote_after_input, name=name)


def dense(features: int, dtype: Dtype, name: str, *, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, promote_dtype=promote_after_input,
                    name=name)


def timestep_embedding(timesteps: Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding of (float) timesteps [B] -> [B, dim] float32 (diffusers' Timesteps)."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding, act_fn "silu")."""

    time_embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t_emb: Array) -> Array:
        h = dense(self.time_embed_dim, self.dtype, "linear_1")(t_emb.astype(self.dtype))
        return dense(self.time_embed_dim, self.dtype, "linear_2")(nn.silu(h))


def nearest_resize(x: Array, size: tuple[int, int]) -> Array:
    """Nearest-neighbour resize of NHWC ``x`` to ``size`` with torch's index rule
    (src = floor(dst * in / out))."""
    h, w = x.shape[1:3]
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    iy = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(np.int32), h - 1)
    ix = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(np.int32), w - 1)
    return x[:, iy][:, :, ix]


class Downsample2D(nn.Module):
    """3x3 stride-2 conv ``conv``; ``padding`` 0 means pad right/bottom by one (VAE)."""

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pad = ((0, 1), (0, 1)) if self.padding == 0 else self.padding
        return conv2d(self.out_channels, 3, self.dtype, "conv", stride=2, padding=pad)(x)


class _Up2Conv3x3(nn.Module):
    """``conv3x3(nearest_upsample_x2(x))`` without the upsampled image: each of the four output
    phases is a 2x2 convolution of ``x`` with taps of the 3x3 kernel summed (output row ``2m``
    sees input rows ``m-1, m, m`` -> taps ``(w0, w1 + w2)``; row ``2m+1`` sees ``m, m, m+1`` ->
    ``(w0 + w1, w2)``), so 16 instead of 36 multiply-adds per input pixel and channel pair.
    Parameters ``kernel`` [3, 3, I, O] and ``bias`` as ``nn.Conv``'s."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = promote_after_input(x, kernel, bias, dtype=self.dtype)

        def taps(k: Array, axis: int) -> tuple[Array, Array]:
            k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
            return jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)

        pads = ((1, 0), (0, 1))  # phase 0 reads rows (m-1, m), phase 1 rows (m, m+1)
        rows = []
        for a, ka in enumerate(taps(kernel, 0)):
            cols = [jax.lax.conv_general_dilated(x, kab, (1, 1), (pads[a], pads[b]),
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                    for b, kab in enumerate(taps(ka, 1))]
            rows.append(jnp.stack(cols, axis=3))  # [N, H, W, 2, O]
        y = jnp.stack(rows, axis=2)  # [N, H, 2, W, 2, O]
        n, h, _, w, _, o = y.shape
        return y.reshape(n, 2 * h, 2 * w, o) + bias


class Upsample2D(nn.Module):
    """Nearest upsample (x2, or to ``size``) then 3x3 conv ``conv``; x2 in polyphase form."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, size: tuple[int, int] | None = None) -> Array:
        size = size or (2 * x.shape[1], 2 * x.shape[2])
        if tuple(size) == (2 * x.shape[1], 2 * x.shape[2]):
            return _Up2Conv3x3(self.out_channels, self.dtype, name="conv")(x)
        return conv2d(self.out_channels, 3, self.dtype, "conv")(nearest_resize(x, size))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv x2 with a timestep bias and a (1x1 conv) shortcut.

    ``time_embedding_norm`` "default" only: ``h = conv1(...) + time_emb_proj(silu(temb))``.
    """

    out_channels: int
    groups: int = 32
    groups_out: int | None = None
    eps: float = 1e-6
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None) -> Array:
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv2d(self.out_channels, 3, self.dtype, "conv1")(h)
        if temb is not None:
            t = dense(self.out_channels, self.dtype, "time_emb_proj")(nn.silu(temb))
            h = h + t[:, None, None, :]
        groups_out = self.groups_out or self.groups
        h = nn.silu(group_norm(groups_out, self.eps, self.dtype, "norm2")(h))
        h = conv2d(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv2d(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        out = x + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


class Attention(nn.Module):
    """diffusers ``Attention``: to_q/to_k/to_v/to_out_0, optional pre-``group_norm`` and
    residual (the VAE's spatial self-attention). Input [B, N, C] or NHWC [B, H, W, C]."""

    heads: int
    dim_head: int
    qkv_bias: bool = False
    norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    residual_connection: bool = False
    rescale_output_factor: float = 1.0
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None, bias: Array | None = None) -> Array:
        residual, shape = x, x.shape
        query_dim = shape[-1]
        if x.ndim == 4:
            x = x.reshape(shape[0], shape[1] * shape[2], query_dim)
        if self.norm_num_groups is not None:
            x = group_norm(self.norm_num_groups, self.norm_eps, self.dtype, "group_norm")(x)
        ctx = x if context is None else context.astype(self.dtype)
        inner = self.heads * self.dim_head
        b = x.shape[0]
        q = dense(inner, self.dtype, "to_q", use_bias=self.qkv_bias)(x)
        k = dense(inner, self.dtype, "to_k", use_bias=self.qkv_bias)(ctx)
        v = dense(inner, self.dtype, "to_v", use_bias=self.qkv_bias)(ctx)
        q, k, v = (a.reshape(b, a.shape[1], self.heads, self.dim_head) for a in (q, k, v))
        o = attention(q, k, v, bias=bias, impl=self.attention_impl).reshape(b, -1, inner)
        o = dense(query_dim, self.dtype, "to_out_0")(o).reshape(shape)
        if self.residual_connection:
            o = o + residual
        return o / self.rescale_output_factor if self.rescale_output_factor != 1.0 else o


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``net_0/proj`` (dim -> 2*mult*dim), x * gelu(gate), ``net_2``."""

    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        h = _GEGLU(dim * self.mult, self.dtype, name="net_0")(x)  # mirrors ``ff.net.0.proj``
        return dense(dim, self.dtype, "net_2")(h)


class _GEGLU(nn.Module):
    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, gate = jnp.split(dense(2 * self.inner, self.dtype, "proj")(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention and GEGLU feed-forward with residuals."""

    heads: int
    dim_head: int
    norm_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        def attn(name: str) -> Attention:
            return Attention(self.heads, self.dim_head, attention_impl=self.attention_impl,
                             dtype=self.dtype, name=name)

        x = x + attn("attn1")(layer_norm(self.norm_eps, self.dtype, "norm1")(x))
        x = x + attn("attn2")(layer_norm(self.norm_eps, self.dtype, "norm2")(x), context)
        return x + FeedForward(dtype=self.dtype, name="ff")(
            layer_norm(self.norm_eps, self.dtype, "norm3")(x))


class Transformer2DModel(nn.Module):
    """Spatial transformer over an NHWC feature map (continuous input), residual around it."""

    heads: int
    dim_head: int
    num_layers: int = 1
    norm_num_groups: int = 32
    use_linear_projection: bool = False
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        b, hh, ww, c = x.shape
        inner = self.heads * self.dim_head
        h = group_norm(self.norm_num_groups, 1e-6, self.dtype, "norm")(x)
        if self.use_linear_projection:
            h = dense(inner, self.dtype, "proj_in")(h.reshape(b, hh * ww, c))
        else:
            h = conv2d(inner, 1, self.dtype, "proj_in")(h).reshape(b, hh * ww, inner)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(self.heads, self.dim_head, attention_impl=self.attention_impl,
                                      dtype=self.dtype, name=f"transformer_blocks_{i}")(h, context)
        if self.use_linear_projection:
            h = dense(c, self.dtype, "proj_out")(h).reshape(b, hh, ww, c)
        else:
            h = conv2d(c, 1, self.dtype, "proj_out")(h.reshape(b, hh, ww, inner))
        return h + x


# ----------------------------------------------------------------------------------------------
# UNet / ControlNet blocks
# ----------------------------------------------------------------------------------------------


class DownBlock2D(nn.Module):
    """``DownBlock2D`` / ``CrossAttnDownBlock2D`` (``heads`` > 0 adds the transformers).

    Returns the output and the skip tensors (one per layer, plus one after the downsampler).
    """

    out_channels: int
    num_layers: int
    add_downsample: bool
    heads: int = 0
    transformer_layers: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    eps: float = 1e-5
    downsample_padding: int = 1
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, context: Array | None
                 ) -> tuple[Array, tuple[Array, ...]]:
        skips = []
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, eps=self.eps, dtype=self.dtype,
                              name=f"resnets_{i}")(x, temb)
            if self.heads:
                x = Transformer2DModel(self.heads, self.out_channels // self.heads,
                                       self.transformer_layers, self.groups,
                                       self.use_linear_projection, self.attention_impl,
                                       self.dtype, name=f"attentions_{i}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.downsample_padding, self.dtype,
                             name="downsamplers_0")(x)
            skips.append(x)
        return x, tuple(skips)


class UpBlock2D(nn.Module):
    """``UpBlock2D`` / ``CrossAttnUpBlock2D``: each layer concatenates one skip (last first)."""

    out_channels: int
    num_layers: int
    add_upsample: bool
    heads: int = 0
    transformer_layers: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, skips: Sequence[Array], temb: Array, context: Array | None,
                 upsample_size: tuple[int, int] | None = None) -> Array:
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ResnetBlock2D(self.out_channels, self.groups, eps=self.eps, dtype=self.dtype,
                              name=f"resnets_{i}")(x, temb)
            if self.heads:
                x = Transformer2DModel(self.heads, self.out_channels // self.heads,
                                       self.transformer_layers, self.groups,
                                       self.use_linear_projection, self.attention_impl,
                                       self.dtype, name=f"attentions_{i}")(x, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnets_0, then (attentions_i, resnets_{i+1}) for each layer."""

    heads: int
    num_layers: int = 1
    transformer_layers: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    eps: float = 1e-5
    output_scale_factor: float = 1.0
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, context: Array) -> Array:
        c = x.shape[-1]

        def resnet(i: int) -> ResnetBlock2D:
            return ResnetBlock2D(c, self.groups, eps=self.eps,
                                 output_scale_factor=self.output_scale_factor, dtype=self.dtype,
                                 name=f"resnets_{i}")

        x = resnet(0)(x, temb)
        for i in range(self.num_layers):
            x = Transformer2DModel(self.heads, c // self.heads, self.transformer_layers,
                                   self.groups, self.use_linear_projection, self.attention_impl,
                                   self.dtype, name=f"attentions_{i}")(x, context)
            x = resnet(i + 1)(x, temb)
        return x


# The UNet and the ControlNet share their encoder half. These helpers create its submodules; call
# them inside the parent's ``@nn.compact`` method so the modules sit at the parent's top level
# (``time_embedding``, ``down_blocks_i``, ``mid_block``) as in PyTorch. ``cfg`` is a UNetConfig or
# ControlNetConfig (fields named as in diffusers, per-block values already expanded to tuples).


def time_embedding(cfg: Any, timesteps: Array, batch: int, dtype: Dtype) -> Array:
    """Timesteps (scalar or [B], float) -> embedding [B, time_embed_dim] in ``dtype``."""
    t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
    t_emb = timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                               freq_shift=cfg.freq_shift)
    return TimestepEmbedding(cfg.time_embed_dim, dtype, name="time_embedding")(t_emb)


def down_blocks(cfg: Any, x: Array, emb: Array, context: Array, attention_impl: str,
                dtype: Dtype) -> tuple[Array, tuple[Array, ...]]:
    """Runs ``down_blocks_*`` on the ``conv_in`` output ``x``; returns (x, skips incl. x)."""
    skips = [x]
    n = len(cfg.block_out_channels)
    for i, kind in enumerate(cfg.down_block_types):
        x, s = DownBlock2D(
            cfg.block_out_channels[i], cfg.layers_per_block[i], add_downsample=i < n - 1,
            heads=cfg.num_attention_heads[i] if kind == "CrossAttnDownBlock2D" else 0,
            transformer_layers=cfg.transformer_layers_per_block[i],
            use_linear_projection=cfg.use_linear_projection, groups=cfg.norm_num_groups,
            eps=cfg.norm_eps, downsample_padding=cfg.downsample_padding,
            attention_impl=attention_impl, dtype=dtype, name=f"down_blocks_{i}")(x, emb, context)
        skips.extend(s)
    return x, tuple(skips)


def mid_block(cfg: Any, x: Array, emb: Array, context: Array, attention_impl: str,
              dtype: Dtype) -> Array:
    return UNetMidBlock2DCrossAttn(
        cfg.num_attention_heads[-1], 1, cfg.transformer_layers_per_block[-1],
        cfg.use_linear_projection, cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor,
        attention_impl, dtype, name="mid_block")(x, emb, context)


# ----------------------------------------------------------------------------------------------
# VAE blocks
# ----------------------------------------------------------------------------------------------


class DownEncoderBlock2D(nn.Module):
    out_channels: int
    num_layers: int
    add_downsample: bool
    groups: int = 32
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each ResNet block in the backward pass (saves memory)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        block = nn.remat(ResnetBlock2D) if self.remat else ResnetBlock2D
        for i in range(self.num_layers):
            x = block(self.out_channels, self.groups, eps=1e-6, dtype=self.dtype,
                      name=f"resnets_{i}")(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, 0, self.dtype, name="downsamplers_0")(x)
        return x


class UpDecoderBlock2D(nn.Module):
    out_channels: int
    num_layers: int
    add_upsample: bool
    groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, eps=1e-6, dtype=self.dtype,
                              name=f"resnets_{i}")(x)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x)
        return x


class UNetMidBlock2D(nn.Module):
    """VAE mid block: resnets_0, attentions_0 (single-head spatial self-attention), resnets_1."""

    groups: int = 32
    add_attention: bool = True
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = ResnetBlock2D(c, self.groups, eps=1e-6, dtype=self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = Attention(1, c, qkv_bias=True, norm_num_groups=self.groups, norm_eps=1e-6,
                          residual_connection=True, attention_impl=self.attention_impl,
                          dtype=self.dtype, name="attentions_0")(x)
        return ResnetBlock2D(c, self.groups, eps=1e-6, dtype=self.dtype, name="resnets_1")(x)
