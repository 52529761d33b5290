"""AutoencoderKL (the Stable Diffusion VAE) in Flax, NHWC.

Images are [B, H, W, 3] in [-1, 1]; latents [B, H/8, W/8, 4]. The encoder is an ordinary
differentiable function of the image (the distillation gradient reaches the generator through
it).

    vae, params = load("converted/vae")
    dist = vae.apply({"params": params}, images, method=vae.encode)      # LatentDist
    latents = vae.config.scaling_factor * dist.sample(key)               # or dist.mode()
    images = vae.apply({"params": params}, latents / vae.config.scaling_factor, method=vae.decode)

:func:`encode_latents` / :func:`decode_latents` do the scaling (and ``shift_factor``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.models import sd_layers as L
from jaxhead.models.sd_convert import (
    cast_params,
    check_config_keys,
    param_shapes,
    torch_to_flax,
)
from jaxhead.models.unet import CONVERT_HINT
from jaxhead.utils.params_io import check_tree, data_errors, load_params

Array = Any

_SUPPORTED = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
    latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.18215,
    shift_factor=None, force_upcast=True, use_quant_conv=True, use_post_quant_conv=True,
    mid_block_add_attention=True,
)
_FIXED = dict(act_fn=("silu",), latents_mean=(None,), latents_std=(None,))

# Deprecated attention names still found in older diffusers VAE folders (e.g. sd-vae-ft-mse).
RENAMES = (
    (r"(mid_block\.attentions\.0)\.query\.", r"\1.to_q."),
    (r"(mid_block\.attentions\.0)\.key\.", r"\1.to_k."),
    (r"(mid_block\.attentions\.0)\.value\.", r"\1.to_v."),
    (r"(mid_block\.attentions\.0)\.proj_attn\.", r"\1.to_out.0."),
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """diffusers AutoencoderKL options (names as in ``config.json``)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        c = check_config_keys(config, _SUPPORTED, _FIXED, what="AutoencoderKL")
        n = len(c["block_out_channels"])
        problems = []
        if tuple(c["down_block_types"]) != ("DownEncoderBlock2D",) * n:
            problems.append(f"down_block_types={c['down_block_types']!r} "
                            f"(only {n} x 'DownEncoderBlock2D')")
        if tuple(c["up_block_types"]) != ("UpDecoderBlock2D",) * n:
            problems.append(f"up_block_types={c['up_block_types']!r} "
                            f"(only {n} x 'UpDecoderBlock2D')")
        if problems:
            raise ValueError("unsupported AutoencoderKL configuration: " + "; ".join(problems))
        return cls(in_channels=c["in_channels"], out_channels=c["out_channels"],
                   block_out_channels=tuple(c["block_out_channels"]),
                   layers_per_block=c["layers_per_block"], latent_channels=c["latent_channels"],
                   norm_num_groups=c["norm_num_groups"],
                   scaling_factor=float(c["scaling_factor"]),
                   shift_factor=None if c["shift_factor"] is None else float(c["shift_factor"]),
                   use_quant_conv=bool(c["use_quant_conv"]),
                   use_post_quant_conv=bool(c["use_post_quant_conv"]),
                   mid_block_add_attention=bool(c["mid_block_add_attention"]))


@dataclasses.dataclass(frozen=True)
class LatentDist:
    """Diagonal Gaussian over (unscaled) latents; ``logvar`` clipped to [-30, 20] as in diffusers.
    A pytree, so it can be returned from jitted functions."""

    mean: Array
    logvar: Array

    @property
    def std(self) -> Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> Array:
        """Reparameterised sample ``mean + std * N(0, 1)`` (differentiable in mean/logvar)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> Array:
        return self.mean


jax.tree_util.register_dataclass(LatentDist, data_fields=["mean", "logvar"], meta_fields=[])


class Encoder(nn.Module):
    config: VAEConfig
    attention_impl: str = "auto"
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dt = self.config, self.dtype
        ch = cfg.block_out_channels
        x = L.conv2d(ch[0], 3, dt, "conv_in")(x.astype(dt))
        for i, c in enumerate(ch):
            x = L.DownEncoderBlock2D(c, cfg.layers_per_block, i < len(ch) - 1,
                                     cfg.norm_num_groups, dt, self.remat,
                                     name=f"down_blocks_{i}")(x)
        x = L.UNetMidBlock2D(cfg.norm_num_groups, cfg.mid_block_add_attention,
                             self.attention_impl, dt, name="mid_block")(x)
        x = nn.silu(L.group_norm(cfg.norm_num_groups, 1e-6, dt, "conv_norm_out")(x))
        return L.conv2d(2 * cfg.latent_channels, 3, dt, "conv_out")(x)


class Decoder(nn.Module):
    config: VAEConfig
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg, dt = self.config, self.dtype
        ch = cfg.block_out_channels[::-1]
        x = L.conv2d(ch[0], 3, dt, "conv_in")(z.astype(dt))
        x = L.UNetMidBlock2D(cfg.norm_num_groups, cfg.mid_block_add_attention,
                             self.attention_impl, dt, name="mid_block")(x)
        for i, c in enumerate(ch):
            x = L.UpDecoderBlock2D(c, cfg.layers_per_block + 1, i < len(ch) - 1,
                                   cfg.norm_num_groups, dt, name=f"up_blocks_{i}")(x)
        x = nn.silu(L.group_norm(cfg.norm_num_groups, 1e-6, dt, "conv_norm_out")(x))
        return L.conv2d(cfg.out_channels, 3, dt, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """SD VAE. ``encode`` -> :class:`LatentDist` (float32), ``decode`` -> image (float32).

    Latents here are *unscaled*; multiply by ``config.scaling_factor`` for the UNet (or use
    :func:`encode_latents` / :func:`decode_latents`).
    """

    config: VAEConfig
    dtype: Any = jnp.float32
    attention_impl: str = "auto"
    remat: bool = False  # rematerialize the encoder's ResNet blocks (memory of its gradient)

    def setup(self) -> None:
        cfg, dt = self.config, self.dtype
        self.encoder = Encoder(cfg, self.attention_impl, dt, self.remat)
        self.decoder = Decoder(cfg, self.attention_impl, dt)
        # (setup assigns names from attributes, so no ``name=`` here)
        if cfg.use_quant_conv:
            self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), dtype=dt,
                                      promote_dtype=L.promote_after_input)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), dtype=dt,
                                           promote_dtype=L.promote_after_input)

    def encode(self, images: Array) -> LatentDist:
        """images [B, H, W, 3] in [-1, 1] -> posterior over latents [B, H/8, W/8, 4]."""
        h = self.encoder(images)
        if self.config.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return LatentDist(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, z: Array) -> Array:
        """Unscaled latents [B, h, w, 4] -> images [B, 8h, 8w, 3] (about [-1, 1])."""
        z = z.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images: Array) -> Array:
        """Reconstruction through the posterior mode (used for ``init``)."""
        return self.decode(self.encode(images).mode())


def encode_latents(vae: AutoencoderKL, params: Any, images: Array,
                   key: jax.Array | None = None, one_at_a_time: bool = False) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> UNet latents ``scaling_factor * (z - shift)``, with z a
    posterior sample when ``key`` is given, else the mean.

    ``one_at_a_time``: encode the images in sequence, each rematerialised, so that a backward
    pass holds one image's encoder activations instead of the batch's (same result, same
    posterior noise)."""
    if one_at_a_time and images.shape[0] > 1:
        one = jax.checkpoint(lambda x: vae.apply({"params": params}, x[None],
                                                 method=vae.encode))
        dist = jax.tree.map(lambda a: a[:, 0], jax.lax.map(one, images))
    else:
        dist = vae.apply({"params": params}, images, method=vae.encode)
    z = dist.mode() if key is None else dist.sample(key)
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, params: Any, latents: Array) -> Array:
    """UNet latents -> images [B, H, W, 3] (about [-1, 1]); inverse scaling of
    :func:`encode_latents`."""
    z = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    return vae.apply({"params": params}, z, method=vae.decode)


def expected_shapes(module: AutoencoderKL) -> dict[str, Any]:
    s = module.config.downscale
    return param_shapes(module, np.zeros((1, s, s, module.config.in_channels), np.float32))


def convert(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL state dict + ``config.json`` dict -> Flax params."""
    module = AutoencoderKL(VAEConfig.from_diffusers(config))
    return torch_to_flax(state_dict, expected_shapes(module), renames=RENAMES,
                         what="AutoencoderKL")


def load(path: str | os.PathLike, *, dtype: Any = jnp.float32, attention_impl: str = "auto",
         verify: bool = True) -> tuple[AutoencoderKL, dict[str, Any]]:
    """Load a converted VAE directory -> (module, params as ``dtype`` jax arrays).
    ``verify``: check the content hash and finiteness (``params_io.load_params``)."""
    params, config = load_params(path, what="VAE", convert_hint=CONVERT_HINT, verify=verify)
    with data_errors(f"{os.fspath(path)}/config.json"):
        cfg = VAEConfig.from_diffusers(config)
    module = AutoencoderKL(cfg, dtype=dtype, attention_impl=attention_impl)
    check_tree(params, expected_shapes(module), what=f"VAE parameters in {str(path)!r}")
    return module, cast_params(params, dtype)
