"""CLIP embeddings and the CLIP metrics of the paper, as pure JAX functions.

    params = load_clip("checkpoints/clip-vit-b32")      # python -m convert_weights.clip
    img = image_embeds(params, images)                   # [N, H, W, 3] uint8 / [0, 1] -> [N, D]
    txt = text_embeds(params, tokenize(load_clip_tokenizer("checkpoints/clip-vit-b32"), prompts))
    clip_score(img, txt); clip_image_similarity(img_a, img_b)
    directional_similarity(img_src, img_tgt, txt_src, txt_tgt)

Embeddings are projected and *not* normalised (transformers' ``get_image_features`` /
``get_text_features``); every metric normalises its inputs itself, so scaling an embedding by a
positive factor never changes a metric.

Preprocessing is transformers' CLIP image processor (OpenAI's): resize the shortest side to
``image_size`` (224) with bicubic resampling, centre-crop ``image_size`` square, scale by 1/255,
normalise with the CLIP mean / std. The resize is Pillow's antialiased bicubic
(:func:`jaxhead.ops.resize.resize_bicubic_pil`), which ``CLIPImageProcessorPil`` (transformers
5; ``CLIPImageProcessor`` in 4.x) runs on uint8 images:

* uint8 input reproduces ``CLIPImageProcessorPil`` up to float32 rounding of the normalisation
  (the resized pixels are bit-identical to Pillow's).
* float input in [0, 1] is resampled in float32 without Pillow's rounding to 8 bits after each
  pass: within 1.1 levels (of 255; mean 0.3) of Pillow on the rounded image, measured on a
  synthetic 512 px test image (smooth shading, hard dark/bright edges, noise) resized to 224.
  transformers would *truncate* float input to uint8 (``astype(uint8)`` of x * 255) before
  Pillow; pass ``round(x * 255)`` as uint8 to reproduce an evaluation on saved PNGs exactly.
* ``jax.image.resize(..., "bicubic", antialias=True)`` uses the same Keys kernel (a = -0.5) and
  support, but does not clip: on the same image it is up to 15 levels off Pillow at hard edges
  (3.8 if clipped once at the end, Pillow clips after each pass), hence the own resampler.
* transformers 5's default ``CLIPImageProcessor`` is the torchvision backend; on uint8 it calls
  torch's antialiased bicubic, which differs from Pillow by one level on about 0.4% of pixels
  (same image).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.models.clip import CLIPParams, load_clip
from jaxhead.models.clip_text import tokenize
from jaxhead.ops.resize import resize_bicubic_pil

Array = jax.Array

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HESSEL_W = 2.5  # CLIP-S weight of Hessel et al. 2021 (CLIPScore); torchmetrics uses 100


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(h, w) after transformers' shortest-edge resize: the short side becomes
    ``shortest_edge``, the long side ``int(shortest_edge * long / short)`` (truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def preprocess(images: Array, *, image_size: int = 224) -> Array:
    """``[N, H, W, 3]`` uint8, or float in [0, 1] -> CLIP pixel values ``[N, S, S, 3]`` float32
    (S = ``image_size``): shortest-edge bicubic resize, centre crop, 1/255, CLIP mean / std."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"CLIP expects [N, H, W, 3] images, got shape {images.shape}")
    h, w = images.shape[1:3]
    nh, nw = resized_size(h, w, image_size)
    x = images if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if (nh, nw) != (h, w):
        x = resize_bicubic_pil(x, (nh, nw))
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[:, top:top + image_size, left:left + image_size]
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) * (1.0 / 255.0)
    mean, std = jnp.asarray(OPENAI_CLIP_MEAN), jnp.asarray(OPENAI_CLIP_STD)
    return (x - mean) / std


def pixel_embeds(params: CLIPParams, pixel_values: Array) -> Array:
    """Preprocessed ``[N, S, S, 3]`` pixel values -> projected image embeddings ``[N, D]``."""
    return params.module.apply({"params": params.weights}, pixel_values,
                               method="get_image_features")


def image_embeds(params: CLIPParams, images: Array) -> Array:
    """Images ``[N, H, W, 3]`` (uint8, or float in [0, 1]; any size) -> projected image
    embeddings ``[N, D]`` float32, not normalised. Pure; wrap in ``jax.jit``."""
    images = jnp.asarray(images)
    return pixel_embeds(params, preprocess(images, image_size=params.config.vision.image_size))


def text_embeds(params: CLIPParams, token_ids: Array, attention_mask: Array | None = None
                ) -> Array:
    """Token ids ``[N, L]`` (``tokenize``: padded to 77 with the end-of-text token) ->
    projected text embeddings ``[N, D]`` float32, not normalised. The text tower is causal and
    pools at the first end-of-text token, so padding after it (and ``attention_mask`` over
    it) does not change the embedding."""
    return params.module.apply({"params": params.weights}, jnp.asarray(token_ids),
                               attention_mask, method="get_text_features")


def logits_per_image(params: CLIPParams, img_emb: Array, txt_emb: Array) -> Array:
    """``exp(logit_scale) * cos`` for every image / text pair: ``[N_img, N_txt]`` (CLIPModel's
    ``logits_per_image``; a softmax over the texts gives zero-shot probabilities)."""
    return jnp.exp(params.weights["logit_scale"]) * (_unit(img_emb) @ _unit(txt_emb).T)


def load_clip_tokenizer(directory: str | os.PathLike) -> Any:
    """The ``CLIPTokenizer`` the converter copied to ``directory/tokenizer``."""
    from jaxhead.errors import MissingWeightsError
    from jaxhead.models.clip_text import load_tokenizer

    try:
        return load_tokenizer(os.path.join(directory, "tokenizer"))
    except FileNotFoundError as e:
        raise MissingWeightsError(f"{e}; the converter copies the tokenizer files (vocab.json, "
                                  "merges.txt, ...) when SRC has them:\n"
                                  "  python -m convert_weights.clip SRC DST") from None


# ----------------------------------------------------------------------------------------------
# Metrics: embeddings in, one value per row out (the caller averages).
# ----------------------------------------------------------------------------------------------


def _unit(x: Array, eps: float = 1e-8) -> Array:
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _check(*embs: Array) -> None:
    shapes = [jnp.shape(e) for e in embs]
    if any(len(s) not in (1, 2) for s in shapes) or len({s[-1] for s in shapes}) != 1:
        raise ValueError(f"embeddings must be [N, D] or [D] with one D, got shapes {shapes}")
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"embedding batch sizes do not match: {shapes}") from None


def _cosine(a: Array, b: Array) -> Array:
    return jnp.sum(_unit(a) * _unit(b), axis=-1)


def clip_image_similarity(a_emb: Array, b_emb: Array) -> Array:
    """Cosine similarity of paired image embeddings ``[N, D]`` x ``[N, D]`` -> ``[N]`` in
    [-1, 1] (e.g. stylised vs original render of the same view: identity / content kept)."""
    _check(a_emb, b_emb)
    return _cosine(a_emb, b_emb)


def clip_score(img_emb: Array, txt_emb: Array, *, w: float | None = None) -> Array:
    """Image-text agreement ``[N]``: image ``[N, D]`` vs text ``[N, D]`` (or one ``[D]`` prompt
    for all images).

    ``w=None`` (default): the plain cosine (as most stylisation papers report "CLIP score").
    ``w`` given: CLIP-S of Hessel et al. 2021, ``w * max(cos, 0)`` (``w = HESSEL_W`` = 2.5 in
    the paper; torchmetrics' ``CLIPScore`` is w = 100).
    """
    _check(img_emb, txt_emb)
    cos = _cosine(img_emb, txt_emb)
    return cos if w is None else w * jnp.maximum(cos, 0.0)


def directional_similarity(img_src: Array, img_tgt: Array, txt_src: Array,
                           txt_tgt: Array, *, min_change: float = 1e-6) -> Array:
    """CLIP directional similarity ``[N]`` (StyleGAN-NADA's direction, InstructPix2Pix's
    metric): cosine between the image change ``unit(img_tgt) - unit(img_src)`` and the text
    change ``unit(txt_tgt) - unit(txt_src)``. Each embedding is normalised *before* the
    difference, as both references do. Images ``[N, D]``; texts ``[N, D]`` or ``[D]`` (one
    prompt pair for all).

    Rows where either change is shorter than ``min_change`` (no change, up to float32
    round-off, which a cosine would otherwise blow up to a random direction) give 0.
    """
    _check(img_src, img_tgt, txt_src, txt_tgt)
    d_img = _unit(img_tgt) - _unit(img_src)
    d_txt = _unit(txt_tgt) - _unit(txt_src)
    moved = jnp.minimum(jnp.linalg.norm(d_img, axis=-1), jnp.linalg.norm(d_txt, axis=-1))
    return jnp.where(moved > min_change, _cosine(d_img, d_txt), 0.0)


__all__ = ["HESSEL_W", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "CLIPParams",
           "clip_image_similarity", "clip_score", "directional_similarity", "image_embeds",
           "load_clip", "load_clip_tokenizer", "logits_per_image", "pixel_embeds", "preprocess",
           "resized_size", "text_embeds", "tokenize"]
