"""CLIP (transformers' ``CLIPModel``): the ViT image tower, the text tower, ``visual_projection``
/ ``text_projection`` (no bias) and ``logit_scale``, with its converted weights on disk.

    params = load_clip("checkpoints/clip-vit-b32")   # python -m convert_weights.clip SRC DST
    params.config.projection_dim                     # 512

``CLIPParams`` is a pytree: the weights are its leaves, the configuration rides along as static
data, so ``jax.jit(f)(params, x)`` works for any ``f`` of the metrics module. Parameter paths
mirror the PyTorch state dict (``vision_model/encoder/layers_3/self_attn/q_proj/kernel``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.models.clip_text import CLIPTextConfig, CLIPTextModel
from jaxhead.models.clip_vision import CLIPVisionConfig, CLIPVisionModel
from jaxhead.models.sd_convert import param_shapes, torch_to_flax

Array = Any
MODEL_NAME = "clip"
CONVERT_HINT = ("python -m convert_weights.clip SRC DST (SRC: a transformers CLIPModel folder "
                "such as a local copy of openai/clip-vit-base-patch32: config.json + "
                "model.safetensors or pytorch_model.bin, and the tokenizer files)")
IGNORE = (r"position_ids$",)  # buffers saved by transformers < 4.31


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """transformers ``CLIPConfig``: the two towers, the shared embedding width, the initial
    temperature. Hashable (static data of :class:`CLIPParams`)."""

    text: CLIPTextConfig = CLIPTextConfig()
    vision: CLIPVisionConfig = CLIPVisionConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> CLIPConfig:
        """From a CLIPModel ``config.json`` dict (``model_type`` "clip", with ``text_config`` and
        ``vision_config``). Raises ``ValueError`` for anything else."""
        if config.get("model_type") != "clip" or not {"text_config", "vision_config"} <= set(
                config):
            raise ValueError(f"not a CLIPModel config (model_type={config.get('model_type')!r}; "
                             "a full CLIP with text_config and vision_config is needed)")
        kw = {k: config[k] for k in ("projection_dim", "logit_scale_init_value") if k in config}
        return cls(text=CLIPTextConfig.from_transformers(config["text_config"]),
                   vision=CLIPVisionConfig.from_transformers(config["vision_config"]), **kw)

    def to_transformers(self) -> dict[str, Any]:
        """A ``config.json`` dict that :meth:`from_transformers` and ``transformers.CLIPConfig``
        read back."""
        return {"model_type": "clip", "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value,
                "text_config": {"model_type": "clip_text_model",
                                **dataclasses.asdict(self.text)},
                "vision_config": {"model_type": "clip_vision_model",
                                  **dataclasses.asdict(self.vision)}}


# The OpenAI checkpoints' config.json values (their text_config has the legacy eos_token_id 2:
# pooling at the largest token id, which is the end-of-text token of CLIP's tokenizer).
PRESETS = {
    "openai/clip-vit-base-patch32": CLIPConfig(
        text=CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                            eos_token_id=2),
        vision=CLIPVisionConfig(), projection_dim=512),
    "openai/clip-vit-large-patch14": CLIPConfig(
        text=CLIPTextConfig(eos_token_id=2),
        vision=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, patch_size=14),
        projection_dim=768),
}


class CLIPModel(nn.Module):
    """Both towers and the projections. ``get_image_features(pixel_values [B, S, S, 3])`` and
    ``get_text_features(input_ids [B, L])`` -> projected, unnormalised ``[B, projection_dim]``
    float32 (transformers' ``get_image_features`` / ``get_text_features``)."""

    config: CLIPConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.vision_model = CLIPVisionModel(cfg.vision, self.dtype)
        self.text_model = CLIPTextModel(cfg.text, self.dtype)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(cfg.logit_scale_init_value), ())

    def get_image_features(self, pixel_values: Array) -> Array:
        return self.visual_projection(self.vision_model(pixel_values)[1]).astype(jnp.float32)

    def get_text_features(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        pooled = self.text_model(input_ids, attention_mask)[1]
        return self.text_projection(pooled).astype(jnp.float32)

    def __call__(self, pixel_values: Array, input_ids: Array) -> tuple[Array, Array, Array]:
        return (self.get_image_features(pixel_values), self.get_text_features(input_ids),
                self.logit_scale)


@flax.struct.dataclass
class CLIPParams:
    """Converted CLIP weights (``weights``: nested dict of arrays) with their configuration."""

    config: CLIPConfig = flax.struct.field(pytree_node=False)
    weights: dict[str, Any]

    @property
    def module(self) -> CLIPModel:
        return CLIPModel(self.config)


def expected_shapes(config: CLIPConfig) -> dict[str, Any]:
    s = config.vision.image_size
    return param_shapes(CLIPModel(config), np.zeros((1, s, s, config.vision.num_channels),
                                                    np.float32), np.zeros((1, 2), np.int32))


def convert(state_dict: Mapping[str, np.ndarray], config: CLIPConfig) -> dict[str, Any]:
    """transformers ``CLIPModel`` state dict (numpy) -> Flax weights. Raises ``ValueError``
    naming every missing, unexpected and mis-shaped tensor."""
    return torch_to_flax(state_dict, expected_shapes(config), ignore=IGNORE, what="CLIPModel")


def random_params(config: CLIPConfig, key: Array) -> CLIPParams:
    """Random weights of the right shapes (normal 0.02, LayerNorm scale 1, ``logit_scale`` at
    its initial value): for benchmarks and smoke tests only."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(expected_shapes(config))
    keys = jax.random.split(key, len(flat))

    def leaf(path, sds, k):
        name = path[-1].key
        if name == "logit_scale":
            return jnp.full(sds.shape, config.logit_scale_init_value, jnp.float32)
        if name == "scale":
            return jnp.ones(sds.shape, jnp.float32)
        return 0.02 * jax.random.normal(k, sds.shape, jnp.float32)

    weights = jax.tree.unflatten(treedef, [leaf(p, s, k) for (p, s), k in zip(flat, keys,
                                                                              strict=True)])
    return CLIPParams(config=config, weights=weights)


def load_clip(directory: str | os.PathLike) -> CLIPParams:
    """Converted CLIP from ``directory`` (``params.safetensors`` + ``config.json`` written by
    ``python -m convert_weights.clip``), float32. Raises ``MissingWeightsError`` naming the
    convert command if the files are not there, ``DataError`` if they are not CLIP's."""
    from jaxhead.errors import DataError, MissingWeightsError
    from jaxhead.utils.params_io import check_tree, load_params

    try:
        weights, config = load_params(directory, what="CLIP", convert_hint=CONVERT_HINT)
    except FileNotFoundError as e:
        raise MissingWeightsError(str(e)) from None
    if config.get("model") != MODEL_NAME:
        raise DataError(f"{directory}: not converted CLIP weights (config.json model="
                        f"{config.get('model')!r}, expected {MODEL_NAME!r})")
    try:
        cfg = CLIPConfig.from_transformers(config)
        check_tree(weights, expected_shapes(cfg), what=f"CLIP params in {directory}")
    except ValueError as e:
        raise DataError(str(e)) from None
    return CLIPParams(config=cfg, weights=jax.tree.map(jnp.asarray, weights))
