"""DDIM sampling (jaxhead.sampling) against diffusers' StableDiffusionPipeline,
StableDiffusionImg2ImgPipeline and StableDiffusionControlNetPipeline with DDIMScheduler, on a
tiny random-weight SD stack converted through convert_weights.diffusers; the same noise is fed
to both (diffusers draws it from a torch generator, replayed here)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from convert_weights import diffusers as conv
from jaxhead import sampling as S
from jaxhead.diffusion import NoiseSchedule
from jaxhead.errors import MissingWeightsError

SCHED = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "steps_offset": 1,
         "clip_sample": False}
PROMPTS = ["a photo of", "photo of a cat"]
B, HW, SIZE = 2, 16, 32  # batch, latent side, image side (the tiny VAE downsamples x2)


@functools.cache
def _torch_parts():
    clip = T.randomize(CLIPTextModel(CLIPTextConfig(**{**T.TINY_CLIP, "hidden_size": 32,
                                                       "intermediate_size": 64})), 7)
    return {"unet": T.torch_unet("teacher"), "vae": T.torch_vae(), "text_encoder": clip,
            "controlnet": T.torch_controlnet(2, "teacher")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The torch parts saved as a diffusers folder, converted, loaded with load_sd."""
    root = tmp_path_factory.mktemp("sd")
    m = _torch_parts()
    src = root / "src"
    for name in ("unet", "vae", "text_encoder"):
        m[name].save_pretrained(src / name)
    T.write_tiny_tokenizer(src / "tokenizer")
    DDIMScheduler(**SCHED).save_pretrained(src / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    (src / "model_index.json").write_text(json.dumps(index))
    m["controlnet"].save_pretrained(root / "cn")
    dst = root / "converted"
    assert conv.main([str(src), str(dst), "--controlnet", f"depth={root / 'cn'}"]) == 0
    sd, params = S.load_sd(dst, controlnets=("depth",))
    tok = CLIPTokenizer.from_pretrained(str(src / "tokenizer"), local_files_only=True)
    return sd, params, tok, dst


def _pipe(cls, tok, **extra):
    m = _torch_parts()
    return cls(vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=tok, unet=m["unet"],
               scheduler=DDIMScheduler(**SCHED), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False, **extra).to(torch.float32)


def _randn(g, n):
    """n draws of NCHW latent noise from generator g, as diffusers' randn_tensor makes them."""
    return [torch.randn((B, 4, HW, HW), generator=g) for _ in range(n)]


def _texts(sd, params):
    return S.encode_prompts(sd, params, PROMPTS), S.encode_prompts(sd, params, [""])


def test_ddim_step_matches_scheduler_step():
    """Every timestep of a 10-step schedule, eta 0 and 0.8 (given variance noise), epsilon
    and v-prediction, clip_sample on and off."""
    rng = np.random.default_rng(0)
    for pred, clip, eta in (("epsilon", False, 0.0), ("epsilon", True, 0.8),
                            ("v_prediction", False, 0.8)):
        cfg = {**SCHED, "prediction_type": pred, "clip_sample": clip}
        sch = DDIMScheduler(**cfg)
        sch.set_timesteps(10)
        ns = NoiseSchedule.from_config(cfg)
        ts, prev = S.ddim_timesteps(ns, 10)
        np.testing.assert_array_equal(ts, sch.timesteps.numpy())
        for t, tp in zip(ts, prev, strict=True):
            x, e, vn = (rng.standard_normal((2, 4, 3, 3)).astype(np.float32) for _ in range(3))
            ref = sch.step(torch.from_numpy(e), int(t), torch.from_numpy(x), eta=eta,
                           variance_noise=torch.from_numpy(vn) if eta else None)
            got, x0 = S.ddim_step(jnp.asarray(ns.alphas_cumprod), ns.final_alpha_cumprod, x, e,
                                  t, tp, eta=eta, variance_noise=vn if eta else None,
                                  prediction_type=pred, clip_sample=1.0 if clip else None)
            assert T.rel_err(got, ref.prev_sample) <= 1e-5, (pred, t)
            assert T.rel_err(x0, ref.pred_original_sample) <= 1e-5, (pred, t)
    assert S.start_index_for_strength(50, 0.5) == 25
    assert S.start_index_for_strength(10, 1.0) == 0
    with pytest.raises(ValueError, match="strength"):
        S.start_index_for_strength(50, 1.5)


def test_text_to_image_matches_pipeline(stack):
    sd, params, tok, _ = stack
    init = _randn(torch.Generator().manual_seed(0), 1)[0]
    pipe = _pipe(StableDiffusionPipeline, tok)
    ref = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=10, guidance_scale=7.5,
               latents=init.clone(), output_type="latent").images
    with torch.no_grad():
        ref_img = (pipe.vae.decode(ref / pipe.vae.config.scaling_factor).sample / 2 + 0.5
                   ).clamp(0, 1)
    text, neg = _texts(sd, params)
    ticks = []
    with S.progress_hook(ticks.append):
        out = S.sample(sd, params, S.Noise(jnp.asarray(T.nhwc(init))), text, neg, num_steps=10,
                       guidance_scale=7.5, progress=True)
    jax.effects_barrier()
    assert sorted(ticks) == list(range(10))
    assert out.latents.shape == (B, HW, HW, 4)
    err = T.max_err(out.latents, T.nhwc(ref))
    print(f"txt2img final latents max-abs {err:.2e} (scale {np.abs(ref.numpy()).max():.2f})")
    assert err <= T.TOL
    assert T.max_err(out.images, T.nhwc(ref_img)) <= T.TOL


def test_image_to_image_eta_matches_pipeline(stack):
    """SDEdit: strength 0.5 of 20 steps (10 run), eta 0.5, VAE posterior sample: the
    generator's draws are, in order, the posterior noise, the forward noise, one variance
    noise per step."""
    sd, params, tok, _ = stack
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (B, SIZE, SIZE, 3)).astype(np.float32)
    ref = _pipe(StableDiffusionImg2ImgPipeline, tok)(
        PROMPTS, image=img, strength=0.5, num_inference_steps=20, guidance_scale=5.0, eta=0.5,
        generator=torch.Generator().manual_seed(3), output_type="latent").images
    draws = [T.nhwc(d) for d in _randn(torch.Generator().manual_seed(3), 12)]
    start = S.start_index_for_strength(20, 0.5)
    assert start == 10
    noise = S.Noise(jnp.asarray(draws[1]), jnp.asarray(draws[0]), jnp.asarray(np.stack(draws[2:])))
    text, neg = _texts(sd, params)
    out = S.sample(sd, params, noise, text, neg, num_steps=20, start_index=start,
                   image=jnp.asarray(img * 2 - 1), eta=0.5, guidance_scale=5.0, decode=False)
    err = T.max_err(out.latents, T.nhwc(ref))
    print(f"img2img (eta 0.5) final latents max-abs {err:.2e}")
    assert err <= T.TOL
    # the image matters: another image, same noise, another result
    other = S.sample(sd, params, noise, text, neg, num_steps=20, start_index=start,
                     image=jnp.asarray(img[::-1] * 2 - 1), eta=0.5, guidance_scale=5.0,
                     decode=False)
    assert T.max_err(other.latents, out.latents) > 1e-2


def test_controlnet_matches_pipeline(stack):
    sd, params, tok, _ = stack
    m = _torch_parts()
    init = _randn(torch.Generator().manual_seed(5), 1)[0]
    control = np.random.default_rng(2).uniform(0, 1, (B, SIZE, SIZE, 3)).astype(np.float32)
    ref = _pipe(StableDiffusionControlNetPipeline, tok, controlnet=m["controlnet"])(
        PROMPTS, image=torch.from_numpy(T.nchw(control)), height=SIZE, width=SIZE,
        num_inference_steps=10, guidance_scale=7.5, controlnet_conditioning_scale=0.7,
        latents=init.clone(), output_type="latent").images
    text, neg = _texts(sd, params)
    out = S.sample(sd, params, S.Noise(jnp.asarray(T.nhwc(init))), text, neg, num_steps=10,
                   control=jnp.asarray(control), controlnet="depth", control_scale=0.7,
                   decode=False)
    err = T.max_err(out.latents, T.nhwc(ref))
    print(f"ControlNet final latents max-abs {err:.2e}")
    assert err <= T.TOL


def test_noise_draws_and_errors(stack, tmp_path):
    sd, params, _, dst = stack
    a = S.draw_noise(sd, S.seed_keys([0, 1]), (4, 4), num_steps=10, start_index=5, eta=0.5,
                     posterior_sample=True)
    b = S.draw_noise(sd, S.seed_keys([1]), (4, 4), num_steps=10, start_index=5, eta=0.5,
                     posterior_sample=True)
    assert a.init.shape == (2, 4, 4, 4) and a.steps.shape == (5, 2, 4, 4, 4)
    np.testing.assert_array_equal(a.init[1], b.init[0])  # a seed's noise ignores the batch
    np.testing.assert_array_equal(a.steps[:, 1], b.steps[:, 0])
    assert not np.allclose(a.init[0], a.init[1])
    text = jnp.zeros((1, 16, 32))
    with pytest.raises(ValueError, match="eta > 0"):
        S.sample(sd, params, S.Noise(a.init), text, text, num_steps=10, eta=0.5)
    with pytest.raises(ValueError, match="needs an image"):
        S.sample(sd, params, S.Noise(a.init), text, text, num_steps=10, start_index=3)
    # a missing piece is named with the command that makes it, before anything loads
    import shutil

    broken = tmp_path / "sd"
    shutil.copytree(dst, broken)
    shutil.rmtree(broken / "vae")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(MissingWeightsError) as e:
        S.load_sd(broken, controlnets=("depth", "edge"))
    msg = str(e.value)
    assert "missing vae, controlnet_edge, scheduler" in msg
    assert "python -m convert_weights.diffusers" in msg and "--controlnet edge=" in msg


def test_sample_cli(stack, tmp_path, capsys):
    """SDEdit of a PNG with a ControlNet, eta > 0, 3 seeds in padded batches of 2; one-line
    errors for bad input."""
    from PIL import Image

    from jaxhead import sample as cli
    from jaxhead.errors import run_cli

    _, _, _, dst = stack
    rng = np.random.default_rng(4)
    for name in ("img", "ctl"):
        Image.fromarray(rng.integers(0, 256, (42, 42, 3), np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    args = ["--sd", str(dst), "--prompt", "a photo of", "--image", str(tmp_path / "img.png"),
            "--strength", "0.5", "--control", f"depth={tmp_path / 'ctl.png'}", "--steps", "4",
            "--eta", "0.3", "--seeds", "0-2", "--batch", "2", "--out", str(out)]
    assert run_cli(cli.main, args) == 0
    imgs = [np.asarray(Image.open(out / f"seed{s:04d}.png")) for s in range(3)]
    assert all(i.shape == (40, 40, 3) for i in imgs)  # 42 px rounded down to a multiple of 4
    assert not np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[1], imgs[2])
    capsys.readouterr()
    bad = [(["--strength", "0.5"], 2, "--strength needs --image"),
           (["--control", "depth"], 2, "NAME=PATH"),
           (["--image", str(tmp_path / "nope.png")], 1, "image not found"),
           (["--control", f"edge={tmp_path / 'ctl.png'}"], 1, "controlnet_edge")]
    for extra, code, msg in bad:
        rc = run_cli(cli.main, ["--sd", str(dst), "--prompt", "a", "--out", str(out)] + extra)
        err = capsys.readouterr().err
        assert rc == code and msg in err and err.count("\n") <= 3, (extra, err)
