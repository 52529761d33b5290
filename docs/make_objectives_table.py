"""Where each score objective drives a sample: the 1-D analytic teacher of
``tests/test_losses.py``, every registered objective through the trainer's own objective call.

    python docs/make_objectives_table.py            # rewrites the table in docs/objectives.md

The "generator" is one number ``theta`` (the clean latent ``x_0``). Densities (exact, so the
teacher's noise predictions are exact for every diffused ``x_t``):

* prompt ``y``: a two-component Gaussian mixture ``0.7 N(1, 0.2^2) + 0.3 N(-2, 0.2^2)``,
  mode 1.0 (to 1e-3), mean 0.1;
* unconditional (the empty negative prompt): ``N(0, 1)``;
* NFSD's negative prompt (blurry, low quality): ``N(0, 2^2)``.

For each objective the expected gradient ``E_{t, eps}[g(theta)]`` is computed with
Gauss-Hermite quadrature over ``eps`` (40 nodes) and every timestep the objective draws (its
registered ``t_range``, else the single view's paper range (0.70, 0.96) of the 50 DDIM steps),
with ``alpha_bar`` indexed as the trainer does (``alpha_index``). The stationary points are the
zeros of ``E[g]`` where it crosses from negative to positive (stable under ``theta -= lr g``);
"reached from 0.3" is the one gradient descent from ``theta = 0.3`` ends in.

An objective that takes style statistics (``sas``) gets a 1-D style bank: DDIM samples of the
same teacher by :func:`jaxhead.sampling.sample` (the demo config's ``style_bank`` steps and CFG,
4096 samples instead of its 4 for a precise mean; with guidance 1 and no unconditional branch
in the likelihood table).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from configs import demo
from jaxhead import losses, sampling
from jaxhead.diffusion import NoiseSchedule
from jaxhead.teacher import TeacherOutput
from jaxhead.training.config import validate_config
from jaxhead.training.style_bank import bank_statistics
from jaxhead.training.views import Scores, StepContext

COND = (np.array([0.7, 0.3]), np.array([1.0, -2.0]), np.array([0.2, 0.2]))
UNCOND = (np.array([1.0]), np.array([0.0]), np.array([1.0]))
NEGATIVE = (np.array([1.0]), np.array([0.0]), np.array([2.0]))
MODE, MEAN = 1.0, float((COND[0] * COND[1]).sum())
GH_X, GH_W = np.polynomial.hermite_e.hermegauss(40)
GH_W = GH_W / GH_W.sum()
DOC = Path(__file__).with_name("objectives.md")


def mixture_eps(density, xt: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Exact noise prediction ``-sqrt(1 - abar) d/dx log p_t(x_t)`` of a diffused mixture."""
    w, m, s = density
    v = ab[:, None] * s**2 + 1 - ab[:, None]
    mu = np.sqrt(ab)[:, None] * m
    logp = np.log(w) - 0.5 * np.log(2 * np.pi * v) - 0.5 * (xt[:, None] - mu) ** 2 / v
    r = np.exp(logp - logp.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return -np.sqrt(1 - ab) * (r * -(xt[:, None] - mu) / v).sum(1)


SCHED = NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                   "beta_end": 0.012, "steps_offset": 1,
                                   "set_alpha_to_one": False})
BANK_SAMPLES = 4096


def mixture_eps_jnp(density, x: jax.Array, ab: jax.Array) -> jax.Array:
    """:func:`mixture_eps` in jax (``x`` any shape, ``ab`` broadcastable): for the sampler."""
    w, m, s = (jnp.asarray(a, jnp.float32) for a in density)
    v = ab[..., None] * s**2 + 1 - ab[..., None]
    mu = jnp.sqrt(ab)[..., None] * m
    r = jax.nn.softmax(jnp.log(w) - 0.5 * jnp.log(v) - 0.5 * (x[..., None] - mu) ** 2 / v, -1)
    return jnp.sqrt(1 - ab) * (r * (x[..., None] - mu) / v).sum(-1)


class MixtureTeacher:
    """The 1-D teacher behind :meth:`jaxhead.teacher.Teacher.eps`'s signature (prompt: the
    mixture, negative prompt: ``N(0, 1)`` or, with ``uncond=False``, a zero prediction)."""

    def __init__(self, uncond: bool) -> None:
        self.uncond = uncond

    def eps(self, params, x, t, text_emb, neg_emb, control=None, *, controlnet=None,
            control_scale=1.0, guidance_scale=7.5) -> TeacherOutput:
        del params, text_emb, neg_emb, control, controlnet, control_scale
        ab = jnp.asarray(SCHED.alphas_cumprod)[t]
        ec = mixture_eps_jnp(COND, x, ab)
        eu = mixture_eps_jnp(UNCOND, x, ab) if self.uncond else 0 * ec
        return TeacherOutput(eu, ec, eu + guidance_scale * (ec - eu))


def bank_1d(config, uncond: bool, guidance: float | None) -> dict[str, jax.Array]:
    """The 1-D style bank's statistics (latents ``[N, 1, 1, 1]``): the demo config's
    ``style_bank`` sampler settings, ``BANK_SAMPLES`` samples."""
    b = config.style_bank
    sd = sampling.StableDiffusion(MixtureTeacher(uncond), None, None, None, SCHED)
    keys = jax.random.split(jax.random.key(int(b.seed)), BANK_SAMPLES)
    init = jax.vmap(lambda k: jax.random.normal(k, (1, 1, 1)))(keys)
    emb = jnp.zeros((1, 1, 1))
    out = sampling.sample(sd, {"teacher": {}}, sampling.Noise(init), emb, emb,
                          num_steps=int(b.steps), decode=False,
                          guidance_scale=b.guidance_scale if guidance is None else guidance)
    mean, cov = bank_statistics(np.asarray(out.latents))
    return {"mean": jnp.asarray(mean, jnp.float32), "cov": jnp.asarray(cov, jnp.float32)}


def context(name: str, guidance: float | None = None, uncond: bool = True) -> StepContext:
    c = demo.get_config()
    c.objective = name
    if guidance is not None:
        c.objective_kw.guidance_scale = guidance
    cfg = validate_config(c)
    models = SimpleNamespace(alphas_cumprod=np.asarray(SCHED.alphas_cumprod, np.float32),
                             timesteps=SCHED.timesteps(cfg.num_inference_steps))
    frozen = {}
    if losses.OBJECTIVES[name].takes("style_stats"):
        frozen["style"] = bank_1d(cfg, uncond, guidance)
    return StepContext(models, cfg, frozen, {}, jnp.zeros((1, 1, 1)), None, None, {})


def step_indices(ctx: StepContext) -> np.ndarray:
    """Every DDIM step index the objective draws (each equally likely)."""
    lo, hi = ctx.t_range(ctx.config.single)
    n = ctx.config.num_inference_steps
    u = np.linspace(lo, hi, 20001)[:-1]
    return np.unique(np.clip(np.floor(u * n).astype(int), 0, n - 1))


def expected_grad(ctx: StepContext, thetas: np.ndarray, uncond: bool = True) -> np.ndarray:
    """``E_{t, eps}[g(theta)]`` for each theta, through ``StepContext.objective``
    (``uncond=False``: the unconditional prediction is 0, as in ``tests/test_losses.py``)."""
    idx = step_indices(ctx)
    ts = np.asarray(ctx.models.timesteps)[idx]
    ab_t = np.asarray(ctx.models.alphas_cumprod)[ts].astype(np.float64)
    k, q = len(idx), len(GH_X)
    th = np.repeat(thetas, k * q)
    ab = np.tile(np.repeat(ab_t, q), len(thetas))
    e = np.tile(GH_X, k * len(thetas))
    w = np.tile(GH_W, k * len(thetas)) / k
    xt = np.sqrt(ab) * th + np.sqrt(1 - ab) * e
    shape = (-1, 1, 1, 1)
    f32 = lambda a: jnp.asarray(a.astype(np.float32).reshape(shape))  # noqa: E731
    ec = f32(mixture_eps(COND, xt, ab))
    eu = f32(mixture_eps(UNCOND, xt, ab)) if uncond else 0 * ec
    extra = {"obj:negative_quality_prompt": f32(mixture_eps(NEGATIVE, xt, ab))}
    out = Scores(eu, ec, eu, extra)
    step_idx = jnp.asarray(np.tile(np.repeat(idx, q), len(thetas)))
    g = np.asarray(ctx.objective(out, f32(e), step_idx, latents=f32(th)))[:, 0, 0, 0]
    g = g.astype(np.float64)
    return (g * w).reshape(len(thetas), k * q).sum(1)


def stationary(thetas: np.ndarray, g: np.ndarray) -> list[float]:
    """Stable zeros (sign change - to +), linearly interpolated."""
    out = []
    for i in range(len(g) - 1):
        if g[i] < 0 <= g[i + 1]:
            out.append(float(thetas[i] - g[i] * (thetas[i + 1] - thetas[i]) / (g[i + 1] - g[i])))
    return out


def reached_from(theta0: float, thetas: np.ndarray, g: np.ndarray) -> float:
    """Where gradient descent from theta0 settles: with E[g] > 0 it moves left to the nearest
    stable point below, with E[g] < 0 right to the nearest above (NaN: it leaves the grid)."""
    roots = stationary(thetas, g)
    if np.interp(theta0, thetas, g) > 0:
        below = [r for r in roots if r <= theta0]
        return max(below) if below else float("nan")
    above = [r for r in roots if r >= theta0]
    return min(above) if above else float("nan")


def verdict(theta: float, g: np.ndarray, bank_mean: float | None = None) -> str:
    if bank_mean is not None and abs(theta - bank_mean) < 1e-2:
        return f"the style bank's mean ({bank_mean:+.3f})"
    if np.abs(g).max() < 1e-12:
        return "nowhere (E[g] = 0)"
    if not np.isfinite(theta):
        return "off the grid"
    if abs(theta - MODE) < 0.1:
        return "mode"
    if abs(theta - MEAN) < 0.1:
        return "mean"
    if MEAN < theta < MODE:
        return "between mean and mode"
    return "past the mode" if theta > MODE else "elsewhere"


def rows(guidance: float | None = None, uncond: bool = True) -> list[str]:
    thetas = np.linspace(-3.0, 3.0, 601)
    out = []
    for name in losses.OBJECTIVES:
        ctx = context(name, guidance, uncond)
        kw = losses.objective_kwargs(name, ctx.config.objective_kw, ctx.config.guidance_scale)
        g = expected_grad(ctx, thetas, uncond)
        th = reached_from(0.3, thetas, g)
        lo, hi = ctx.t_range(ctx.config.single)
        idx = step_indices(ctx)
        ts = np.asarray(ctx.models.timesteps)[idx]
        obj = losses.OBJECTIVES[name]
        ai = obj.alpha_index or ctx.config.alpha_index
        style = ctx.frozen.get("style")
        bank_mean = None if style is None else float(style["mean"][0])
        opts = ", ".join(f"{k}={v}" for k, v in kw.items() if k != "guidance_scale")
        out.append(f"| `{name}` | {opts or '-'} | {kw.get('guidance_scale', '-')} | "
                   f"({lo:g}, {hi:g}): t {ts.min()}..{ts.max()} | {ai} | {th:+.3f} | "
                   f"{', '.join(f'{r:+.2f}' for r in stationary(thetas, g))} | "
                   f"**{verdict(th, g, bank_mean)}** |")
    return out


TABLE_HEAD = ("| objective | options | guidance s | t range (fraction of DDIM steps): "
              "timesteps | abar index | reached from 0.3 | all stable points | drives to |\n"
              "|---|---|---|---|---|---|---|---|")


def main() -> None:
    jax.config.update("jax_platforms", "cpu")
    text = DOC.read_text()
    for key, (guidance, uncond) in {"table": (None, True), "likelihood": (1.0, False)}.items():
        table = TABLE_HEAD + "\n" + "\n".join(rows(guidance, uncond))
        print(table + "\n")
        pat = rf"(<!-- {key}:start -->\n).*?(<!-- {key}:end -->)"
        if not re.search(pat, text, flags=re.S):
            sys.exit(f"markers <!-- {key}:start/end --> not found in {DOC}")
        text = re.sub(pat, lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text,
                      flags=re.S)
    DOC.write_text(text)


if __name__ == "__main__":
    main()
