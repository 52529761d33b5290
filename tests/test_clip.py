"""CLIP against transformers' PyTorch ``CLIPModel`` (random weights): a tiny model saved with
``save_pretrained`` and run through the converter CLI, and full-size ViT-B/32; preprocessing
against ``CLIPImageProcessorPil``; converter errors; the metric functions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sd_testlib as T  # noqa: E402

from convert_weights import clip as conv  # noqa: E402
from jaxhead.errors import MissingWeightsError, run_cli  # noqa: E402
from jaxhead.metrics import clip as M  # noqa: E402
from jaxhead.models import clip as C  # noqa: E402
from tests.image_testlib import edge_image  # noqa: E402

TINY = dict(
    projection_dim=16, logit_scale_init_value=2.0,
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=32, patch_size=8),
    text_config=dict(vocab_size=38, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=16, bos_token_id=36,
                     eos_token_id=37, pad_token_id=37),
)


def _torch_clip(config: dict, seed: int):
    """transformers CLIPModel with every tensor random (T.randomize; logit_scale by hand)."""
    m = transformers.CLIPModel(transformers.CLIPConfig(**config))
    for i, part in enumerate((m.vision_model, m.text_model, m.visual_projection,
                              m.text_projection)):
        T.randomize(part, seed + i)
    with torch.no_grad():
        m.logit_scale.fill_(2.3)
    return m.eval()


def _torch_image(m, pixels_nhwc):
    px = torch.from_numpy(np.ascontiguousarray(np.asarray(pixels_nhwc).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return m.visual_projection(m.vision_model(px).pooler_output).numpy()


def _torch_text(m, ids, mask=None):
    am = None if mask is None else torch.from_numpy(mask)
    with torch.no_grad():
        return m.text_projection(m.text_model(torch.from_numpy(ids), attention_mask=am)
                                 .pooler_output).numpy()


def _check(out, ref, what):
    scale = float(np.abs(ref).max())
    err = T.max_err(out, ref)
    print(f"{what}: max-abs {err:.3g}, scale {scale:.3g}, relative {err / scale:.3g}")
    assert np.shape(out) == np.shape(ref) and np.asarray(out).dtype == np.float32
    assert 0.1 < scale < 1e3 and np.std(ref) > 1e-2 * scale  # a non-degenerate test
    assert err <= 1e-4 * scale, (what, err, scale)


def _ids(rng, n, length, eos, vocab):
    ids = rng.integers(0, vocab, (n, length))
    ids[:, 0] = vocab  # bos: ids below vocab are ordinary tokens
    for i, e in enumerate(rng.integers(2, length, n)):
        ids[i, e:] = eos
    return ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny torch model saved as a transformers folder (safetensors, tokenizer, processor
    config) and converted by the CLI."""
    from transformers import CLIPImageProcessorPil

    tmp = tmp_path_factory.mktemp("clip")
    tm = _torch_clip(TINY, 5)
    tm.save_pretrained(tmp / "src")
    T.write_tiny_tokenizer(tmp / "src")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp / "src")
    assert run_cli(conv.main, [str(tmp / "src"), str(tmp / "dst")]) == 0
    return tm, M.load_clip(tmp / "dst"), tmp


def test_tiny_parity_through_converter(tiny, capsys):
    tm, params, _ = tiny
    assert "note:" not in capsys.readouterr().err  # the processor config fits preprocess
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    ids = _ids(rng, 3, 16, eos=37, vocab=36)
    mask = (np.arange(16)[None] < np.array([[16], [12], [16]])).astype(np.int64)
    ref_img, ref_txt = _torch_image(tm, x), _torch_text(tm, ids)
    _check(jax.jit(M.pixel_embeds)(params, x), ref_img, "tiny image")
    _check(jax.jit(M.text_embeds)(params, ids), ref_txt, "tiny text")
    _check(jax.jit(M.text_embeds)(params, ids, mask), _torch_text(tm, ids, mask),
           "tiny text, padding mask")
    with torch.no_grad():
        ref = tm(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(
            np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).logits_per_image.numpy()
    _check(M.logits_per_image(params, ref_img, ref_txt), ref, "logits_per_image")


def test_images_end_to_end_vs_processor(tiny):
    """uint8 images of another size through ``image_embeds`` vs transformers' Pillow processor
    + PyTorch model; float images in [0, 1] land within Pillow's 8-bit rounding."""
    from transformers import CLIPImageProcessorPil

    tm, params, tmp = tiny
    proc = CLIPImageProcessorPil.from_pretrained(str(tmp / "src"))
    x = np.stack([edge_image(61, 45, seed=s) for s in (0, 1)])
    px = np.asarray(proc(images=list(x), return_tensors="np").pixel_values).transpose(0, 2, 3, 1)
    ours = np.asarray(M.preprocess(jnp.asarray(x), image_size=32))
    np.testing.assert_allclose(ours, px, rtol=0, atol=1e-6)
    ours_f = np.asarray(M.preprocess(jnp.asarray(x / 255.0, jnp.float32), image_size=32))
    assert np.abs(ours_f - px).max() < 1.2 / 255 / min(M.OPENAI_CLIP_STD)
    _check(jax.jit(M.image_embeds)(params, x), _torch_image(tm, px), "tiny image end to end")


def test_converter_bin_legacy_keys_and_tokenizer(tiny):
    """``pytorch_model.bin`` with transformers-4 ``position_ids`` buffers converts to the same
    weights; the tokenizer files were copied."""
    tm, params, tmp = tiny
    src = tmp / "bin"
    src.mkdir()
    (src / "config.json").write_text((tmp / "src" / "config.json").read_text())
    sd = dict(tm.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(sd, src / "pytorch_model.bin")
    assert run_cli(conv.main, [str(src), str(tmp / "dst_bin")]) == 0
    jax.tree.map(np.testing.assert_array_equal, M.load_clip(tmp / "dst_bin").weights,
                 params.weights)
    vocab = json.loads((tmp / "src" / "vocab.json").read_text())
    ids = M.tokenize(M.load_clip_tokenizer(tmp / "dst"), ["a photo"])
    assert ids.tolist() == [[36, vocab["a</w>"], vocab["photo</w>"]] + [37] * 13]
    with pytest.raises(MissingWeightsError, match="convert_weights.clip"):
        M.load_clip_tokenizer(tmp / "dst_bin")


def test_converter_and_loader_errors(tiny, tmp_path, capsys):
    tm, _, tmp = tiny
    src = tmp_path / "bad"
    src.mkdir()
    cfg = json.loads((tmp / "src" / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    sd["visual_projection.weight"] = sd["visual_projection.weight"][:, :5]
    del sd["vision_model.embeddings.class_embedding"]
    sd["vision_model.extra.weight"] = np.zeros(3, np.float32)
    from safetensors.numpy import save_file

    save_file(sd, str(src / "model.safetensors"))
    assert run_cli(conv.main, [str(src), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "visual_projection.weight -> visual_projection/kernel: (5, 16) != expected (32, 16)" \
        in err
    assert "missing (1): vision_model/embeddings/class_embedding" in err
    assert "unexpected (1): vision_model.extra.weight" in err
    (src / "config.json").write_text(json.dumps(cfg["text_config"]))  # a CLIPTextModel folder
    assert run_cli(conv.main, [str(src), str(tmp_path / "o")]) == 1
    assert "not a CLIPModel config" in capsys.readouterr().err
    assert run_cli(conv.main, [str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 1
    assert "no config.json" in capsys.readouterr().err
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").unlink()
    (src / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3}))
    assert run_cli(conv.main, [str(src), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no CLIP weights" in err and err.count("\n") == 1
    assert conv.preprocessor_notes(src, C.CLIPConfig.from_transformers(cfg)) == [
        "image_mean=(0.5, 0.5, 0.5) (jaxhead preprocesses with "
        f"{M.OPENAI_CLIP_MEAN!r})"]
    with pytest.raises(MissingWeightsError, match="python -m convert_weights.clip"):
        M.load_clip(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        M.preprocess(jnp.zeros((2, 64, 64)))


def test_presets_match_the_published_sizes():
    """Parameter counts of the OpenAI checkpoints (151,277,313 and 427,616,513), and the
    preset round-trips through transformers' config."""
    counts = {name: sum(int(np.prod(s.shape)) for s in jax.tree.leaves(C.expected_shapes(cfg)))
              for name, cfg in C.PRESETS.items()}
    assert counts == {"openai/clip-vit-base-patch32": 151_277_313,
                      "openai/clip-vit-large-patch14": 427_616_513}
    for cfg in C.PRESETS.values():
        tcfg = transformers.CLIPConfig(**cfg.to_transformers()).to_dict()
        assert C.CLIPConfig.from_transformers(tcfg) == cfg


@pytest.mark.slow
def test_full_size_vit_b32_parity():
    """ViT-B/32 (random weights): image and text embeddings, fp32."""
    cfg = C.PRESETS["openai/clip-vit-base-patch32"]
    tm = _torch_clip(cfg.to_transformers(), 11)
    params = C.CLIPParams(config=cfg, weights=jax.tree.map(jnp.asarray, C.convert(
        {k: v.detach().numpy() for k, v in tm.state_dict().items()}, cfg)))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
    ids = _ids(rng, 2, 77, eos=49407, vocab=49406)  # eos_token_id 2: pooled at the max id
    _check(jax.jit(M.pixel_embeds)(params, x), _torch_image(tm, x), "ViT-B/32 image")
    _check(jax.jit(M.text_embeds)(params, ids), _torch_text(tm, ids), "ViT-B/32 text")


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _np_cos(a, b):
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_cosine_metrics():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 5, 8)).astype(np.float32)
    sim, score = jax.jit(M.clip_image_similarity), jax.jit(M.clip_score, static_argnames="w")
    np.testing.assert_allclose(sim(a, b), _np_cos(a, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sim(a, a), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sim(a, b), sim(b, a), rtol=1e-6)
    # positive scaling of either side, per row, changes nothing (catches a missing norm)
    s = rng.uniform(0.1, 10, (5, 1)).astype(np.float32)
    np.testing.assert_allclose(sim(3 * a, s * b), sim(a, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score(a, s * b), sim(a, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sim(a, -a), -1.0, rtol=1e-6)
    # CLIP-S: w * max(cos, 0); one [D] prompt broadcasts over the images
    cs = np.asarray(score(a, b[0], w=M.HESSEL_W))
    np.testing.assert_allclose(cs, 2.5 * np.maximum(_np_cos(a, b[0]), 0), rtol=1e-5, atol=1e-6)
    assert (cs == 0).any() and (cs > 0).any()
    with pytest.raises(ValueError, match="batch sizes"):
        M.clip_image_similarity(a, b[:3])
    with pytest.raises(ValueError, match="one D"):
        M.clip_score(a, b[:, :4])


def test_directional_similarity():
    rng = np.random.default_rng(1)
    u, v, p, q = rng.standard_normal((4, 6, 8)).astype(np.float32)
    ds = jax.jit(M.directional_similarity)
    un = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    # image change == text change (same unit endpoints, any positive scale of each) -> 1
    np.testing.assert_allclose(ds(u, v, 2 * u, 5 * v), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ds(v, u, 2 * u, 5 * v), -1.0, rtol=1e-5)  # opposite
    ref = _np_cos(un(v) - un(u), un(q) - un(p))
    got = ds(u, v, p, q)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # normalised before the difference: rescaling one endpoint changes nothing (it would if
    # raw embeddings were subtracted)
    np.testing.assert_allclose(ds(u, 7 * v, p, 0.2 * q), got, rtol=1e-4, atol=1e-5)
    assert np.abs(_np_cos(7 * v - u, 0.2 * q - p) - ref).max() > 1e-2
    # one prompt pair for all images; no image change -> 0
    np.testing.assert_allclose(ds(u, v, p[0], q[0]), _np_cos(un(v) - un(u), un(q[0]) - un(p[0])),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds(u, u, p, q), 0.0)
    np.testing.assert_array_equal(ds(u, v, p, 3 * p), 0.0)
    with pytest.raises(ValueError, match="batch sizes"):
        M.directional_similarity(u, v[:2], p, q)
