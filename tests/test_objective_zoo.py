"""The objective zoo: score objectives, prompt variants (blend, view suffixes, an objective's
own prompts) through the one teacher call, and the regularising terms (no step compiled)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, pixar
from jaxhead import losses
from jaxhead.camera import make_camera
from jaxhead.errors import UsageError
from jaxhead.losses import regularizers as reg
from jaxhead.teacher import TeacherOutput
from jaxhead.training import prompts
from jaxhead.training.config import validate_config
from jaxhead.training.step import _teacher
from jaxhead.training.views import StepContext, TeacherRows

AC = np.linspace(0.999, 0.01, 1000).astype(np.float32)
TS = np.arange(980, -1, -20)


def _rand(seed, shape=(2, 4, 4, 4)):
    return jax.random.normal(jax.random.key(seed), shape)


# --- score objectives ------------------------------------------------------------------------


def test_csd_is_the_weighted_guidance_term():
    eu, ec, noise = _rand(0), _rand(1), _rand(2)
    ab = jnp.array([0.3, 0.8])
    g = np.asarray(losses.csd_grad(eu, ec, alpha_bar=ab, guidance_scale=2.0, noise=noise))
    want = (1 - np.asarray(ab))[:, None, None, None] * 2.0 * np.asarray(ec - eu)
    np.testing.assert_allclose(g, want, rtol=1e-6)
    # the injected noise plays no part; "uniform" drops the weight
    g2 = losses.csd_grad(eu, ec, alpha_bar=ab, guidance_scale=2.0, noise=-noise)
    np.testing.assert_array_equal(np.asarray(g2), g)
    gu = losses.csd_grad(eu, ec, alpha_bar=ab, guidance_scale=2.0, weighting="uniform")
    np.testing.assert_allclose(np.asarray(gu), 2.0 * np.asarray(ec - eu), rtol=1e-6)


def test_nfsd_switches_the_domain_term_by_timestep():
    eu, ec, en = _rand(0), _rand(1), _rand(3)
    ab = jnp.array([0.9, 0.2])
    t = jnp.array([150, 700])  # below / above t_switch = 200
    g = np.asarray(losses.nfsd_grad(eu, ec, alpha_bar=ab, timestep=t, guidance_scale=7.5,
                                    eps_prompts={"negative_quality_prompt": en}))
    eu_, ec_, en_ = map(np.asarray, (eu, ec, en))
    w = 1 - np.asarray(ab)
    np.testing.assert_allclose(g[0], w[0] * (eu_[0] + 7.5 * (ec_[0] - eu_[0])), rtol=1e-5)
    np.testing.assert_allclose(g[1], w[1] * (eu_[1] - en_[1] + 7.5 * (ec_[1] - eu_[1])),
                               rtol=1e-5)
    g_sw = losses.nfsd_grad(eu, ec, alpha_bar=ab, timestep=t, t_switch=800,
                            eps_prompts={"negative_quality_prompt": en})
    assert not np.allclose(np.asarray(g_sw)[1], g[1])  # the band is what selects the term


def test_csd_and_nfsd_registry_defaults_follow_their_sources():
    """CSD as its official Stable Diffusion config runs it: coefficient 1 on eps_c - eps_u
    (whatever the teacher's CFG scale), w = 1 - abar, timesteps within U(0.02, 0.5) of 1000
    (DDIM steps 25..48 of 50: t 481..21). NFSD as its paper: s = 7.5, eps_u below t = 200,
    eps_u - eps_neg from t = 200 on, the paper's negative prompt."""
    from jaxhead.diffusion import NoiseSchedule
    from jaxhead.training.sampling import sample_step_index

    assert losses.objective_kwargs("csd", {}, 7.5) == {"guidance_scale": 1.0}
    lo, hi = losses.objective_t_range("csd", {})
    sched = NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "steps_offset": 1,
                                       "beta_start": 0.00085, "beta_end": 0.012})
    ts = np.asarray(sched.timesteps(50))
    idx = np.asarray(sample_step_index(jax.random.key(0), (4000,), (lo, hi), 50))
    drawn = set(ts[idx].tolist())
    assert min(drawn) == 21 and max(drawn) == 481 and len(drawn) == 24
    eu, ec = _rand(0), _rand(1)
    ab = jnp.array([0.3, 0.8])
    g = losses.csd_grad(eu, ec, alpha_bar=ab, **losses.objective_kwargs("csd", {}, 7.5))
    np.testing.assert_allclose(np.asarray(g), (1 - np.asarray(ab))[:, None, None, None]
                               * np.asarray(ec - eu), rtol=1e-6)

    kw = losses.objective_kwargs("nfsd", {}, 100.0)  # the teacher's CFG does not leak in
    assert kw["guidance_scale"] == 7.5 and kw.get("t_switch", 200) == 200
    assert losses.NFSD_NEGATIVE == ("unrealistic, blurry, low quality, out of focus, ugly, "
                                     "low contrast, dull, dark, low-resolution, gloomy")
    en = _rand(3)
    t = jnp.array([199, 200])  # the band's edge: t < 200 is the low band
    g = np.asarray(losses.nfsd_grad(eu, ec, alpha_bar=jnp.zeros(2), timestep=t,
                                    eps_prompts={"negative_quality_prompt": en}, **kw))
    eu_, ec_, en_ = map(np.asarray, (eu, ec, en))
    np.testing.assert_allclose(g[0], eu_[0] + 7.5 * (ec_[0] - eu_[0]), rtol=1e-5)
    np.testing.assert_allclose(g[1], eu_[1] - en_[1] + 7.5 * (ec_[1] - eu_[1]), rtol=1e-5)


def test_registry_defaults_and_t_range_hook():
    kw = losses.objective_kwargs("sds_dreamfusion", {}, 7.5)
    assert kw == {"guidance_scale": 100.0, "form": "standard"}
    assert losses.objective_t_range("sds_dreamfusion", {}) == (0.02, 0.98)
    assert losses.objective_t_range("ld", {}) is None  # the views' own ranges
    assert losses.objective_t_range("csd", {"t_range": (0.5, 0.6)}) == (0.5, 0.6)
    assert losses.objective_prompts("nfsd", {}) == {
        "negative_quality_prompt": losses.NFSD_NEGATIVE}
    c = demo.get_config()
    c.objective = "sds_dreamfusion"
    ctx = _ctx(c)
    assert ctx.t_range(ctx.config.single) == (0.02, 0.98)
    assert ctx.t_range(ctx.config.grid) == (0.02, 0.98)
    c = demo.get_config()
    assert _ctx(c).t_range(c.grid) == (0.30, 0.80)
    c.objective_kw.t_range = (0.9, 0.1)
    with pytest.raises(UsageError, match="objective_kw.t_range"):
        validate_config(c)
    c = demo.get_config()
    c.objective_kw.negative_quality_prompt = "ugly"  # a prompt of nfsd, not of ld
    with pytest.raises(UsageError, match="not parameters of objective 'ld'"):
        validate_config(c)
    c.objective = "nfsd"
    assert prompts.prompt_texts(validate_config(c))["obj:negative_quality_prompt"] == ["ugly"]


# --- prompt variants through the one teacher call ------------------------------------------


class _TextTeacher:
    """A teacher whose prediction depends on each row's text embedding (its mean) and on
    x_t: ``eps = x_t * (1 + mean(text))``; records the embeddings it saw."""

    def __init__(self):
        self.calls = []

    def eps(self, params, x, t, text_emb, neg_emb, control=None, *, controlnet=None,
            control_scale=1.0, guidance_scale=7.5):
        b = x.shape[0]
        cond = jnp.broadcast_to(text_emb, (b,) + text_emb.shape[1:])
        self.calls.append(np.asarray(cond))
        f = lambda e: x * (1 + jnp.mean(e, axis=(1, 2)))[:, None, None, None]  # noqa: E731
        eu, ec = f(jnp.broadcast_to(neg_emb, cond.shape)), f(cond)
        return TeacherOutput(eu, ec, eu + guidance_scale * (ec - eu))


def _ctx(c, text=None, teacher=None):
    cfg = validate_config(c)
    models = SimpleNamespace(alphas_cumprod=AC, timesteps=TS, teacher=teacher)
    frozen = {"text": text or {}, "teacher": {}}
    return StepContext(models, cfg, frozen, {}, jnp.zeros((2, 1, 1)), None, None, {})


def _emb(v, n=1):
    return jnp.full((n, 77, 8), v, jnp.float32)


TEXT = {"cond": _emb(0.5), "neg": _emb(0.0), "blend": _emb(-0.3),
        "cond_views": jnp.concatenate([_emb(1.0), _emb(2.0), _emb(3.0)]),
        "obj:negative_quality_prompt": _emb(0.7)}


def _rows(view_dir=None):
    x = _rand(5)
    return TeacherRows(x, jnp.array([40, 10]), _rand(6), None, None, view_dir)


@pytest.mark.parametrize("objective", ["sds", "ld"])
def test_blend_weight_one_and_zero_reproduce_single_prompt_objectives(objective):
    def grad(blend, weight, text):
        c = demo.get_config()
        c.objective = objective
        c.blend.enabled = blend
        c.blend.weight = weight
        ctx = _ctx(c, text, _TextTeacher())
        rows = _rows()
        (out,) = _teacher(ctx, [rows])
        return np.asarray(ctx.objective(out, rows.noise, rows.step_idx))

    style = grad(False, 0.6, TEXT)
    neutral = grad(False, 0.6, {**TEXT, "cond": TEXT["blend"]})
    assert not np.allclose(style, neutral)
    np.testing.assert_allclose(grad(True, 1.0, TEXT), style, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad(True, 0.0, TEXT), neutral, rtol=1e-6, atol=1e-7)
    mid = grad(True, 0.6, TEXT)
    assert not np.allclose(mid, style) and not np.allclose(mid, neutral)
    # neutral prompt = style prompt: omega_e no longer matters
    same = {**TEXT, "blend": TEXT["cond"]}
    np.testing.assert_allclose(grad(True, 0.2, same), grad(True, 0.9, same), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(grad(True, 0.2, same), style, rtol=1e-6, atol=1e-7)


def test_view_prompts_pick_each_rows_suffix():
    yaw = jnp.radians(jnp.array([0.0, 30.0, -60.0, 100.0, 150.0, -170.0]))
    cams = make_camera(yaw, jnp.zeros(6))
    np.testing.assert_allclose(np.asarray(prompts.camera_yaw(cams)), np.asarray(yaw),
                               atol=1e-5)
    assert prompts.view_direction(cams).tolist() == [0, 0, 1, 1, 2, 2]
    c = demo.get_config()
    c.view_prompts = True
    assert prompts.prompt_texts(c)["cond_views"] == [c.prompt + ", front view",
                                                     c.prompt + ", side view",
                                                     c.prompt + ", back view"]
    teacher = _TextTeacher()
    ctx = _ctx(c, TEXT, teacher)
    _teacher(ctx, [_rows(jnp.array([2, 0])), _rows(None)])
    seen = teacher.calls[0][:, 0, 0]
    np.testing.assert_allclose(seen, [3.0, 1.0, 0.5, 0.5])  # back, front, then plain rows


def test_objective_prompts_reach_the_objective():
    c = demo.get_config()
    c.objective = "nfsd"
    teacher = _TextTeacher()
    ctx = _ctx(c, TEXT, teacher)
    rows = _rows()
    (out,) = _teacher(ctx, [rows])
    g = ctx.objective(out, rows.noise, rows.step_idx)
    x = np.asarray(rows.x_t)
    eu, ec, en = x * 1.0, x * 1.5, x * 1.7
    ab = AC[TS[np.asarray(rows.step_idx)]]
    t = TS[np.asarray(rows.step_idx)]
    dd = np.where((t < 200)[:, None, None, None], eu, eu - en)
    want = (1 - ab)[:, None, None, None] * (dd + 7.5 * (ec - eu))
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5)


# --- regularising terms -----------------------------------------------------------------


def test_relative_distance():
    rd = jax.jit(reg.relative_distance)
    t = _rand(7, (3, 4, 4, 3, 5))
    assert float(rd(t, t)) == pytest.approx(0.0, abs=1e-6)
    # all distances doubled: |4 - 1| = 3 (a uniform scale is penalised, not only ratios)
    assert float(rd(2 * t, t)) == pytest.approx(3.0, rel=1e-5)
    tp = _rand(8, (3, 4, 4, 3, 5))
    ref = np.mean([np.abs(np.sum((np.asarray(tp[i]) - np.asarray(tp[j])) ** 2, -2)
                          / (np.sum((np.asarray(t[i]) - np.asarray(t[j])) ** 2, -2) + 1e-8)
                          - 1) for i, j in [(0, 1), (0, 2), (1, 2)]])
    assert float(rd(tp, t)) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match=">= 2"):
        reg.relative_distance(t[:1], t[:1])


def test_displacement_variance():
    dv = jax.jit(reg.displacement_variance)
    k = jax.random.split(jax.random.key(9), 4)
    df = jax.random.uniform(k[0], (3, 6, 6, 1), minval=2.3, maxval=3.2)
    mask = (jax.random.uniform(k[1], (6, 6, 1)) > 0.3).astype(jnp.float32)
    shared = jax.random.normal(k[2], (1, 6, 6, 1))
    assert float(dv(df + shared, df, mask)) == pytest.approx(0.0, abs=1e-10)
    d = df + 0.1 * jax.random.normal(k[3], df.shape)
    v = float(dv(d, df, mask))
    assert v > 0
    assert float(dv(d + shared, df, mask)) == pytest.approx(v, rel=1e-5)
    disp = np.asarray(d - df)[..., 0]
    m = np.asarray(mask)[..., 0]
    assert v == pytest.approx(float((m * disp.var(0)).sum() / m.sum()), rel=1e-5)
    g = np.asarray(jax.jit(jax.grad(reg.displacement_variance))(d, df, mask))
    closed = 2 * np.asarray(mask) * (np.asarray(d - df) - np.asarray(d - df).mean(0)) / (
        3 * float(m.sum()))
    np.testing.assert_allclose(g, closed, rtol=1e-4, atol=1e-9)


def test_clip_direction_and_identity_losses():
    e0 = _rand(10, (2, 16))
    tdir = _rand(11, (16,))
    u = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    # the image change exactly along the text direction: 0; against it: 2
    e_along = u(e0) + 0.1 * u(tdir)
    tdir = (u(e_along) - u(e0))[0]
    assert np.allclose(np.asarray(reg.clip_direction_loss(e_along[:1], e0[:1], tdir)), 0,
                       atol=1e-5)
    assert np.allclose(np.asarray(reg.clip_direction_loss(e_along[:1], e0[:1], -tdir)), 2,
                       atol=1e-5)
    # embedding scale does not matter (normalised before the difference, as NADA)
    np.testing.assert_allclose(np.asarray(reg.clip_direction_loss(3 * e_along, e0, tdir)),
                               np.asarray(reg.clip_direction_loss(e_along, e0, tdir)),
                               atol=1e-5)
    # at initialisation (no change) the loss is 1 with a finite, non-zero gradient
    v, g = jax.value_and_grad(lambda e: jnp.sum(reg.clip_direction_loss(e, e0, tdir)))(e0)
    assert float(v) == pytest.approx(2.0) and np.isfinite(np.asarray(g)).all()
    assert np.abs(np.asarray(g)).max() > 0
    np.testing.assert_allclose(np.asarray(reg.identity_loss(2 * e0, e0)), 0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(reg.identity_loss(-e0, e0)), 2, atol=1e-6)


def test_stylegan_fusion_regularizers():
    eps, eps_f, x_t, z0 = _rand(12), _rand(13), _rand(14), _rand(15)
    ab = jnp.array([0.4, 0.9])
    g = np.asarray(reg.sgf_directional_grad(eps, eps_f, ab))
    np.testing.assert_allclose(g, (1 - np.asarray(ab))[:, None, None, None]
                               * np.asarray(eps - eps_f), rtol=1e-6)
    assert np.abs(np.asarray(reg.sgf_directional_grad(eps, eps, ab))).max() == 0

    # the reconstruction term's g is the autodiff gradient of the x0 MSE w.r.t. eps
    def mse(e):
        a = ab[:, None, None, None]
        x0 = (x_t - jnp.sqrt(1 - a) * e) / jnp.sqrt(a)
        return jnp.mean(jnp.square(x0 - z0), axis=(1, 2, 3))

    g_auto = jax.jacrev(lambda e: jnp.sum(mse(e)))(eps)
    rms = lambda x: x / jnp.sqrt(jnp.mean(x * x, axis=(1, 2, 3), keepdims=True))  # noqa: E731
    want = (1 - ab)[:, None, None, None] * (rms(eps) - rms(g_auto))
    np.testing.assert_allclose(np.asarray(reg.sgf_reconstruction_grad(x_t, eps, z0, ab)),
                               np.asarray(want), rtol=1e-4, atol=1e-6)


def test_term_config_errors_and_missing_weights(tmp_path):
    c = demo.get_config()
    c.terms.relative_distance.weight = 1.0
    c.terms.displacement_variance.weight = 1.0
    c.terms.nada.weight = -1.0
    c.single.enabled = False
    c.terms.identity.weight = 1.0
    with pytest.raises(UsageError) as e:
        validate_config(c)
    msg = str(e.value)
    assert "terms.relative_distance needs batch_size >= 2" in msg
    assert "terms.displacement_variance needs batch_size >= 2" in msg
    assert "terms.nada.weight must be >= 0" in msg
    assert "terms.identity reads the single view" in msg
    from jaxhead.errors import MissingWeightsError
    from jaxhead.training.models import load_models, missing_weights

    c = pixar.get_config()
    c.models.clip = str(tmp_path / "clip")
    c.models.arcface = str(tmp_path / "arc")
    c.terms.nada.weight = 0.5
    c.terms.identity.weight = 0.5
    msg = "\n".join(missing_weights(c))
    assert "python -m convert_weights.clip" in msg and "terms.nada.weight=0" in msg
    assert "python -m convert_weights.arcface" in msg and "terms.identity.weight=0" in msg
    with pytest.raises(MissingWeightsError, match="convert_weights.clip"):
        load_models(validate_config(c))


# --- SAS whitening-colouring (style statistics passed in) -----------------------------------


def test_whiten_colour_identity_and_style_statistics():
    from jaxhead.losses import sas

    k = jax.random.split(jax.random.key(20), 3)
    mix = jnp.array([[1.0, 0.3, 0.0, 0.1], [0.0, 0.8, 0.2, 0.0], [0.2, 0.0, 1.5, 0.4],
                     [0.0, 0.1, 0.0, 0.6]])
    z = jax.random.normal(k[0], (2, 16, 16, 4)) @ mix + jnp.array([0.5, -1.0, 0.2, 0.0])
    wc = jax.jit(sas.whiten_colour)
    # matching statistics: the identity (the printed form is not)
    mu, cov = sas.channel_stats(z[:1])
    np.testing.assert_allclose(np.asarray(wc(z[:1], mu[0], cov[0])), np.asarray(z[:1]),
                               atol=2e-5)
    # arbitrary style statistics: the output has exactly them
    a = jax.random.normal(k[1], (4, 4))
    style_cov = a @ a.T + 0.1 * jnp.eye(4)
    style_mean = jax.random.normal(k[2], (4,))
    out = wc(z, style_mean, style_cov)
    mo, co = sas.channel_stats(out)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(mo[i]), np.asarray(style_mean), atol=1e-5)
        np.testing.assert_allclose(np.asarray(co[i]), np.asarray(style_cov), atol=1e-4)
    # whitening alone (no colouring) would leave identity covariance instead
    assert not np.allclose(np.asarray(co[0]), np.eye(4), atol=1e-2)
    g = jax.grad(lambda x: jnp.sum(sas.sas_loss(x, out, 2.0)))(z)
    np.testing.assert_allclose(np.asarray(g), 2.0 * np.asarray(z - out), rtol=1e-5, atol=1e-6)


def test_zoo_is_selectable_and_tunable_from_the_command_line():
    from jaxhead.config_cli import parse_config

    c = parse_config(["--config", "configs/demo.py", "--config.objective=csd",
                      "--config.objective_kw.t_range=(0.1, 0.5)",
                      "--config.objective_kw.weighting=uniform", "--config.batch_size=2",
                      "--config.terms.relative_distance.weight=0.5",
                      "--config.blend.enabled=True", "--config.blend.weight=0.3",
                      "--config.view_prompts=True"])
    c = validate_config(c[0] if isinstance(c, tuple) else c)
    assert losses.objective_kwargs(c.objective, c.objective_kw, c.guidance_scale) == {
        "guidance_scale": 1.0, "weighting": "uniform"}  # csd registers its own s = 1
    assert _ctx(c).t_range(c.single) == (0.1, 0.5)
    assert c.terms.relative_distance.weight == 0.5 and c.blend.weight == 0.3
    assert set(prompts.prompt_texts(c)) == {"cond", "neg", "cond_views", "blend",
                                            "blend_views"}
