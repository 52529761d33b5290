"""Tiny random-weight stand-ins for every model of the step (a small PanoHead and a small
Stable Diffusion stack, built in code): the ``demo`` config runs the whole pipeline on a
laptop CPU in minutes and downloads nothing. ``size="full"`` builds the released PanoHead and
SD 1.5 architectures with random weights (benchmarks).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.diffusion import NoiseSchedule
from jaxhead.errors import UsageError
from jaxhead.models import clip_text
from jaxhead.models.controlnet import ControlNetConfig, ControlNetModel
from jaxhead.models.panohead import PanoHead
from jaxhead.models.panohead.demo import demo_generator
from jaxhead.models.sd_convert import param_shapes
from jaxhead.models.unet import UNet2DConditionModel, UNetConfig
from jaxhead.models.vae import AutoencoderKL, VAEConfig, encode_latents
from jaxhead.teacher import Teacher
from jaxhead.training.demo_networks import (  # noqa: F401 (re-exported: the demo's sizes)
    DEMO_CLIP,
    DEMO_CONTROL_CHANNELS,
    DEMO_CONTROLNET_SEEDS,
    DEMO_DEPTH,
    DEMO_UNET,
    DEMO_VAE,
    DemoTokenizer,
    random_params,
)
from jaxhead.training.demo_teacher import GaussianTeacher, PoolingVAE, palette_image
from jaxhead.training.models import (
    Models,
    controlnet_names,
    load_models,
    needs_teacher,
    term_params,
    text_embeddings,
    uses_depth_model,
    uses_lpips,
)
from jaxhead.utils.compile import jit


def abstract_demo_models(config, size: str = "full") -> tuple[Models, dict[str, Any]]:
    """:func:`demo_models`' modules and the shapes and dtypes of its frozen params
    (``jax.ShapeDtypeStruct``), built under ``jax.eval_shape``: nothing is drawn or allocated
    (lowering the paper's step for another platform, XLA's memory plan)."""
    box: dict[str, Models] = {}

    def build():
        box["models"], frozen = demo_models(config, size, draw=False)
        return frozen

    frozen = jax.eval_shape(build)
    return box["models"], frozen


def demo_models(config, size: str = "demo", draw: bool = True) -> tuple[Models, dict[str, Any]]:
    """PanoHead + SD stack with random weights built in code: ``size="demo"`` tiny models (the
    ``demo`` config), ``size="full"`` the released PanoHead and SD 1.5 architectures (for
    benchmarks; about 2 GB of parameters). ``draw=False``: zeros for the weights drawn on the
    host (see :func:`abstract_demo_models`)."""
    from jaxhead.models.panohead import PanoHeadConfig
    from jaxhead.models.panohead.demo import demo_config, demo_params

    seed = int(config.seed)
    full = size == "full"
    if not draw:
        G = PanoHead(PanoHeadConfig() if full else demo_config())
        g_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), G.param_shapes())
    elif full:
        G = PanoHead(PanoHeadConfig())
        g_params = demo_params(G, seed)
    else:
        G, g_params = demo_generator(seed)
    if not needs_teacher(config):  # objective "none": no SD stack at all
        return Models(G, None, None, None, None, demo=True), {
            "generator": g_params, "terms": term_params(config, demo=True)}
    if config.demo_teacher == "gaussian":  # colour-preserving latents (see demo_teacher)
        vae_mod, vae_params = PoolingVAE(), {}
    else:
        vae_mod = AutoencoderKL(VAEConfig() if full else VAEConfig(**DEMO_VAE),
                                remat=bool(config.remat))
        s = vae_mod.config.downscale
        vae_params = random_params(param_shapes(vae_mod, np.zeros((1, s, s, 3), np.float32)),
                                   seed + 1, draw)
    sched = NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                       "beta_end": 0.012, "steps_offset": 1,
                                       "set_alpha_to_one": False})
    alphas = np.asarray(sched.alphas_cumprod, np.float32)
    if config.demo_teacher == "gaussian":
        teacher, t_params = gaussian_teacher(vae_mod, vae_params, alphas, G.image_size)
    else:
        teacher, t_params = random_sd_teacher(config, seed, full, draw)
    clip_cfg = clip_text.CLIPTextConfig() if full else clip_text.CLIPTextConfig(**DEMO_CLIP)
    clip = clip_text.CLIPTextModel(clip_cfg)
    clip_params = random_params(param_shapes(clip, np.zeros((1, 77), np.int32)), seed + 9, draw)
    tok = DemoTokenizer(clip_cfg.vocab_size)
    text = text_embeddings(tok, clip, clip_params, config)
    depth, d_params = None, None
    if uses_depth_model(config):
        from jaxhead.models import depth_anything as da

        dcfg = da.CONFIGS["vitb"] if full else da.DepthAnythingConfig(**DEMO_DEPTH)
        depth = da.DepthAnythingV2(dcfg)
        d_params = random_params(depth.param_shapes(), seed + 11, draw)
    lpips_params = None
    if uses_lpips(config):  # the real AlexNet size (small), random weights
        from jaxhead.models import lpips as lpips_lib

        lpips_params = lpips_lib.random_params(jax.random.key(seed + 13))
    models = Models(G, vae_mod, teacher, alphas, sched.timesteps(config.num_inference_steps),
                    depth, demo=True, schedule=sched)
    frozen = {"generator": g_params, "vae": vae_params, "teacher": t_params,
              "depth": d_params, "text": text, "lpips": lpips_params}
    tp = term_params(config, demo=True)
    if tp:
        frozen["terms"] = tp
    return models, frozen


def random_sd_teacher(config, seed: int, full: bool, draw: bool = True
                      ) -> tuple[Teacher, dict[str, Any]]:
    """A random-weight SD UNet and the config's ControlNets (tiny, or SD 1.5 size; zeros
    without ``draw``)."""
    tdtype = jnp.bfloat16 if config.models.teacher_dtype == "bfloat16" else jnp.float32
    ucfg = UNetConfig() if full else UNetConfig(**DEMO_UNET)
    unet = UNet2DConditionModel(ucfg, dtype=tdtype)
    x = np.zeros((1, 8, 8, 4), np.float32)
    ctx = np.zeros((1, 77, ucfg.cross_attention_dim), np.float32)
    t = np.zeros((1,), np.int32)
    unet_params = random_params(param_shapes(unet, x, t, ctx), seed + 2, draw)
    cns, cn_params = [], {}
    for name in controlnet_names(config):
        ccfg = ControlNetConfig() if full else ControlNetConfig(
            **{k: v for k, v in DEMO_UNET.items() if k != "up_block_types"},
            conditioning_embedding_out_channels=DEMO_CONTROL_CHANNELS)
        cn = ControlNetModel(ccfg, dtype=tdtype)
        ctl = np.zeros((1, 64, 64, 3), np.float32)
        cn_params[name] = random_params(param_shapes(cn, x, t, ctx, ctl, 1.0),
                                        seed + DEMO_CONTROLNET_SEEDS.get(name, 5), draw)
        cns.append((name, cn))
    teacher = Teacher(unet, tuple(cns))
    if tdtype != jnp.float32:
        from jaxhead.models.sd_convert import cast_params

        unet_params, cn_params = cast_params((unet_params, cn_params), tdtype)
    return teacher, {"unet": unet_params, "controlnets": cn_params}


def gaussian_teacher(vae_mod: Any, vae_params: Any, alphas: np.ndarray,
                     image_size: int) -> tuple[GaussianTeacher, dict[str, Any]]:
    """The analytic demo teacher, its target the VAE encoding of the palette image."""
    img = jnp.asarray(palette_image(image_size))[None]
    mu = jit(lambda p, x: encode_latents(vae_mod, p, x))(vae_params, img)
    return GaussianTeacher(alphas), {"mu": mu}


def build_models(config) -> tuple[Models, dict[str, Any]]:
    """Demo stand-ins when ``models.generator`` and ``models.sd`` are ``"demo"``, else
    :func:`load_models`."""
    if config.models.generator == "demo" or config.models.sd == "demo":
        if not (config.models.generator == "demo" and config.models.sd == "demo"):
            raise UsageError("models.generator and models.sd must both be 'demo' (or both "
                             "real paths)")
        return demo_models(config)
    return load_models(config)
