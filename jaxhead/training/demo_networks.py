"""The demo's small random networks: their sizes, a word-hash tokenizer and host-drawn random
parameters. Imports nothing of the trainer, so terms and the demo models both use it."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEMO_UNET = dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D",
                 "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 layers_per_block=(1, 1), norm_num_groups=8, cross_attention_dim=32,
                 num_attention_heads=(2, 2), transformer_layers_per_block=(1, 1))
DEMO_CONTROL_CHANNELS = (8, 8, 16, 16)  # 8x down: 512 px control for 64 px latents
DEMO_CONTROLNET_SEEDS = {"edge": 3, "depth": 4}  # seed offsets: each ControlNet its own weights
DEMO_VAE = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
DEMO_DEPTH = dict(embed_dim=32, depth=4, num_heads=2, intermediate_layers=(0, 1, 2, 3),
                  features=16, out_channels=(8, 16, 16, 32), head_hidden=8)
DEMO_CLIP = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, max_position_embeddings=77, eos_token_id=999)


class DemoTokenizer:
    """Word-hash tokenizer for the demo text encoder (the real one is CLIP's BPE)."""

    model_max_length = 77

    def __init__(self, vocab_size: int = 1000) -> None:
        self.vocab_size = vocab_size

    def __call__(self, prompts, padding=None, truncation=True, max_length=77,
                 return_tensors="np"):
        ids = np.full((len(prompts), max_length), self.vocab_size - 1, np.int32)
        for i, p in enumerate(prompts):
            toks = [int(hashlib.md5(w.lower().encode()).hexdigest(), 16)
                    % (self.vocab_size - 2) + 1 for w in p.replace(",", " ").split()]
            toks = [0] + toks[: max_length - 2] + [self.vocab_size - 1]
            ids[i, : len(toks)] = toks
        return {"input_ids": ids}


def random_params(shapes: Any, seed: int, draw: bool = True) -> Any:
    """Host-side random params for a shape tree: weights ~ N(0, 1/fan_in), norm scales 1,
    biases small (no init compile; every path, zero-convs included, is active). ``draw=False``:
    float32 zeros from ``jnp.zeros`` (abstract under ``jax.eval_shape``)."""
    if not draw:
        return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    rng = np.random.default_rng(seed)

    def one(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return jnp.ones(s.shape, jnp.float32)
        if name.endswith("['bias']"):
            return jnp.asarray(0.02 * rng.standard_normal(s.shape), jnp.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(max(fan_in, 1)), jnp.float32)

    return jax.tree_util.tree_map_with_path(one, shapes)


__all__ = ["DEMO_CLIP", "DEMO_CONTROLNET_SEEDS", "DEMO_CONTROL_CHANNELS", "DEMO_DEPTH",
           "DEMO_UNET", "DEMO_VAE", "DemoTokenizer", "random_params"]
