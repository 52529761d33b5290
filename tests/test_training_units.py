"""The trainer's extension points and fixes, unit by unit (no full step compiled here)."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import demo
from jaxhead import losses
from jaxhead.errors import UsageError
from jaxhead.teacher import TeacherOutput
from jaxhead.training.config import validate_config
from jaxhead.training.sampling import sample_step_index
from jaxhead.training.step import KEY_NAMES
from jaxhead.training.views import GridView, SingleView, StepContext


def _nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def test_sds_rank_weighting_acts_on_the_score_not_the_noise(fixtures_dir):
    """Official order: ``(W(score) - noise) sqrt(1 - abar)``; rank-weighting the whole
    ``(score - noise) sqrt(1 - abar)`` (jaxhead before) also shrinks the noise's ranks."""
    off = dict(np.load(fixtures_dir / "ld_official" / "ld_official.npz"))
    eu, ec, noise = _nhwc(off["eps_uncond"]), _nhwc(off["eps_text"]), _nhwc(off["noise"])
    ab = float(off["alphas_cumprod"][int(off["start_step"])])
    official = (_nhwc(off["rank_weighted_renorm"]) - noise) * np.sqrt(1 - ab)
    ctx = _ctx(objective="sds", guidance_scale=float(off["guidance_scale"]))
    ctx.models.alphas_cumprod = np.asarray(off["alphas_cumprod"], np.float32)
    out = TeacherOutput(eu, ec, eu)
    idx = jnp.full((eu.shape[0],), int(off["start_step"]))
    g = ctx.objective(out, noise, idx, (1.0, 0.75, 0.5, 0.25), True)
    scale = float(np.abs(official).max())
    assert float(np.abs(np.asarray(g) - np.asarray(official)).max()) <= 1e-4 * scale
    old = losses.rank_weighting(losses.sds_grad(eu, ec, noise=noise, alpha_bar=ab,
                                                form="official"))
    assert float(np.abs(np.asarray(old) - np.asarray(official)).max()) > 1e-2 * scale


def _ctx(**over) -> StepContext:
    """A StepContext over a tiny stand-in schedule (for the diffusion-side helpers)."""
    c = demo.get_config()
    for k, v in over.items():
        c[k] = v
    cfg = validate_config(c)
    ac = np.linspace(0.999, 0.01, 1000).astype(np.float32)
    models = SimpleNamespace(alphas_cumprod=ac, timesteps=np.arange(980, -1, -20))
    return StepContext(models, cfg, {}, {}, jnp.zeros((1, 1, 1)), None, None, {})


def test_objective_registry_is_the_single_source():
    """Objectives, their defaults and objective_kw come from the registry: SDS's DreamFusion
    form and BSD's own guidance scale are reachable from the config."""
    assert losses.objective_kwargs("sds", {"form": None}, 7.5) == {"guidance_scale": 7.5,
                                                                   "form": "official"}
    assert losses.objective_kwargs("sds", {"form": "standard"}, 7.5)["form"] == "standard"
    assert losses.objective_kwargs("bsd", {}, 7.5)["guidance_scale"] == 7.5
    c = demo.get_config()
    c.objective = "sds"
    c.objective_kw.form = "standard"
    cfg = validate_config(c)
    assert losses.objective_kwargs(cfg.objective, cfg.objective_kw,
                                   cfg.guidance_scale)["form"] == "standard"
    c.objective = "bsd"
    c.objective_kw.form = "paper"  # bsd has no `form`
    with pytest.raises(UsageError, match="not parameters of objective 'bsd'"):
        validate_config(c)
    c.objective = "nope"
    c.objective_kw.form = None
    with pytest.raises(UsageError, match="objective='nope'"):
        validate_config(c)


def test_register_an_objective_from_outside():
    """One function and one registry line: the config gains its keywords, validation and
    the step's objective call read it."""
    calls = []

    def toy_grad(eps_uncond, eps_cond, *, noise, alpha_bar, strength=1.0):
        calls.append(strength)
        return strength * (eps_cond - eps_uncond) + 0 * noise * alpha_bar[:, None, None, None]

    losses.register_objective("toy_units", toy_grad, strength=3.0)
    try:
        ctx = _ctx(objective="toy_units")
        assert "strength" in demo.get_config().objective_kw
        e = jnp.ones((2, 4, 4, 4))
        g = ctx.objective(TeacherOutput(0 * e, e, e), e, jnp.array([3, 4]),
                          (1.0, 0.75, 0.5, 0.25))
        assert calls == [3.0]
        # no score_transform parameter: the rank weighting acts on the objective's output
        np.testing.assert_allclose(np.asarray(g), np.asarray(losses.rank_weighting(3.0 * e)),
                                   atol=1e-6)
        with pytest.raises(TypeError, match="alpha_bar"):
            losses.register_objective("bad", lambda eps_uncond, eps_cond, *, noise: noise)
    finally:
        losses.OBJECTIVES.pop("toy_units")


def test_step_ranges_draw_exactly_the_stated_indices():
    key = jax.random.key(0)
    draws = lambda **kw: set(np.asarray(sample_step_index(key, (20000,), **kw)).tolist())  # noqa: E731
    assert draws(t_range=(0.70, 0.96), num_steps=50) == set(range(35, 48))
    assert draws(t_range=(0.30, 0.80), num_steps=50) == set(range(15, 40))
    # the official random.randint(35, 49) includes both ends
    assert draws(t_range=(0.70, 0.96), num_steps=50, step_range=(35, 49)) == set(range(35, 50))
    assert draws(t_range=(0.3, 0.8), num_steps=50, step_range=(15, 40)) == set(range(15, 41))
    c = demo.get_config()
    c.grid.step_range = (15, 50)
    with pytest.raises(UsageError, match="grid.step_range"):
        validate_config(c)


class _RecordingCtx(StepContext):
    """Records the PRNG key of every render; returns zeros of the right shapes."""

    def render_trained(self, ws, c, rep, *, key, superresolution=True):
        return self._fake("trained", key, len(c), superresolution)

    def render_frozen(self, ws, c, rep, *, key, superresolution=True):
        return self._fake("frozen", key, len(c), superresolution)

    def _fake(self, who, key, n, sr):
        self.log.append((who, np.asarray(jax.random.key_data(key)).tolist()))
        r = 8
        out = {"image_raw": jnp.zeros((n, r, r, 3)), "image_depth": jnp.ones((n, r, r, 1)),
               "image_acc": jnp.ones((n, r, r, 1))}
        if sr:
            out["image"] = jnp.zeros((n, 64, 64, 3))
        return out


def test_trained_single_and_grid_renders_draw_independent_keys():
    c = demo.get_config()
    cfg = validate_config(c)
    keys = dict(zip(KEY_NAMES, jax.random.split(jax.random.key(1), len(KEY_NAMES)),
                    strict=True))
    G = SimpleNamespace(camera_radius=2.7, image_size=64)
    models = SimpleNamespace(G=G, latent_size=8, depth=None)
    ctx = _RecordingCtx(models, cfg, {}, {}, jnp.zeros((1, 14, 8)), jnp.zeros((1, 4)),
                        jnp.zeros((1, 4)), keys)
    object.__setattr__(ctx, "log", [])
    SingleView(cfg.single).render(ctx)
    GridView(cfg.grid).render(ctx)
    trained = [k for who, k in ctx.log if who == "trained"]
    assert len(trained) == 2 and trained[0] != trained[1]
    assert len({str(k) for _, k in ctx.log}) == len(ctx.log)  # every render its own stream


def test_config_refuses_non_finite_and_out_of_range_values():
    c = demo.get_config()
    c.optimizer.lr = float("nan")
    c.guidance_scale = float("inf")
    c.optimizer.b2 = 1.5
    c.optimizer.eps = -1.0
    c.truncation_cutoff = -5
    c.num_devices = -1
    c.single.pitch_range = (0.0, float("nan"))
    with pytest.raises(UsageError) as e:
        validate_config(c)
    msg = str(e.value)
    for field in ("optimizer.lr=nan", "guidance_scale=inf", "optimizer.b1 and b2",
                  "optimizer.eps", "truncation_cutoff", "num_devices", "single.pitch_range"):
        assert field in msg, field
    assert isinstance(validate_config(demo.get_config()), ml_collections.FrozenConfigDict)


def test_gaussian_demo_teacher_is_the_exact_gaussian_noise_prediction():
    """For z0 = mu exactly (sigma -> 0) the conditional prediction inverts x_t to the injected
    noise; for sigma = 1 and mu = 0 conditional and unconditional agree; CFG as the teacher."""
    from jaxhead.training.demo_teacher import GaussianTeacher, PoolingVAE

    ac = np.linspace(0.999, 0.05, 1000).astype(np.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    mu = jax.random.normal(k1, (1, 8, 8, 4))
    noise = jax.random.normal(k2, (3, 8, 8, 4))
    t = jnp.array([10, 400, 900])
    ab = jnp.asarray(ac)[t][:, None, None, None]
    x_t = jnp.sqrt(ab) * mu + jnp.sqrt(1 - ab) * noise
    out = GaussianTeacher(ac, sigma=0.0).eps({"mu": mu}, x_t, t, None, None,
                                             guidance_scale=2.0)
    np.testing.assert_allclose(np.asarray(out.eps_cond), np.asarray(noise), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.eps),
                               np.asarray(out.eps_uncond + 2.0 * (out.eps_cond - out.eps_uncond)),
                               atol=1e-6)
    same = GaussianTeacher(ac, sigma=1.0).eps({"mu": 0 * mu}, x_t, t, None, None)
    np.testing.assert_allclose(np.asarray(same.eps_cond), np.asarray(same.eps_uncond),
                               atol=1e-6)
    # the demo's latent space keeps colour: 8x8 block means (+ their grey), decoded back
    img = jnp.repeat(jnp.repeat(jax.random.uniform(k1, (1, 4, 4, 3)), 8, 1), 8, 2)
    vae = PoolingVAE()
    z = vae.apply({"params": {}}, img, method=vae.encode).mode()
    assert z.shape == (1, 4, 4, 4)
    np.testing.assert_allclose(np.asarray(z[..., 3]), np.asarray(z[..., :3].mean(-1)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(vae.apply({"params": {}}, z, method=vae.decode)),
                               np.asarray(img), atol=1e-6)


def test_metric_writer_logs_jsonl_and_tensorboard_without_importing_torch(tmp_path):
    """Scalars go to metrics.jsonl (one line per step) and a TensorBoard event file; loading
    tensorboardX (which imports torch when torch is installed) leaves torch unimported."""
    import subprocess
    import sys

    code = ("import sys; from jaxhead.training.logging import MetricWriter; "
            f"w = MetricWriter({str(tmp_path)!r}); w.write(1, {{'loss': 0.5}}); "
            "w.write(2, {'loss': 0.25}); w.close(); "
            "assert w._tb is not None, 'tensorboardX missing'; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
