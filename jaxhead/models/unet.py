"""Stable Diffusion UNet2DConditionModel (SD 1.x / 2.x family) in Flax, NHWC.

Configured from a diffusers ``unet/config.json``; options outside the SD 1.5 family raise a
``ValueError`` naming them. Accepts ControlNet down/mid residuals.

    module, params = load("converted/unet")
    eps = module.apply({"params": params}, latents, t, text_emb)   # [B, h, w, 4] NHWC
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
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
from jaxhead.utils.params_io import check_tree, data_errors, load_params

Array = Any
CONVERT_HINT = "python -m convert_weights.diffusers SRC DST"

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# diffusers UNet2DConditionModel constructor defaults for the options this port implements.
_SUPPORTED = dict(
    sample_size=None, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    downsample_padding=1, mid_block_scale_factor=1.0, dropout=0.0, norm_num_groups=32,
    norm_eps=1e-5, cross_attention_dim=1280, transformer_layers_per_block=1,
    attention_head_dim=8, use_linear_projection=False, upcast_attention=False,
    time_embedding_dim=None, conv_in_kernel=3, conv_out_kernel=3,
    addition_embed_type_num_heads=64,  # only used by addition_embed_type "text"
)
# Options whose only implemented values are listed.
_FIXED = dict(
    act_fn=("silu",), num_attention_heads=(None,), reverse_transformer_layers_per_block=(None,),
    encoder_hid_dim=(None,), encoder_hid_dim_type=(None,), dual_cross_attention=(False,),
    class_embed_type=(None,), addition_embed_type=(None,), addition_time_embed_dim=(None,),
    num_class_embeds=(None,), resnet_time_scale_shift=("default",),
    resnet_skip_time_act=(False,), resnet_out_scale_factor=(1.0,),
    time_embedding_type=("positional",), time_embedding_act_fn=(None,), timestep_post_act=(None,),
    time_cond_proj_dim=(None,), projection_class_embeddings_input_dim=(None,),
    attention_type=("default",), class_embeddings_concat=(False,),
    mid_block_only_cross_attention=(None, False), cross_attention_norm=(None,),
)


def _per_block(value: Any, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """diffusers UNet2DConditionModel options (names as in ``config.json``), per-block values
    expanded to tuples. ``num_attention_heads`` holds what SD configs call ``attention_head_dim``
    (the number of heads; diffusers keeps that historical misnomer)."""

    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = _SUPPORTED["down_block_types"]
    up_block_types: tuple[str, ...] = _SUPPORTED["up_block_types"]
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
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Parse a diffusers ``config.json`` dict; raises ``ValueError`` on unsupported options."""
        c = check_config_keys(config, _SUPPORTED, _FIXED, what="UNet2DConditionModel")
        return cls(**_unet_like_fields(c, "UNet2DConditionModel", up=True))


def _unet_like_fields(c: Mapping[str, Any], what: str, *, up: bool) -> dict[str, Any]:
    """Validation and per-block expansion shared by the UNet and ControlNet configs."""
    n = len(c["block_out_channels"])
    down = tuple(c["down_block_types"])
    problems = []
    if len(down) != n:
        problems.append(f"{len(down)} down_block_types for {n} block_out_channels")
    if bad := [t for t in down if t not in DOWN_TYPES]:
        problems.append(f"down_block_types {bad} (supported: {DOWN_TYPES})")
    if up:
        ups = tuple(c["up_block_types"])
        if len(ups) != n:
            problems.append(f"{len(ups)} up_block_types for {n} block_out_channels")
        if bad := [t for t in ups if t not in UP_TYPES]:
            problems.append(f"up_block_types {bad} (supported: {UP_TYPES})")
    if c["mid_block_type"] != "UNetMidBlock2DCrossAttn":
        problems.append(f"mid_block_type {c['mid_block_type']!r} (supported: "
                        "'UNetMidBlock2DCrossAttn')")
    oca = c["only_cross_attention"]
    if any(oca) if isinstance(oca, list | tuple) else oca:
        problems.append(f"only_cross_attention={oca!r}")
    if c["norm_num_groups"] is None:
        problems.append("norm_num_groups=None")
    cad = c["cross_attention_dim"]
    cad_set = set(cad) if isinstance(cad, list | tuple) else {cad}
    if len(cad_set) != 1 or not all(isinstance(v, int) for v in cad_set):
        problems.append(f"cross_attention_dim={cad!r} (one int for all blocks)")
    tl = c["transformer_layers_per_block"]
    if isinstance(tl, list | tuple) and any(isinstance(v, list | tuple) for v in tl):
        problems.append(f"nested transformer_layers_per_block={tl!r}")
    if problems:
        raise ValueError(f"unsupported {what} configuration: " + "; ".join(problems))
    heads = c.get("num_attention_heads") or c["attention_head_dim"]
    out = dict(
        in_channels=c["in_channels"], flip_sin_to_cos=c["flip_sin_to_cos"],
        freq_shift=c["freq_shift"], down_block_types=down,
        block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=_per_block(c["layers_per_block"], n, "layers_per_block"),
        downsample_padding=c["downsample_padding"],
        mid_block_scale_factor=float(c["mid_block_scale_factor"]),
        norm_num_groups=c["norm_num_groups"], norm_eps=float(c["norm_eps"]),
        cross_attention_dim=next(iter(cad_set)),
        transformer_layers_per_block=_per_block(tl, n, "transformer_layers_per_block"),
        num_attention_heads=_per_block(heads, n, "attention_head_dim"),
        use_linear_projection=bool(c["use_linear_projection"]),
    )
    if up:
        out.update(out_channels=c["out_channels"], center_input_sample=c["center_input_sample"],
                   up_block_types=tuple(c["up_block_types"]),
                   time_embedding_dim=c["time_embedding_dim"],
                   conv_in_kernel=c["conv_in_kernel"], conv_out_kernel=c["conv_out_kernel"])
    for i, ch in enumerate(out["block_out_channels"]):
        if ch % out["num_attention_heads"][i] or ch % out["norm_num_groups"]:
            raise ValueError(f"{what}: block_out_channels[{i}]={ch} is not divisible by its "
                             "head count / norm_num_groups")
    return out


class UNet2DConditionModel(nn.Module):
    """Noise-prediction UNet. NHWC throughout.

    Attributes:
      config: parsed :class:`UNetConfig`.
      dtype: activation dtype (float32 or bfloat16); outputs are returned in float32.
      attention_impl: see :func:`jaxhead.models.sd_layers.attention`.
    """

    config: UNetConfig
    dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, sample: Array, timesteps: Array, encoder_hidden_states: Array,
                 down_block_additional_residuals: Sequence[Array] | None = None,
                 mid_block_additional_residual: Array | None = None) -> Array:
        """sample [B, h, w, in_channels]; timesteps scalar or [B]; encoder_hidden_states
        [B, M, cross_attention_dim]; optional ControlNet residuals (one per skip, NHWC, and the
        mid residual) are added to the skips / mid output. Returns [B, h, w, out_channels]."""
        cfg, dt, impl = self.config, self.dtype, self.attention_impl
        x = sample.astype(dt)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        ctx = encoder_hidden_states.astype(dt)
        emb = L.time_embedding(cfg, timesteps, x.shape[0], dt)
        x = L.conv2d(cfg.block_out_channels[0], cfg.conv_in_kernel, dt, "conv_in")(x)
        x, skips = L.down_blocks(cfg, x, emb, ctx, impl, dt)
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"expected {len(skips)} down residuals, got "
                                 f"{len(down_block_additional_residuals)}")
            skips = tuple(s + r.astype(dt) for s, r in zip(skips, down_block_additional_residuals,
                                                           strict=True))
        x = L.mid_block(cfg, x, emb, ctx, impl, dt)
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual.astype(dt)

        skips = list(skips)
        n = len(cfg.block_out_channels)
        rev_ch = cfg.block_out_channels[::-1]
        rev_heads = cfg.num_attention_heads[::-1]
        rev_layers = cfg.layers_per_block[::-1]
        rev_tl = cfg.transformer_layers_per_block[::-1]
        for i, kind in enumerate(cfg.up_block_types):
            k = rev_layers[i] + 1
            block_skips, skips = skips[-k:], skips[:-k]
            last = i == n - 1
            # Upsample to the next skip's size (exactly x2 unless the input is not divisible).
            size = None if last else tuple(skips[-1].shape[1:3])
            x = L.UpBlock2D(
                rev_ch[i], k, add_upsample=not last,
                heads=rev_heads[i] if kind == "CrossAttnUpBlock2D" else 0,
                transformer_layers=rev_tl[i], use_linear_projection=cfg.use_linear_projection,
                groups=cfg.norm_num_groups, eps=cfg.norm_eps, attention_impl=impl, dtype=dt,
                name=f"up_blocks_{i}")(x, block_skips, emb, ctx, size)
        x = nn.silu(L.group_norm(cfg.norm_num_groups, cfg.norm_eps, dt, "conv_norm_out")(x))
        x = L.conv2d(cfg.out_channels, cfg.conv_out_kernel, dt, "conv_out")(x)
        return x.astype(jnp.float32)


def skip_shapes(config: UNetConfig, batch: int, h: int, w: int) -> list[tuple[int, ...]]:
    """NHWC shapes of the down skips (= ControlNet down residuals) for an [B, h, w] latent."""
    shapes = [(batch, h, w, config.block_out_channels[0])]
    n = len(config.block_out_channels)
    for i, ch in enumerate(config.block_out_channels):
        shapes += [(batch, h, w, ch)] * config.layers_per_block[i]
        if i < n - 1:
            p = config.downsample_padding
            h, w = ((d + 2 * p - 3) // 2 + 1 if p else d // 2 for d in (h, w))
            shapes.append((batch, h, w, ch))
    return shapes


def expected_shapes(module: UNet2DConditionModel) -> dict[str, Any]:
    """Params shape tree of ``module`` (no computation)."""
    cfg = module.config
    s = 2 ** (len(cfg.block_out_channels) - 1)
    return param_shapes(module, np.zeros((1, s, s, cfg.in_channels), np.float32),
                        np.zeros((1,), np.float32),
                        np.zeros((1, 1, cfg.cross_attention_dim), np.float32))


def convert(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel state dict + ``config.json`` dict -> Flax params."""
    module = UNet2DConditionModel(UNetConfig.from_diffusers(config))
    return torch_to_flax(state_dict, expected_shapes(module), what="UNet2DConditionModel")


def load(path: str | os.PathLike, *, dtype: Any = jnp.float32, attention_impl: str = "auto",
         verify: bool = True) -> tuple[UNet2DConditionModel, dict[str, Any]]:
    """Load a converted UNet directory (``params.safetensors`` + ``config.json``).

    Returns (module, params) with params as ``dtype`` jax arrays. ``verify``: check the content
    hash and finiteness (``params_io.load_params``); bad files raise ``DataError`` naming them.
    """
    params, config = load_params(path, what="UNet", convert_hint=CONVERT_HINT, verify=verify)
    with data_errors(f"{os.fspath(path)}/config.json"):
        cfg = UNetConfig.from_diffusers(config)
    module = UNet2DConditionModel(cfg, dtype=dtype, attention_impl=attention_impl)
    check_tree(params, expected_shapes(module), what=f"UNet parameters in {str(path)!r}")
    return module, cast_params(params, dtype)
