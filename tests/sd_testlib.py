"""Shared pieces of the Stable Diffusion parity tests: tiny random-weight PyTorch reference
models (diffusers / transformers), their conversions, and a tiny CLIP tokenizer.

Builders are cached (``functools.cache``) so every test module of a session reuses the same
models and compiled functions.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
import torch

# fp32 parity tolerance (max-abs, or relative to the output scale for large outputs)
TOL = 1e-4

TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2, cross_attention_dim=32, attention_head_dim=(2, 4, 4), norm_num_groups=8,
)
# Second family member: linear projections, 2 transformer layers, other time-embedding options.
TINY_UNET_LINEAR = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
    cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8, use_linear_projection=True,
    transformer_layers_per_block=2, flip_sin_to_cos=False, freq_shift=1,
    mid_block_scale_factor=1.5, center_input_sample=True,
)
# Smallest member, for the teacher plumbing tests (one cross-attention level).
TINY_UNET_TEACHER = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32,  # SD's 32: single files
)
TINY_CONTROL_CHANNELS = (8, 16)  # control image = 2x the latent size
TINY_VAE = dict(
    block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=32,
    latent_channels=4,
)
TINY_CLIP = dict(
    vocab_size=38, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=16, bos_token_id=36, eos_token_id=37,
    pad_token_id=37,
)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with random values (norm scales near 1, biases and zero-inited
    convs non-zero) so that any mis-mapped tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return module.eval()


def state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def nhwc(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """NCHW -> NHWC (a writable contiguous copy)."""
    return np.array(np.asarray(x).transpose(0, 2, 3, 1))


def nchw(x: np.ndarray | jax.Array) -> np.ndarray:
    """NHWC -> NCHW (a writable contiguous copy)."""
    return np.array(np.asarray(x).transpose(0, 3, 1, 2))


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    return max_err(a, b) / float(np.max(np.abs(np.asarray(b))))


@functools.cache
def torch_unet(which: str = "main"):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    cfg, seed = {"main": (TINY_UNET, 1), "linear": (TINY_UNET_LINEAR, 11),
                 "teacher": (TINY_UNET_TEACHER, 21)}[which]
    return randomize(UNet2DConditionModel(**cfg), seed)


@functools.cache
def torch_controlnet(seed: int = 2, which: str = "main"):
    """A ControlNet built from ``torch_unet(which)``'s configuration, own random weights."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(torch_unet(which),
                                   conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS)
    return randomize(cn, seed)


@functools.cache
def torch_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return randomize(AutoencoderKL(**TINY_VAE), 3)


@functools.cache
def torch_clip(eos_token_id: int = TINY_CLIP["eos_token_id"]):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{**TINY_CLIP, "eos_token_id": eos_token_id})
    return randomize(CLIPTextModel(cfg), 4)


# --- tiny CLIP BPE tokenizer ------------------------------------------------------------------

TOKENIZER_WORDS = ("a", "photo", "of", "portrait", "pixar", "style")


def write_tiny_tokenizer(folder: Path, model_max_length: int = 16) -> dict[str, int]:
    """A CLIP BPE vocabulary over a-z, a few merged words and the two special tokens, written as
    SD 1.5's ``tokenizer/`` folder is (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json; no tokenizer.json). Returns the vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list("abcdefghijklmnopqrstuvwxyz") + [c + "</w>" for c in "afoty"]
    merges = ["p h", "ph o", "pho t", "phot o</w>", "o f</w>"]
    tokens += ["ph", "pho", "phot", "photo</w>", "of</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
         "do_lower_case": True}))
    return vocab
