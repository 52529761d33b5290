"""CLIP ViT image tower (transformers' ``CLIPVisionModel``) in Flax, NHWC.

Patch embedding (a ``patch_size`` stride-``patch_size`` conv without bias), a learned class
token and position embeddings, ``pre_layrnorm`` (transformers' spelling, kept so the converter
is a rename-free mapping), the encoder layers shared with the text tower
(:class:`jaxhead.models.clip_text.CLIPEncoder`), and ``post_layernorm`` on the class token.
Position embeddings are not interpolated: the input must be ``image_size`` square.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxhead.models import sd_layers as L
from jaxhead.models.clip_text import ACTIVATIONS, CLIPEncoder

Array = Any


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers CLIPVisionConfig fields used by the image tower (ViT-B/32 as defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> CLIPVisionConfig:
        """From a CLIPVisionModel ``config.json`` dict or a CLIPModel's ``vision_config``."""
        if config.get("model_type") == "clip" and "vision_config" in config:
            config = config["vision_config"]
        if config.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise ValueError(f"not a CLIP vision model config (model_type="
                             f"{config.get('model_type')!r})")
        cfg = cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported CLIPVisionModel configuration: hidden_act="
                             f"{cfg.hidden_act!r} (supported: {tuple(ACTIVATIONS)})")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("CLIPVisionModel: hidden_size not divisible by num_attention_heads")
        return cfg

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class _VisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        cfg = self.config
        d, p = cfg.hidden_size, cfg.patch_size
        cls_token = self.param("class_embedding", nn.initializers.normal(1.0), (d,))
        patches = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          dtype=self.dtype, name="patch_embedding")(pixel_values)
        b = patches.shape[0]
        patches = patches.reshape(b, -1, d)  # row-major over the grid, as torch's flatten(2)
        cls_token = jnp.broadcast_to(cls_token.astype(patches.dtype), (b, 1, d))
        pos = nn.Embed(cfg.num_positions, d, dtype=self.dtype, name="position_embedding")
        return jnp.concatenate([cls_token, patches], axis=1) + pos.embedding[None].astype(
            patches.dtype)


class CLIPVisionModel(nn.Module):
    """CLIP ViT image encoder.

    ``__call__(pixel_values [B, S, S, C])`` (S = ``image_size``, already normalised with the
    CLIP mean / std) -> (last_hidden_state [B, 1 + (S/P)^2, D], pooled [B, D]), float32;
    ``pooled`` is ``post_layernorm`` of the class token (transformers' ``pooler_output``).
    """

    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> tuple[Array, Array]:
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != want:
            raise ValueError(f"CLIPVisionModel expects [B, {want[0]}, {want[1]}, {want[2]}] "
                             f"pixel values, got shape {tuple(pixel_values.shape)}")
        x = _VisionEmbeddings(cfg, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
        x = L.layer_norm(cfg.layer_norm_eps, self.dtype, "pre_layrnorm")(x)
        x = CLIPEncoder(cfg, self.dtype, name="encoder")(x)
        pooled = L.layer_norm(cfg.layer_norm_eps, self.dtype, "post_layernorm")(x[:, 0])
        return x.astype(jnp.float32), pooled.astype(jnp.float32)
