"""Everything the train step needs that is not trained: modules (static) and frozen params.

``load_models(config)`` reads converted real weights (and lists every missing file with the
command that makes it, before anything is loaded); :func:`jaxhead.training.demo.build_models`
picks them or the demo stand-ins.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.diffusion import NoiseSchedule
from jaxhead.errors import MissingWeightsError
from jaxhead.generators import Generator3D, load_generator
from jaxhead.models import clip_text
from jaxhead.models import vae as vae_lib
from jaxhead.models.panohead import RELEASED_CONVERT
from jaxhead.models.vae import AutoencoderKL
from jaxhead.teacher import Teacher, load_teacher
from jaxhead.training.controls import CONTROLS
from jaxhead.training.terms import enabled_terms
from jaxhead.training.views import VIEWS
from jaxhead.utils.params_io import CONFIG_FILE, PARAMS_FILE, is_converted


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
    """Static parts of the training computation (hashable by identity)."""

    G: Generator3D
    vae: AutoencoderKL | None  # None (with teacher, schedule): a run without a teacher
    teacher: Teacher | None
    alphas_cumprod: np.ndarray | None  # [T] float32
    timesteps: np.ndarray | None  # [num_inference_steps] DDIM timesteps, descending
    depth: Any | None = None  # DepthAnythingV2 module when a selected control uses it
    demo: bool = False
    schedule: NoiseSchedule | None = None  # the teacher's schedule (the style bank's sampler)

    @property
    def latent_size(self) -> int:
        return self.G.image_size // self.vae.config.downscale


def selected_controls(config) -> tuple[str, ...]:
    """The control kinds of the enabled views (``<view>.control``), without repeats."""
    out: list[str] = []
    for name in VIEWS:
        v = config[name]
        ctl = v.get("control", "none")
        if v.enabled and ctl not in out:
            out.append(ctl)
    return tuple(out)


def controlnet_names(config) -> tuple[str, ...]:
    """The ControlNets the enabled views' controls feed, without repeats."""
    names: list[str] = []
    for ctl in selected_controls(config):
        n = CONTROLS[ctl].controlnet
        if n is not None and n not in names:
            names.append(n)
    return tuple(names)


def uses_depth_model(config) -> bool:
    return any(CONTROLS[c].depth_model for c in selected_controls(config))


def needs_teacher(config) -> bool:
    """Whether the run asks Stable Diffusion anything: a score view is enabled or a term sends
    rows to the teacher (StyleGAN-Fusion's). False with ``objective="none"`` (the
    single-portrait mode): then no SD weights (teacher, VAE, text encoder) are read."""
    from jaxhead.training.views import enabled_views

    return bool(enabled_views(config)) or any(t.asks_teacher() for t in enabled_terms(config))


def uses_lpips(config) -> bool:
    """The LPIPS term exists only on the single-view path."""
    return config.lpips_weight > 0 and config.single.enabled


SD_CONVERT = ("python -m convert_weights.diffusers Realistic_Vision_V5.1_noVAE {sd} "
              "--controlnet depth=sd-controlnet-depth --controlnet edge=sd-controlnet-canny "
              "(add --vae sd-vae-ft-mse if your copy has no vae/ folder)")


def missing_weights(config) -> list[str]:
    """Human-readable list of missing inputs, each with the command that creates it."""
    m = config.models
    out = []
    g = Path(m.generator)
    if not is_converted(g):
        out.append(f"PanoHead generator: {g}/{{{PARAMS_FILE},{CONFIG_FILE}}}\n    "
                   + RELEASED_CONVERT.replace("DST", str(g)))
    sd = Path(m.sd)
    parts = ["unet", "vae", "text_encoder"] + [f"controlnet_{n}" for n in controlnet_names(config)]
    miss = [p for p in parts if not is_converted(sd / p)]
    if not (sd / "tokenizer").is_dir():
        miss.append("tokenizer")
    if not (sd / "scheduler" / "scheduler_config.json").is_file():
        miss.append("scheduler")
    if miss and needs_teacher(config):
        out.append(f"Stable Diffusion teacher in {sd}: missing {', '.join(miss)}\n    "
                   + SD_CONVERT.format(sd=sd))
    if uses_depth_model(config) and not is_converted(Path(m.depth_anything)):
        users = [f"{v}.control=depth_anything" for v in VIEWS if config[v].enabled
                 and CONTROLS[config[v].get("control", "none")].depth_model]
        out.append(f"Depth Anything V2 for {', '.join(users)}: {m.depth_anything}\n    "
                   f"python -m convert_weights.depth_anything depth_anything_v2_vitb.pth "
                   f"{m.depth_anything}\n    (or choose the renderer's depth explicitly: "
                   + " ".join(f"--config.{u.split('=')[0]}=renderer_depth" for u in users) + ")")
    for term in enabled_terms(config):
        out += term.missing(config)
    if uses_lpips(config) and not is_converted(Path(m.lpips)):
        from jaxhead.models.lpips import CONVERT_HINT

        out.append(f"LPIPS(alex) for lpips_weight={config.lpips_weight}: {m.lpips}\n    "
                   + CONVERT_HINT.replace("DST", str(m.lpips))
                   + "\n    (or set --config.lpips_weight=0)")
    return out


def term_params(config, demo: bool) -> dict[str, Any]:
    """``frozen["terms"]``: the frozen networks of the enabled terms that load any (CLIP,
    ArcFace), random small ones on the demo models."""
    loaded = {t.name: t.load(config, demo) for t in enabled_terms(config)}
    return {name: p for name, p in loaded.items() if p is not None}


def text_embeddings(tokenizer, module, params, config) -> dict[str, jax.Array]:
    """CLIP embeddings of every prompt table of the run (:func:`prompts.prompt_texts`): the
    prompt and the negative prompt ``{"cond", "neg"}``, and the view-suffixed, neutral and
    objective prompts when selected."""
    from jaxhead.training.prompts import prompt_texts

    return {k: clip_text.encode_prompts(tokenizer, module, params, texts)
            for k, texts in prompt_texts(config).items()}


def load_models(config) -> tuple[Models, dict[str, Any]]:
    """Real models from converted folders. Raises :class:`MissingWeightsError` listing every
    missing input and its convert command before anything is loaded."""
    missing = missing_weights(config)
    if missing:
        raise MissingWeightsError("missing converted weights:\n  - " + "\n  - ".join(missing))
    m = config.models
    dtype = jnp.bfloat16 if m.teacher_dtype == "bfloat16" else jnp.float32
    G, g_params = load_generator(m.generator)
    if not needs_teacher(config):  # objective "none": the generator and the terms' networks
        models = Models(G, None, None, None, None)
        frozen = {"generator": g_params, "terms": term_params(config, demo=False)}
        return models, frozen
    sd = Path(m.sd)
    vae_mod, vae_params = vae_lib.load(sd / "vae")
    vae_mod = vae_mod.clone(remat=bool(config.remat))
    teacher, t_params = load_teacher(sd, controlnets=controlnet_names(config), dtype=dtype)
    tok = clip_text.load_tokenizer(sd / "tokenizer")
    clip, clip_params = clip_text.load(sd / "text_encoder")
    text = text_embeddings(tok, clip, clip_params, config)
    del clip_params
    sched = NoiseSchedule.from_file(sd / "scheduler")
    depth, d_params = None, None
    if uses_depth_model(config):
        from jaxhead.models import depth_anything as da

        depth, d_params = da.load(m.depth_anything)
    lpips_params = None
    if uses_lpips(config):
        from jaxhead.models.lpips import load_lpips

        lpips_params = load_lpips(m.lpips)
    models = Models(G, vae_mod, teacher, np.asarray(sched.alphas_cumprod, np.float32),
                    sched.timesteps(config.num_inference_steps), depth, schedule=sched)
    frozen = {"generator": g_params, "vae": vae_params, "teacher": t_params,
              "depth": d_params, "text": text, "lpips": lpips_params}
    tp = term_params(config, demo=False)
    if tp:
        frozen["terms"] = tp
    return models, frozen


def describe(models: Models, config) -> str:
    G, t = models.G, models.teacher
    if t is None:
            return (f"{type(G).__name__} generator ({G.image_size} px"
                + (", random weights" if models.demo else "") + "); no teacher (objective "
                "none); terms " + ", ".join(t.name for t in enabled_terms(config)))
    unet = getattr(t, "unet", None)
    teacher = (f"teacher UNet {unet.config.block_out_channels}" if unet is not None else
               f"teacher {type(t).__name__}")
    if models.demo and config.demo_teacher == "gaussian":
        return (f"{type(G).__name__} generator ({G.image_size} px, random weights); demo "
                "teacher: the exact score of a Gaussian over latents centred on a green "
                "palette (jaxhead/training/demo_teacher.py); views "
                + ", ".join(v for v in VIEWS if config[v].enabled))
    return (f"{type(G).__name__} generator ({G.image_size} px); {teacher}, ControlNets "
            f"{list(t.controlnet_names)}; controls "
            + ", ".join(f"{v} {config[v].get('control', 'none')}" for v in VIEWS
                        if config[v].enabled)
            + (" (demo: random weights)" if models.demo else ""))
