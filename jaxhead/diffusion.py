"""DDPM/DDIM noise schedule of Stable Diffusion, read from ``scheduler/scheduler_config.json``.

The schedule is host-side constants (:class:`NoiseSchedule`); the math is pure functions over
arrays that take ``alphas_cumprod`` explicitly, so they work inside ``jit``/``grad``:

    sched = NoiseSchedule.from_file("converted/scheduler")
    ts = sched.timesteps(50)                        # DDIM steps, e.g. [981, 961, ..., 1]
    ac = jnp.asarray(sched.alphas_cumprod)
    x_t = add_noise(ac, x0, noise, t)                # sqrt(a_t) x0 + sqrt(1 - a_t) eps
    x0_hat = predict_x0(ac, x_t, eps_hat, t)         # (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)

SD 1.5: 1000 train steps, ``scaled_linear`` betas 0.00085 -> 0.012, ``leading`` spacing with
``steps_offset`` 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULER_CONFIG = "scheduler_config.json"
SPACINGS = ("leading", "trailing", "linspace")


def make_betas(num_train_timesteps: int, beta_start: float, beta_end: float,
               beta_schedule: str) -> np.ndarray:
    """Betas [T] float32 for diffusers' schedules "linear", "scaled_linear" (SD) and
    "squaredcos_cap_v2"."""
    t = num_train_timesteps
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, t, dtype=np.float32)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, t, dtype=np.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - f((i + 1) / t) / f(i / t), 0.999) for i in range(t)], np.float32)
    raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift/scale sqrt(alphas_cumprod) so the last step has zero SNR (Lin et al. 2023)."""
    sqrt_ac = np.sqrt(np.cumprod(1.0 - betas.astype(np.float64)))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    ac = sqrt_ac ** 2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return (1.0 - alphas).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Discrete-time schedule: ``alphas_cumprod[t]`` = prod_{s<=t} (1 - beta_s), float32 [T]."""

    alphas_cumprod: np.ndarray
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = False

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def final_alpha_cumprod(self) -> float:
        """alpha_cumprod used by DDIM after the last step (1, or alphas_cumprod[0])."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """From a diffusers scheduler config dict (DDIM/DDPM/PNDM/Euler... share these keys;
        sampler-specific keys are ignored)."""
        t = int(config.get("num_train_timesteps", 1000))
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], np.float32)
        else:
            betas = make_betas(t, float(config.get("beta_start", 0.0001)),
                               float(config.get("beta_end", 0.02)),
                               config.get("beta_schedule", "linear"))
        if config.get("rescale_betas_zero_snr", False):
            betas = rescale_zero_terminal_snr(betas)
        ac = np.cumprod(1.0 - betas, dtype=np.float32)
        spacing = config.get("timestep_spacing", "leading")
        if spacing not in SPACINGS:
            raise ValueError(f"unsupported timestep_spacing {spacing!r} (supported: {SPACINGS})")
        return cls(alphas_cumprod=ac, steps_offset=int(config.get("steps_offset", 0)),
                   timestep_spacing=spacing,
                   prediction_type=config.get("prediction_type", "epsilon"),
                   set_alpha_to_one=bool(config.get("set_alpha_to_one", True)))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> NoiseSchedule:
        """From ``scheduler_config.json`` or a folder holding it."""
        p = Path(path)
        if p.is_dir():
            p = p / SCHEDULER_CONFIG
        if not p.is_file():
            raise FileNotFoundError(f"scheduler config not found: {str(p)!r}")
        return cls.from_config(json.loads(p.read_text()))

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """DDIM inference timesteps, descending (int64), as diffusers' ``set_timesteps``."""
        t = self.num_train_timesteps
        n = num_inference_steps
        if not 0 < n <= t:
            raise ValueError(f"num_inference_steps must be in [1, {t}], got {n}")
        if self.timestep_spacing == "leading":
            ts = (np.arange(n) * (t // n)).round()[::-1].astype(np.int64) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(t, 0, -t / n)).astype(np.int64) - 1
        else:
            ts = np.linspace(0, t - 1, n).round()[::-1].astype(np.int64)
        return ts.copy()


def _per_sample(values: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
    """``values[t]`` reshaped to broadcast over a [B, ...] array (t scalar or [B])."""
    v = jnp.take(values, jnp.asarray(t))
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)).astype(like.dtype)


def add_noise(alphas_cumprod: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array
              ) -> jax.Array:
    """Forward diffusion q(x_t | x0): ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``.

    x0, noise: [B, ...]; t: int timesteps, scalar or [B].
    """
    a = _per_sample(alphas_cumprod, t, x0)
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def predict_x0(alphas_cumprod: jax.Array, x_t: jax.Array, eps: jax.Array, t: jax.Array
               ) -> jax.Array:
    """Tweedie / DDIM x0 estimate from an epsilon prediction:
    ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    a = _per_sample(alphas_cumprod, t, x_t)
    return (x_t - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
