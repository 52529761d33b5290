"""CLIP text transformer (SD 1.5's ``text_encoder``, CLIP ViT-L/14 text tower) in Flax, and
transformers' ``CLIPTokenizer`` read from a local ``tokenizer/`` folder. ``CLIPEncoder`` (the
pre-LayerNorm transformer layers) is shared with the image tower in ``clip_vision.py``.

    tok = load_tokenizer("converted/tokenizer")
    clip, params = load("converted/text_encoder")
    emb = encode_prompts(tok, clip, params, ["a portrait", ""])   # [2, 77, 768] float32
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.models import sd_layers as L
from jaxhead.models.sd_convert import cast_params, param_shapes, torch_to_flax
from jaxhead.models.unet import CONVERT_HINT
from jaxhead.utils.params_io import check_tree, data_errors, load_params

Array = Any

# transformers < 5 saved CLIPTextModel weights under ``text_model.``; v5 drops the prefix.
RENAMES = ((r"^text_model\.", ""),)
IGNORE = (r"position_ids$",)
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """transformers CLIPTextConfig fields used by the text tower (SD 1.5 values as defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> CLIPTextConfig:
        """From a ``text_encoder/config.json`` dict (CLIPTextModel, or a CLIPModel's
        ``text_config``). Generic PretrainedConfig keys are ignored."""
        if config.get("model_type") == "clip" and "text_config" in config:
            config = config["text_config"]
        if config.get("model_type", "clip_text_model") != "clip_text_model":
            raise ValueError(f"not a CLIP text model config (model_type="
                             f"{config.get('model_type')!r})")
        kw = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
        cfg = cls(**kw)
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported CLIPTextModel configuration: hidden_act="
                             f"{cfg.hidden_act!r} (supported: {tuple(ACTIVATIONS)})")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("CLIPTextModel: hidden_size not divisible by num_attention_heads")
        return cfg


class _Attention(nn.Module):
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None) -> Array:
        b, n, d = x.shape
        q, k, v = (L.dense(d, self.dtype, f"{p}_proj")(x).reshape(b, n, self.heads, -1)
                   for p in ("q", "k", "v"))
        o = L.attention(q, k, v, bias=bias, impl="dense").reshape(b, n, d)
        return L.dense(d, self.dtype, "out_proj")(o)


class _EncoderLayer(nn.Module):
    config: Any  # CLIPTextConfig or CLIPVisionConfig: the fields the layers read are common
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None) -> Array:
        cfg, dt = self.config, self.dtype
        h = L.layer_norm(cfg.layer_norm_eps, dt, "layer_norm1")(x)
        x = x + _Attention(cfg.num_attention_heads, dt, name="self_attn")(h, bias)
        h = L.layer_norm(cfg.layer_norm_eps, dt, "layer_norm2")(x)
        h = _MLP(cfg, dt, name="mlp")(h)
        return x + h


class _MLP(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = L.dense(self.config.intermediate_size, self.dtype, "fc1")(x)
        h = ACTIVATIONS[self.config.hidden_act](h)
        return L.dense(self.config.hidden_size, self.dtype, "fc2")(h)


class _Embeddings(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array) -> Array:
        cfg = self.config
        tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="token_embedding")
        pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=self.dtype,
                       name="position_embedding")
        return tok(input_ids) + pos(jnp.arange(input_ids.shape[-1]))[None]


class CLIPEncoder(nn.Module):
    """transformers' ``CLIPEncoder``: ``num_hidden_layers`` pre-LN layers (self-attention, MLP
    with ``hidden_act``), ``[B, L, D] -> [B, L, D]``. ``bias``: additive attention-logit bias
    broadcastable to ``[B, heads, L, L]`` (the text tower's causal / padding mask), or None."""

    config: Any  # reads hidden_size, intermediate_size, num_hidden_layers,
    # num_attention_heads, hidden_act, layer_norm_eps
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None = None) -> Array:
        for i in range(self.config.num_hidden_layers):
            x = _EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, bias)
        return x


class CLIPTextModel(nn.Module):
    """Causal CLIP text transformer.

    ``__call__(input_ids [B, L] int, attention_mask [B, L] or None)`` ->
    (last_hidden_state [B, L, D], pooled [B, D]), float32. SD uses ``last_hidden_state``.
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None
                 ) -> tuple[Array, Array]:
        cfg = self.config
        n = input_ids.shape[-1]
        if n > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {n} > max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        allowed = jnp.tril(jnp.ones((n, n), bool))[None, None]  # [1, 1, L, L]
        if attention_mask is not None:
            allowed = allowed & attention_mask.astype(bool)[:, None, None, :]
        bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)
        x = _Embeddings(cfg, self.dtype, name="embeddings")(input_ids)
        x = CLIPEncoder(cfg, self.dtype, name="encoder")(x, bias)
        x = L.layer_norm(cfg.layer_norm_eps, self.dtype, "final_layer_norm")(x)
        x = x.astype(jnp.float32)
        if cfg.eos_token_id == 2:  # legacy configs: the EOS token has the largest id
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            eos = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)
        return x, x[jnp.arange(x.shape[0]), eos]


def expected_shapes(module: CLIPTextModel) -> dict[str, Any]:
    return param_shapes(module, np.zeros((1, 2), np.int32))


def convert(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, Any]:
    """transformers CLIPTextModel state dict (with or without ``text_model.``) + config dict ->
    Flax params."""
    module = CLIPTextModel(CLIPTextConfig.from_transformers(config))
    return torch_to_flax(state_dict, expected_shapes(module), renames=RENAMES, ignore=IGNORE,
                         what="CLIPTextModel")


def load(path: str | os.PathLike, *, dtype: Any = jnp.float32, verify: bool = True
         ) -> tuple[CLIPTextModel, dict[str, Any]]:
    """Load a converted text encoder directory -> (module, params as ``dtype`` jax arrays).
    ``verify``: check the content hash and finiteness (``params_io.load_params``)."""
    params, config = load_params(path, what="CLIP text encoder", convert_hint=CONVERT_HINT,
                                 verify=verify)
    with data_errors(f"{os.fspath(path)}/config.json"):
        cfg = CLIPTextConfig.from_transformers(config)
    module = CLIPTextModel(cfg, dtype=dtype)
    check_tree(params, expected_shapes(module),
               what=f"CLIP text encoder parameters in {str(path)!r}")
    return module, cast_params(params, dtype)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """transformers ``CLIPTokenizer`` from a local folder (vocab.json, merges.txt, ...)."""
    from transformers import CLIPTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder not found: {str(path)!r}")
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int | None = None
             ) -> np.ndarray:
    """Prompts -> ids [B, max_length] int32, padded and truncated as the SD pipelines do
    (``padding="max_length"``, ``truncation=True``, length ``tokenizer.model_max_length``)."""
    out = tokenizer(list(prompts), padding="max_length", truncation=True,
                    max_length=max_length or tokenizer.model_max_length, return_tensors="np")
    return np.asarray(out["input_ids"], np.int32)


def encode_prompts(tokenizer: Any, module: CLIPTextModel, params: Any,
                   prompts: Sequence[str]) -> jax.Array:
    """Prompts -> SD text conditioning ``last_hidden_state`` [B, 77, D] float32."""
    ids = tokenize(tokenizer, prompts)
    return module.apply({"params": params}, jnp.asarray(ids))[0]
