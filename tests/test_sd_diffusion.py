"""Noise schedule vs diffusers' DDIMScheduler."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from jaxhead.diffusion import NoiseSchedule, add_noise, predict_x0

SD15 = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}


def test_sd15_schedule_from_file(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD15))
    s = NoiseSchedule.from_file(tmp_path)
    ref = DDIMScheduler.from_config(SD15)
    np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6)
    assert s.alphas_cumprod.dtype == np.float32 and s.num_train_timesteps == 1000
    ts = s.timesteps(50)
    assert ts[0] == 981 and ts[-1] == 1 and ts[1] == 961 and len(ts) == 50
    ref.set_timesteps(50)
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    assert s.final_alpha_cumprod == pytest.approx(float(ref.final_alpha_cumprod))


@pytest.mark.parametrize("changes", [
    {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"}, {"rescale_betas_zero_snr": True},
    {"steps_offset": 0, "set_alpha_to_one": True},
])
@pytest.mark.parametrize("steps", [50, 30, 7])
def test_schedule_variants(changes, steps):
    cfg = {**SD15, **changes}
    s = NoiseSchedule.from_config(cfg)
    ref = DDIMScheduler.from_config(cfg)
    np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-5,
                               atol=1e-7)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(s.timesteps(steps), ref.timesteps.numpy())


def test_add_noise_and_tweedie():
    s = NoiseSchedule.from_config(SD15)
    ref = DDIMScheduler.from_config(SD15)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
    eps = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
    t = np.array([1, 500, 981])
    ac = jnp.asarray(s.alphas_cumprod)
    x_t = jax.jit(add_noise)(ac, x0, eps, t)
    want = ref.add_noise(torch.from_numpy(x0).permute(0, 3, 1, 2),
                         torch.from_numpy(eps).permute(0, 3, 1, 2), torch.from_numpy(t))
    np.testing.assert_allclose(x_t, want.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)
    # x0 prediction inverts add_noise, and equals DDIM's pred_original_sample
    np.testing.assert_allclose(jax.jit(predict_x0)(ac, x_t, eps, t), x0, rtol=1e-4, atol=2e-4)
    ref.set_timesteps(50)
    out = ref.step(torch.from_numpy(eps[2:]).permute(0, 3, 1, 2), 981,
                   torch.from_numpy(np.array(x_t[2:])).permute(0, 3, 1, 2))
    np.testing.assert_allclose(predict_x0(ac, x_t[2:], eps[2:], 981),
                               out.pred_original_sample.permute(0, 2, 3, 1).numpy(),
                               rtol=1e-5, atol=1e-5)
    # scalar t broadcasts over the batch
    np.testing.assert_allclose(add_noise(ac, x0, eps, 500), add_noise(ac, x0, eps, [500] * 3))


def test_schedule_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler config"):
        NoiseSchedule.from_file(tmp_path)
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_config({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="timestep_spacing"):
        NoiseSchedule.from_config({"timestep_spacing": "karras"})
    with pytest.raises(ValueError, match="num_inference_steps"):
        NoiseSchedule.from_config(SD15).timesteps(0)
