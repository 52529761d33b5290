"""CLIP text encoder and tokenizer: parity with transformers (PyTorch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch
from transformers import CLIPTokenizer

from jaxhead.models import clip_text


def _convert(eos: int):
    tm = T.torch_clip(eos)
    cfg = tm.config.to_dict()
    module = clip_text.CLIPTextModel(clip_text.CLIPTextConfig.from_transformers(cfg))
    return tm, module, clip_text.convert(T.state_dict(tm), cfg)


def _ids(rng: np.random.Generator) -> np.ndarray:
    ids = rng.integers(0, 36, (3, 16))
    ids[:, 0] = 36  # bos
    ids[0, 5:] = 37  # eos then padding with eos
    ids[1, 9] = 37
    ids[2, 15] = 37
    return ids


@pytest.mark.parametrize("eos", [T.TINY_CLIP["eos_token_id"], 2])  # 2: legacy argmax pooling
def test_clip_text_parity(eos):
    tm, module, params = _convert(eos)
    ids = _ids(np.random.default_rng(0))
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    fn = jax.jit(module.apply)
    for m in (None, mask):
        with torch.no_grad():
            ref = tm(torch.from_numpy(ids), attention_mask=None if m is None
                     else torch.from_numpy(m))
        h, pooled = fn({"params": params}, ids, m)
        assert T.max_err(h, ref.last_hidden_state) <= T.TOL
        assert T.max_err(pooled, ref.pooler_output) <= T.TOL


def test_clip_text_prefixed_checkpoint():
    """transformers 4.x checkpoints store ``text_model.`` keys (and a position_ids buffer)."""
    tm, _, params = _convert(T.TINY_CLIP["eos_token_id"])
    sd = {f"text_model.{k}": v for k, v in T.state_dict(tm).items()}
    sd["text_model.embeddings.position_ids"] = np.arange(16)[None]
    params4 = clip_text.convert(sd, tm.config.to_dict())
    jax.tree.map(np.testing.assert_array_equal, params4, params)


def test_tokenizer_ids(tmp_path):
    vocab = T.write_tiny_tokenizer(tmp_path / "tokenizer")
    tok = clip_text.load_tokenizer(tmp_path / "tokenizer")
    prompts = ["a photo of a photo", "", "Photo  of   A PHOTO",
               " ".join(["a"] * 30)]  # truncated to 16 with eos kept
    ids = clip_text.tokenize(tok, prompts)
    assert ids.dtype == np.int32 and ids.shape == (4, 16)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    a, photo, of = vocab["a</w>"], vocab["photo</w>"], vocab["of</w>"]
    assert ids[0].tolist() == [bos, a, photo, of, a, photo] + [eos] * 10
    assert ids[1].tolist() == [bos] + [eos] * 15
    assert ids[2].tolist() == [bos, photo, of, a, photo] + [eos] * 11
    assert ids[3].tolist() == [bos] + [a] * 14 + [eos]
    # identical to the SD pipelines' call on transformers' tokenizer
    ref = CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    want = ref(prompts, padding="max_length", max_length=ref.model_max_length, truncation=True,
               return_tensors="np").input_ids
    np.testing.assert_array_equal(ids, want)


def test_encode_prompts_matches_transformers(tmp_path):
    T.write_tiny_tokenizer(tmp_path / "tok")
    tok = clip_text.load_tokenizer(tmp_path / "tok")
    tm, module, params = _convert(T.TINY_CLIP["eos_token_id"])
    emb = clip_text.encode_prompts(tok, module, params, ["a photo of a photo", ""])
    ids = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))(
        ["a photo of a photo", ""], padding="max_length", max_length=16, truncation=True,
        return_tensors="pt").input_ids
    with torch.no_grad():
        ref = tm(ids).last_hidden_state
    assert emb.shape == (2, 16, 64) and emb.dtype == jnp.float32
    assert T.max_err(emb, ref) <= T.TOL


def test_clip_config_errors():
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        clip_text.CLIPTextConfig.from_transformers({"hidden_act": "relu"})
    with pytest.raises(ValueError, match="model_type"):
        clip_text.CLIPTextConfig.from_transformers({"model_type": "t5"})
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        clip_text.load_tokenizer("/nonexistent/tokenizer")
