"""The SAS objective (Style Aligned Sampling loss) and its style bank: the gradient against
autodiff of its loss, the bank's statistics and cache, and one demo step (grid view only, the
analytic demo teacher: the cheap compile)."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from jaxhead import losses, sampling, train
from jaxhead.diffusion import NoiseSchedule, predict_x0
from jaxhead.errors import UsageError
from jaxhead.losses import sas
from jaxhead.teacher import TeacherOutput
from jaxhead.training import style_bank
from jaxhead.training.config import validate_config
from jaxhead.training.demo import build_models
from jaxhead.training.views import StepContext

SCHED = NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                   "beta_end": 0.012, "steps_offset": 1,
                                   "set_alpha_to_one": False})
AC = np.asarray(SCHED.alphas_cumprod, np.float32)


def _rand(seed, shape=(2, 8, 8, 4)):
    return jax.random.normal(jax.random.key(seed), shape)


def _style():
    a = np.asarray(_rand(9, (4, 4)))
    return {"mean": jnp.array([0.4, -0.3, 0.1, 0.2]), "cov": jnp.asarray(a @ a.T / 4 + 0.05 *
                                                                         np.eye(4))}


def _loss_grad(z, eu, ec, noise, t, style, guidance, weight):
    """Autodiff of ``sum_b 1/2 w_b |z_b - sg(z'_m)|^2`` w.r.t. z, with z'_m built from x_t
    (the noising, the CFG prediction at ``guidance``, diffusers' x0 formula, the
    whitening-colouring transform)."""
    ac = jnp.asarray(AC)

    def loss(z):
        ab = ac[t][:, None, None, None]
        x_t = jnp.sqrt(ab) * z + jnp.sqrt(1 - ab) * noise
        x0 = predict_x0(ac, x_t, eu + guidance * (ec - eu), t)
        z_m = sas.whiten_colour(x0, style["mean"], style["cov"])
        return jnp.sum(sas.sas_loss(z, z_m, weight))

    return np.asarray(jax.grad(loss)(z))


def test_sas_gradient_is_the_autodiff_of_its_loss_and_wrong_variants_fail():
    z = _rand(0) * 0.8 + 0.3
    eu, ec, noise = _rand(1), _rand(2), _rand(3)
    t = jnp.array([801, 261])
    ab = jnp.asarray(AC)[t]
    style = _style()
    obj = losses.OBJECTIVES["sas"]
    kw = losses.objective_kwargs("sas", {}, 7.5)
    assert kw == {"guidance_scale": 50.0, "weighting": "sds"}  # the paper's CFG 50, w = 1 - abar
    assert obj.t_range == (0.02, 0.98) and obj.alpha_index == "timestep"
    g = np.asarray(obj.fn(eu, ec, noise=noise, alpha_bar=ab, latents=z, style_stats=style, **kw))
    want = _loss_grad(z, eu, ec, noise, t, style, 50.0, 1 - ab)
    scale = np.abs(want).max()
    assert scale > 0.1
    np.testing.assert_allclose(g, want, atol=1e-5 * scale, rtol=0)

    def far(other):
        return np.abs(other - want).max() > 0.05 * scale

    # a wrong sign, weighting, guidance or style breaks the comparison
    assert far(-g)
    assert far(_loss_grad(z, eu, ec, noise, t, style, 50.0, 1.0))  # w = 1
    assert far(_loss_grad(z, eu, ec, noise, t, style, 50.0, jnp.sqrt(1 - ab)))
    assert far(np.asarray(obj.fn(eu, ec, noise=noise, alpha_bar=ab, latents=z,
                                 style_stats=style, guidance_scale=7.5)))
    assert far(np.asarray(obj.fn(eu, ec, noise=noise, alpha_bar=ab, latents=z,
                                 style_stats={"mean": style["mean"], "cov": jnp.eye(4)},
                                 **kw)))
    # weighting="uniform" is w = 1
    g1 = np.asarray(obj.fn(eu, ec, noise=noise, alpha_bar=ab, latents=z, style_stats=style,
                           guidance_scale=50.0, weighting="uniform"))
    np.testing.assert_allclose(g1, _loss_grad(z, eu, ec, noise, t, style, 50.0, 1.0),
                               atol=1e-5 * np.abs(g1).max(), rtol=0)
    # when x0_hat already has the style statistics, z'_m = x0_hat and the gradient is
    # w (z - x0_hat) = w sqrt((1 - abar) / abar) (eps_cfg - eps), SDS's direction
    x0 = sas.one_step_x0(z, eu + 50 * (ec - eu), noise, ab)
    mu, cov = sas.channel_stats(x0[:1])
    gs = np.asarray(obj.fn(eu[:1], ec[:1], noise=noise[:1], alpha_bar=ab[:1], latents=z[:1],
                           style_stats={"mean": mu[0], "cov": cov[0]}, **kw))
    sds = (1 - ab[0]) * jnp.sqrt((1 - ab[0]) / ab[0]) * (eu[:1] + 50 * (ec[:1] - eu[:1])
                                                          - noise[:1])
    np.testing.assert_allclose(gs, np.asarray(sds), atol=1e-4 * np.abs(sds).max(), rtol=0)


def test_step_context_hands_sas_the_latents_the_style_and_abar_of_the_timestep():
    cfg = demo.get_config()
    cfg.objective = "sas"
    cfg = validate_config(cfg)
    timesteps = SCHED.timesteps(cfg.num_inference_steps)
    models = SimpleNamespace(alphas_cumprod=AC, timesteps=timesteps)
    style = _style()
    ctx = StepContext(models, cfg, {"style": style}, {}, jnp.zeros((2, 1, 1)), None, None, {})
    z, eu, ec, noise = _rand(0), _rand(1), _rand(2), _rand(3)
    idx = jnp.array([5, 30])
    g = np.asarray(ctx.objective(TeacherOutput(eu, ec, ec), noise, idx, latents=z))
    want = _loss_grad(z, eu, ec, noise, jnp.asarray(timesteps)[idx], style, 50.0,
                      1 - jnp.asarray(AC)[jnp.asarray(timesteps)[idx]])
    np.testing.assert_allclose(g, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    with pytest.raises(ValueError, match="clean latents"):
        ctx.objective(TeacherOutput(eu, ec, ec), noise, idx)
    bare = StepContext(models, cfg, {}, {}, jnp.zeros((2, 1, 1)), None, None, {})
    with pytest.raises(ValueError, match="style bank"):
        bare.objective(TeacherOutput(eu, ec, ec), noise, idx, latents=z)


# --- the style bank ----------------------------------------------------------------------------


def _demo_config(**bank):
    c = demo.get_config()
    c.objective = "sas"
    c.demo_teacher = "gaussian"
    for k, v in bank.items():
        c.style_bank[k] = v
    return validate_config(c)


@pytest.fixture(scope="module")
def gaussian_models():
    return build_models(_demo_config())


def test_bank_is_the_samplers_output_and_its_statistics_are_numpys(gaussian_models):
    models, frozen = gaussian_models
    cfg = _demo_config(count=3, batch=2, steps=10, seed=7)
    lat = style_bank.sample_bank(models, frozen, cfg, progress=False)
    assert lat.shape == (3, models.latent_size, models.latent_size, 4)
    # the same latents as the sampler called directly, one seed fold_in(key(7), i) at a time
    sd = sampling.StableDiffusion(models.teacher, models.vae, None, None, models.schedule)
    params = {"teacher": frozen["teacher"], "vae": frozen["vae"]}
    for i in (0, 2):
        noise = sampling.draw_noise(sd, jax.random.fold_in(jax.random.key(7), i)[None],
                                    lat.shape[1:3], num_steps=10)
        one = sampling.sample(sd, params, noise, frozen["text"]["cond"], frozen["text"]["neg"],
                              num_steps=10, guidance_scale=7.5, decode=False)
        np.testing.assert_allclose(lat[i], np.asarray(one.latents[0]), atol=1e-5)
    mean, cov = style_bank.bank_statistics(lat)
    x = lat.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.T, bias=True), rtol=1e-10, atol=1e-12)
    # the analytic teacher's bank sits at its guided Gaussian: mean ~ 1.04 x the palette's
    mu = np.asarray(frozen["teacher"]["mu"]).reshape(-1, 4).mean(0)
    np.testing.assert_allclose(mean, 1.04 * mu, atol=0.06)


def _fake_sampler(calls):
    def fake(models, frozen, config, progress=True):
        calls.append(dict(config.style_bank))
        rng = np.random.default_rng(int(config.style_bank.seed) * 100 + config.style_bank.count)
        return rng.normal(size=(config.style_bank.count, 4, 4, 4)).astype(np.float32)

    return fake


def test_bank_cache_is_written_reused_and_invalidated(tmp_path, gaussian_models, monkeypatch,
                                                      capsys):
    models, frozen = gaussian_models
    path = tmp_path / "run" / style_bank.BANK_FILE
    cfg = _demo_config(count=2, batch=2)
    first = style_bank.load_or_make(path, models, frozen, cfg, progress=False)  # real sampler
    with np.load(path) as f:
        settings = json.loads(str(f["settings"]))
        np.testing.assert_allclose(first["mean"], style_bank.bank_statistics(f["latents"])[0],
                                   rtol=1e-6)
        np.testing.assert_array_equal(first["cov"], f["cov"].astype(np.float32))
    assert settings == {"prompt": "Portrait of a zombie", "negative_prompt": "", "count": 2,
                        "steps": 10, "guidance_scale": 7.5, "seed": 0,
                        "teacher": "demo:gaussian:seed0", "teacher_dtype": "float32",
                        "latent_size": models.latent_size}
    calls = []
    monkeypatch.setattr(style_bank, "sample_bank", _fake_sampler(calls))
    # reused: same settings (the batch size is not one of them)
    again = style_bank.load_or_make(path, models, frozen, _demo_config(count=2, batch=1))
    assert calls == []
    np.testing.assert_array_equal(again["mean"], first["mean"])
    np.testing.assert_array_equal(again["cov"], first["cov"])
    # each changed setting resamples and says which
    for change in ({"count": 3}, {"seed": 1}, {"steps": 5}, {"guidance_scale": 3.0}):
        new = style_bank.load_or_make(path, models, frozen, _demo_config(**change))
        key, value = next(iter(change.items()))
        assert calls[-1][key] == value
        assert f"{key}=" in capsys.readouterr().err
        with np.load(path) as f:
            assert json.loads(str(f["settings"]))[key] == value
            np.testing.assert_allclose(new["cov"], f["cov"], rtol=1e-6)
    n = len(calls)
    c = demo.get_config()
    c.objective, c.demo_teacher, c.prompt = "sas", "gaussian", "Portrait of a statue"
    style_bank.load_or_make(path, models, frozen, validate_config(c))
    assert len(calls) == n + 1 and "prompt=" in capsys.readouterr().err
    path.write_bytes(b"not an npz")
    style_bank.load_or_make(path, models, frozen, validate_config(c))
    assert len(calls) == n + 2 and "unreadable" in capsys.readouterr().err


def test_style_bank_settings_are_validated_and_only_sas_makes_a_bank():
    assert not style_bank.needs_style_bank(validate_config(demo.get_config()))
    assert style_bank.needs_style_bank(_demo_config())
    c = demo.get_config()
    c.objective = "sas"
    c.style_bank.count = 0
    c.style_bank.guidance_scale = -1.0
    with pytest.raises(UsageError, match="style_bank.count.*style_bank.guidance_scale"):
        validate_config(c)


# --- one demo step -----------------------------------------------------------------------------


@pytest.mark.slow  # one compile of the demo step (grid view only)
def test_sas_trains_a_demo_step_and_a_rebuild_reuses_the_bank(tmp_path, monkeypatch):
    """Grid view only (no 512 px SR) with the analytic teacher: the cheapest compiled step."""
    from jaxhead.config_cli import parse_config

    c = parse_config(["--config", "configs/demo.py", "--config.objective=sas",
                      "--config.demo_teacher=gaussian", "--config.single.enabled=False",
                      "--config.ldis_weight=0", "--config.style_bank.count=2",
                      f"--config.workdir={tmp_path}"])
    b = train.build(c)
    assert (tmp_path / style_bank.BANK_FILE).is_file()
    style = jax.device_get(b.frozen["style"])
    assert style["mean"].shape == (4,) and style["cov"].shape == (4, 4)
    state = b.init()
    before = jax.device_get(state.params)
    new, m = b.step(state, b.frozen)
    m = jax.device_get(m)
    assert np.isfinite(float(m["ld_grid"])) and float(m["skipped"]) == 0.0
    assert float(m["rms_g_grid"]) > 0 and float(m["update_norm"]) > 0
    assert any(np.any(np.asarray(x) != np.asarray(y)) for x, y in
               zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(before),
                   strict=True))

    def no_sampling(*a, **k):
        raise AssertionError("a rebuild in the same workdir must reuse the bank")

    monkeypatch.setattr(style_bank, "sample_bank", no_sampling)
    b2 = train.build(c)
    for k in ("mean", "cov"):
        np.testing.assert_array_equal(jax.device_get(b2.frozen["style"][k]),
                                      style[k])
