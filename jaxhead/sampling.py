"""DDIM sampling of Stable Diffusion with classifier-free guidance: text-to-image,
image-to-image (SDEdit: noise an image to a DDIM step, then denoise) and ControlNet
conditioning, as one jitted function (``lax.scan`` over the steps).

    sd, params = load_sd("checkpoints/sd", controlnets=("depth",))
    text, neg = encode_prompts(sd, params, ["a portrait"]), encode_prompts(sd, params, [""])
    noise = draw_noise(sd, seed_keys([0]), (64, 64), num_steps=50, start_index=25,
                       posterior_sample=True)
    out = sample(sd, params, noise, text, neg, num_steps=50, start_index=25,
                 image=render_in_minus1_1)          # SDEdit from step 25 of 50
    out.images                                        # [B, 512, 512, 3] in [0, 1]

Every random number is an explicit input (:class:`Noise`): the same noise gives the same
result as diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline`` /
``StableDiffusionControlNetPipeline`` with ``DDIMScheduler`` (tests/test_sampling.py).
The networks are the teacher's (:class:`jaxhead.teacher.Teacher`): the UNet runs once per
step on the CFG batch ``[negative (B); prompt (B)]``, ControlNets on their samples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.diffusion import NoiseSchedule, add_noise
from jaxhead.errors import DataError, MissingWeightsError
from jaxhead.models import clip_text
from jaxhead.models import vae as vae_lib
from jaxhead.teacher import ControlNetAssignment, Teacher, load_teacher
from jaxhead.utils.compile import jit
from jaxhead.utils.params_io import is_converted

Array = jax.Array
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SD_CONVERT = ("python -m convert_weights.diffusers <diffusers SD 1.5 folder> {root}"
              "{controlnets}")


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusion:
    """The static parts of a Stable Diffusion stack (hashable by identity, a jit static arg).

    Params: ``{"teacher": {"unet", "controlnets"}, "vae": ..., "text_encoder": ...}``.
    ``clip_sample``: DDIM's ``clip_sample_range`` when the scheduler clips x0, else None.
    """

    teacher: Teacher
    vae: vae_lib.AutoencoderKL
    text_encoder: clip_text.CLIPTextModel | None
    tokenizer: Any
    schedule: NoiseSchedule
    clip_sample: float | None = None

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return self.vae.config.downscale

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE downscale x UNet down-samplings)."""
        return self.downscale * 2 ** (len(self.teacher.unet.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels


class Noise(NamedTuple):
    """All random numbers of one sampling run, per sample.

    ``init`` [B, h, w, C]: the text-to-image starting latents, or the forward noise of SDEdit;
    ``encode`` [B, h, w, C] or None: the VAE posterior's standard-normal draw (None: its mean);
    ``steps`` [S, B, h, w, C] or None: DDIM's variance noise of each run step (eta > 0).
    """

    init: Array
    encode: Array | None = None
    steps: Array | None = None


class SampleOutput(NamedTuple):
    latents: Array  # [B, h, w, C] final scaled latents
    images: Array | None  # [B, H, W, 3] decoded, in [0, 1] (None when not decoded)


# --- schedule -------------------------------------------------------------------------------


def start_index_for_strength(num_steps: int, strength: float) -> int:
    """diffusers' img2img ``get_timesteps``: the first run step index for ``strength`` in
    [0, 1] (0.5 of 50 steps -> 25: noise to step 25 and run the last 25 steps)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return max(num_steps - min(int(num_steps * strength), num_steps), 0)


def ddim_timesteps(schedule: NoiseSchedule, num_steps: int, start_index: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The run steps' timesteps and their predecessors (int32 [S]), S = num_steps -
    start_index; ``prev = t - T // num_steps`` (negative: the final alpha), as diffusers'
    DDIM."""
    if not 0 <= start_index < num_steps:
        raise ValueError(f"start_index must be in [0, {num_steps - 1}], got {start_index}")
    ts = schedule.timesteps(num_steps)[start_index:]
    prev = ts - schedule.num_train_timesteps // num_steps
    return ts.astype(np.int32), prev.astype(np.int32)


def ddim_step(alphas_cumprod: Array, final_alpha_cumprod: float, x: Array, model_output: Array,
              t: Array, t_prev: Array, *, eta: float = 0.0, variance_noise: Array | None = None,
              prediction_type: str = "epsilon", clip_sample: float | None = None
              ) -> tuple[Array, Array]:
    """One DDIM update x_t -> x_{t_prev} (Song et al. eq. 12; diffusers' ``DDIMScheduler.step``
    without ``use_clipped_model_output``). x, model_output, variance_noise: [B, ...]; t, t_prev:
    int scalars. Returns (x_prev, predicted x0)."""
    a_t = alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, alphas_cumprod[jnp.maximum(t_prev, 0)], final_alpha_cumprod)
    b_t = 1.0 - a_t
    if prediction_type == "epsilon":
        x0 = (x - jnp.sqrt(b_t) * model_output) / jnp.sqrt(a_t)
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(b_t)
    elif prediction_type == "v_prediction":
        x0 = jnp.sqrt(a_t) * x - jnp.sqrt(b_t) * model_output
        eps = jnp.sqrt(a_t) * model_output + jnp.sqrt(b_t) * x
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, "
                         f"got {prediction_type!r}")
    if clip_sample is not None:
        x0 = jnp.clip(x0, -clip_sample, clip_sample)
    variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev)
    std = eta * jnp.sqrt(variance)
    x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev - std ** 2) * eps
    if eta > 0:
        if variance_noise is None:
            raise ValueError("eta > 0 needs variance_noise")
        x_prev = x_prev + std * variance_noise
    return x_prev, x0


# --- noise ----------------------------------------------------------------------------------


def draw_noise(sd: StableDiffusion, keys: Array, latent_hw: tuple[int, int], *,
               num_steps: int, start_index: int = 0, eta: float = 0.0,
               posterior_sample: bool = False) -> Noise:
    """Noise for a batch from one key per sample (``keys`` [B], e.g. ``jax.random.key(seed)``
    stacked): sample i's noise depends only on its own key, so a seed gives the same image
    in any batch. ``posterior_sample``: draw the VAE posterior noise (img2img)."""
    shape = tuple(latent_hw) + (sd.latent_channels,)
    steps = num_steps - start_index

    def one(key):
        k_init, k_enc, k_steps = jax.random.split(key, 3)
        init = jax.random.normal(k_init, shape, jnp.float32)
        enc = jax.random.normal(k_enc, shape, jnp.float32) if posterior_sample else None
        st = jax.random.normal(k_steps, (steps,) + shape, jnp.float32) if eta > 0 else None
        return Noise(init, enc, st)

    n = jax.vmap(one)(keys)
    return n._replace(steps=None if n.steps is None else jnp.swapaxes(n.steps, 0, 1))


def seed_keys(seeds: Sequence[int]) -> Array:
    """[B] PRNG keys, ``jax.random.key(seed)`` each."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


# --- sampling -------------------------------------------------------------------------------

_PROGRESS: list[Callable[[int], None]] = []


def _tick(i: Any) -> None:
    """Host callback of the scan body: report a finished step to the active progress hook."""
    if _PROGRESS:
        _PROGRESS[-1](int(i))


class progress_hook:  # noqa: N801 (a context manager used like a function)
    """``with progress_hook(fn): sample(..., progress=True)`` calls ``fn(step)`` after each
    DDIM step (a host callback from inside the compiled scan)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def __enter__(self) -> progress_hook:
        _PROGRESS.append(self.fn)
        return self

    def __exit__(self, *exc: Any) -> None:
        _PROGRESS.remove(self.fn)


def denoise(sd: StableDiffusion, params: Any, x: Array, text_emb: Array, neg_emb: Array,
            timesteps: Array, prev_timesteps: Array, *, guidance_scale: Array | float = 7.5,
            eta: float = 0.0, variance_noise: Array | None = None, control: Array | None = None,
            controlnet: ControlNetAssignment = None, control_scale: Array | float = 1.0,
            progress: bool = False) -> Array:
    """The DDIM loop (``lax.scan``) from x at ``timesteps[0]``: latents [B, h, w, C] ->
    final latents. ``variance_noise`` [S, B, h, w, C] when ``eta > 0``; the other arguments
    as :meth:`Teacher.eps`."""
    ac = jnp.asarray(sd.schedule.alphas_cumprod)
    final = sd.schedule.final_alpha_cumprod
    steps = jnp.arange(timesteps.shape[0])
    vn = variance_noise if eta > 0 else jnp.zeros((timesteps.shape[0],), jnp.float32)

    def body(x, inp):
        i, t, t_prev, noise = inp
        out = sd.teacher.eps(params["teacher"], x, t, text_emb, neg_emb, control,
                             controlnet=controlnet, control_scale=control_scale,
                             guidance_scale=guidance_scale)
        x, _ = ddim_step(ac, final, x, out.eps, t, t_prev, eta=eta,
                         variance_noise=noise if eta > 0 else None,
                         prediction_type=sd.schedule.prediction_type,
                         clip_sample=sd.clip_sample)
        if progress:
            jax.debug.callback(_tick, i)
        return x, None

    x, _ = jax.lax.scan(body, x, (steps, jnp.asarray(timesteps), jnp.asarray(prev_timesteps),
                                  vn))
    return x


def encode_images(sd: StableDiffusion, params: Any, images: Array,
                  posterior_noise: Array | None = None) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> scaled latents: the posterior's mean, or
    ``mean + std * posterior_noise`` (diffusers' ``latent_dist.sample``)."""
    dist = sd.vae.apply({"params": params["vae"]}, images, method=sd.vae.encode)
    z = dist.mean if posterior_noise is None else dist.mean + dist.std * posterior_noise
    shift = sd.vae.config.shift_factor or 0.0
    return (z - shift) * sd.vae.config.scaling_factor


def _sample(sd: StableDiffusion, params: Any, noise: Noise, text_emb: Array, neg_emb: Array,
            image: Array | None, control: Array | None, control_scale: Array,
            guidance_scale: Array, *, num_steps: int, start_index: int, eta: float,
            controlnet: ControlNetAssignment, decode: bool, progress: bool) -> SampleOutput:
    ts, prev = ddim_timesteps(sd.schedule, num_steps, start_index)
    if image is None:  # text-to-image: DDIM's init_noise_sigma is 1
        x = noise.init
    else:  # SDEdit: the encoded image, noised to the first run step
        x0 = encode_images(sd, params, image, noise.encode)
        x = add_noise(jnp.asarray(sd.schedule.alphas_cumprod), x0, noise.init, int(ts[0]))
    x = denoise(sd, params, x, text_emb, neg_emb, ts, prev, guidance_scale=guidance_scale,
                eta=eta, variance_noise=noise.steps, control=control, controlnet=controlnet,
                control_scale=control_scale, progress=progress)
    images = None
    if decode:
        images = jnp.clip(vae_lib.decode_latents(sd.vae, params["vae"], x) * 0.5 + 0.5, 0, 1)
    return SampleOutput(x, images)


_STATIC = ("sd", "num_steps", "start_index", "eta", "controlnet", "decode", "progress")


@functools.cache
def _sample_jit():
    """The jitted :func:`_sample` (built at first use: :func:`jaxhead.utils.compile.jit` asks
    JAX for its backend)."""
    return jit(_sample, static_argnames=_STATIC)


def sample(sd: StableDiffusion, params: Any, noise: Noise, text_emb: Array, neg_emb: Array, *,
           num_steps: int = 50, start_index: int = 0, image: Array | None = None,
           eta: float = 0.0, guidance_scale: Array | float = 7.5, control: Array | None = None,
           controlnet: ControlNetAssignment = None, control_scale: Array | float = 1.0,
           decode: bool = True, progress: bool = False) -> SampleOutput:
    """DDIM sampling, one jitted call (compiled once per static setting and shapes).

    Args:
      noise: :class:`Noise` (``draw_noise``); ``noise.init`` fixes batch and latent size.
      text_emb, neg_emb: prompt / negative-prompt embeddings [B or 1, L, D].
      num_steps: DDIM steps of the full schedule (``timesteps(num_steps)``).
      start_index: first run step (0: text-to-image from pure noise; with ``image``, SDEdit:
        the image's latents noised to ``timesteps[start_index]``, e.g.
        ``start_index_for_strength(50, 0.5)`` = 25).
      image: [B, H, W, 3] in [-1, 1] for image-to-image, H = h * downscale.
      eta: DDIM eta (static; > 0 needs ``noise.steps``).
      guidance_scale: CFG scale, scalar or [B].
      control, controlnet, control_scale: ControlNet inputs as :meth:`Teacher.eps` (control
        [B, H, W, 3] in [0, 1]).
      decode: also decode the final latents to images in [0, 1].
      progress: call the active :class:`progress_hook` after every step.
    """
    if eta > 0 and noise.steps is None:
        raise ValueError("eta > 0 needs Noise.steps (draw_noise(..., eta=eta))")
    if noise.steps is not None and noise.steps.shape[0] != num_steps - start_index:
        raise ValueError(f"Noise.steps has {noise.steps.shape[0]} steps, the run has "
                         f"{num_steps - start_index}")
    if image is not None:
        want = tuple(noise.init.shape[1:3])
        got = (image.shape[1] // sd.downscale, image.shape[2] // sd.downscale)
        if got != want or image.shape[1] % sd.downscale or image.shape[2] % sd.downscale:
            raise ValueError(f"image {tuple(image.shape[1:3])} does not match latents {want} "
                             f"(x{sd.downscale})")
    elif start_index:
        raise ValueError("start_index > 0 needs an image (SDEdit)")
    if isinstance(controlnet, list):
        controlnet = tuple(controlnet)
    return _sample_jit()(sd, params, noise, text_emb, neg_emb, image, control,
                       jnp.asarray(control_scale, jnp.float32),
                       jnp.asarray(guidance_scale, jnp.float32), num_steps=num_steps,
                       start_index=start_index, eta=float(eta), controlnet=controlnet,
                       decode=decode, progress=progress)


def encode_prompts(sd: StableDiffusion, params: Any, prompts: Sequence[str]) -> Array:
    """Prompts -> text conditioning [B, L, D] (the pipelines' ``prompt_embeds``)."""
    return clip_text.encode_prompts(sd.tokenizer, sd.text_encoder, params["text_encoder"],
                                    list(prompts))


# --- loading --------------------------------------------------------------------------------


def missing_sd(root: str | os.PathLike, controlnets: Sequence[str] = ()) -> list[str]:
    """Missing pieces of a converted SD folder, as one entry with the convert command (empty
    when complete)."""
    root = Path(root)
    parts = ["unet", "vae", "text_encoder"] + [f"controlnet_{n}" for n in controlnets]
    miss = [p for p in parts if not is_converted(root / p)]
    if not (root / "tokenizer").is_dir():
        miss.append("tokenizer")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        miss.append("scheduler")
    if not miss:
        return []
    cn = "".join(f" --controlnet {n}=<sd-controlnet-{n} folder>" for n in controlnets)
    return [f"Stable Diffusion in {root}: missing {', '.join(miss)}\n    "
            + SD_CONVERT.format(root=root, controlnets=cn)]


def read_scheduler(folder: str | os.PathLike) -> tuple[NoiseSchedule, float | None]:
    """A converted ``scheduler/`` folder -> (schedule, DDIM's ``clip_sample_range`` or None).
    Raises :class:`DataError` for settings the sampler does not support."""
    sched_file = Path(folder) / "scheduler_config.json"
    schedule = NoiseSchedule.from_file(sched_file)
    cfg = json.loads(sched_file.read_text())
    if cfg.get("thresholding", False):
        raise DataError(f"{sched_file}: dynamic thresholding is not supported by the sampler")
    if schedule.prediction_type not in PREDICTION_TYPES:
        raise DataError(f"{sched_file}: unknown prediction_type {schedule.prediction_type!r}")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", False) else None
    return schedule, clip


def load_sd(root: str | os.PathLike, *, controlnets: Sequence[str] = (),
            dtype: Any = jnp.float32, verify: bool = True) -> tuple[StableDiffusion, Any]:
    """A converted SD folder (``convert_weights.diffusers``) -> (stack, params). ``dtype``
    bfloat16 runs the UNet and ControlNets in bf16 (VAE and text encoder stay fp32). Raises
    :class:`MissingWeightsError` listing every missing piece before loading anything."""
    missing = missing_sd(root, controlnets)
    if missing:
        raise MissingWeightsError("missing converted weights:\n  - " + "\n  - ".join(missing))
    root = Path(root)
    teacher, tparams = load_teacher(root, controlnets=tuple(controlnets), dtype=dtype,
                                    verify=verify)
    vae, vparams = vae_lib.load(root / "vae", verify=verify)
    te, teparams = clip_text.load(root / "text_encoder", verify=verify)
    tok = clip_text.load_tokenizer(root / "tokenizer")
    schedule, clip = read_scheduler(root / "scheduler")
    sd = StableDiffusion(teacher, vae, te, tok, schedule, clip)
    return sd, {"teacher": tparams, "vae": vparams, "text_encoder": teparams}

