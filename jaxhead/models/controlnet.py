"""ControlNetModel (SD 1.x family) in Flax, NHWC: a copy of the UNet encoder + mid block that
reads a control image and returns residuals for the UNet's skips and mid block.

    cn, cn_params = load("converted/controlnet_depth")
    down, mid = cn.apply({"params": cn_params}, latents, t, text_emb, control, 1.0)
    eps = unet.apply({"params": unet_params}, latents, t, text_emb, down, mid)

``control`` is the conditioning image [B, 8h, 8w, 3] in [0, 1] (as diffusers' ControlNet
pipelines feed it), for latents [B, h, w, 4].
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxhead.models import sd_layers as L
from jaxhead.models.sd_convert import (
    cast_params,
    check_config_keys,
    param_shapes,
    torch_to_flax,
)
from jaxhead.models.unet import CONVERT_HINT, _unet_like_fields
from jaxhead.utils.params_io import check_tree, data_errors, load_params

Array = Any

_SUPPORTED = dict(
    in_channels=4, conditioning_channels=3, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    mid_block_type="UNetMidBlock2DCrossAttn", only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1.0, norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280,
    transformer_layers_per_block=1, attention_head_dim=8, num_attention_heads=None,
    use_linear_projection=False, upcast_attention=False,
    controlnet_conditioning_channel_order="rgb",
    conditioning_embedding_out_channels=(16, 32, 96, 256), global_pool_conditions=False,
    addition_embed_type_num_heads=64,  # only used by addition_embed_type "text"
)
_FIXED = dict(
    act_fn=("silu",), encoder_hid_dim=(None,), encoder_hid_dim_type=(None,),
    class_embed_type=(None,), addition_embed_type=(None,), addition_time_embed_dim=(None,),
    num_class_embeds=(None,), resnet_time_scale_shift=("default",),
    projection_class_embeddings_input_dim=(None,),
)


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
    """diffusers ControlNetModel options (see :class:`jaxhead.models.unet.UNetConfig`)."""

    in_channels: int = 4
    conditioning_channels: int = 3
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = _SUPPORTED["down_block_types"]
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    use_linear_projection: bool = False
    controlnet_conditioning_channel_order: str = "rgb"
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    global_pool_conditions: bool = False

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def control_downscale(self) -> int:
        """Control image pixels per latent pixel (8 for SD: 512 px image, 64 px latent)."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> ControlNetConfig:
        c = check_config_keys(config, _SUPPORTED, _FIXED, what="ControlNetModel")
        if c["controlnet_conditioning_channel_order"] not in ("rgb", "bgr"):
            raise ValueError("unsupported ControlNetModel configuration: "
                             f"controlnet_conditioning_channel_order="
                             f"{c['controlnet_conditioning_channel_order']!r}")
        return cls(**_unet_like_fields(c, "ControlNetModel", up=False),
                   conditioning_channels=c["conditioning_channels"],
                   controlnet_conditioning_channel_order=c["controlnet_conditioning_channel_order"],
                   conditioning_embedding_out_channels=tuple(
                       c["conditioning_embedding_out_channels"]),
                   global_pool_conditions=bool(c["global_pool_conditions"]))


class ControlNetConditioningEmbedding(nn.Module):
    """conv_in, (blocks_{2i}: 3x3, blocks_{2i+1}: 3x3 stride 2) with SiLU, then conv_out."""

    out_channels: int
    block_out_channels: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ch = self.block_out_channels
        x = nn.silu(L.conv2d(ch[0], 3, self.dtype, "conv_in")(x))
        for i in range(len(ch) - 1):
            x = nn.silu(L.conv2d(ch[i], 3, self.dtype, f"blocks_{2 * i}")(x))
            x = nn.silu(L.conv2d(ch[i + 1], 3, self.dtype, f"blocks_{2 * i + 1}", stride=2)(x))
        return L.conv2d(self.out_channels, 3, self.dtype, "conv_out")(x)


class ControlNetModel(nn.Module):
    """ControlNet: returns (down residuals, mid residual) in float32, NHWC, already multiplied by
    ``conditioning_scale`` (a scalar or one value per sample [B])."""

    config: ControlNetConfig
    dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, sample: Array, timesteps: Array, encoder_hidden_states: Array,
                 controlnet_cond: Array, conditioning_scale: Array | float = 1.0
                 ) -> tuple[tuple[Array, ...], Array]:
        """sample [B, h, w, 4]; timesteps scalar or [B]; encoder_hidden_states [B, M, D];
        controlnet_cond [B, f*h, f*w, conditioning_channels] (f = ``control_downscale``)."""
        cfg, dt, impl = self.config, self.dtype, self.attention_impl
        x = sample.astype(dt)
        cond = controlnet_cond.astype(dt)
        if cfg.controlnet_conditioning_channel_order == "bgr":
            cond = cond[..., ::-1]
        ctx = encoder_hidden_states.astype(dt)
        emb = L.time_embedding(cfg, timesteps, x.shape[0], dt)
        x = L.conv2d(cfg.block_out_channels[0], 3, dt, "conv_in")(x)
        x = x + ControlNetConditioningEmbedding(
            cfg.block_out_channels[0], cfg.conditioning_embedding_out_channels, dt,
            name="controlnet_cond_embedding")(cond)
        x, skips = L.down_blocks(cfg, x, emb, ctx, impl, dt)
        x = L.mid_block(cfg, x, emb, ctx, impl, dt)

        scale = jnp.asarray(conditioning_scale, jnp.float32)
        scale = scale.reshape(-1, 1, 1, 1) if scale.ndim else scale

        def out(h: Array, name: str) -> Array:
            r = L.conv2d(h.shape[-1], 1, dt, name)(h).astype(jnp.float32) * scale
            return jnp.mean(r, axis=(1, 2), keepdims=True) if cfg.global_pool_conditions else r

        down = tuple(out(s, f"controlnet_down_blocks_{i}") for i, s in enumerate(skips))
        return down, out(x, "controlnet_mid_block")


def expected_shapes(module: ControlNetModel) -> dict[str, Any]:
    cfg = module.config
    s = 2 ** (len(cfg.block_out_channels) - 1)
    f = cfg.control_downscale
    return param_shapes(module, np.zeros((1, s, s, cfg.in_channels), np.float32),
                        np.zeros((1,), np.float32),
                        np.zeros((1, 1, cfg.cross_attention_dim), np.float32),
                        np.zeros((1, s * f, s * f, cfg.conditioning_channels), np.float32))


def convert(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers ControlNetModel state dict + ``config.json`` dict -> Flax params."""
    module = ControlNetModel(ControlNetConfig.from_diffusers(config))
    return torch_to_flax(state_dict, expected_shapes(module), what="ControlNetModel")


def load(path: str | os.PathLike, *, dtype: Any = jnp.float32, attention_impl: str = "auto",
         verify: bool = True) -> tuple[ControlNetModel, dict[str, Any]]:
    """Load a converted ControlNet directory -> (module, params as ``dtype`` jax arrays).
    ``verify``: check the content hash and finiteness (``params_io.load_params``)."""
    params, config = load_params(path, what="ControlNet", convert_hint=CONVERT_HINT,
                                 verify=verify)
    with data_errors(f"{os.fspath(path)}/config.json"):
        cfg = ControlNetConfig.from_diffusers(config)
    module = ControlNetModel(cfg, dtype=dtype, attention_impl=attention_impl)
    check_tree(params, expected_shapes(module), what=f"ControlNet parameters in {str(path)!r}")
    return module, cast_params(params, dtype)
