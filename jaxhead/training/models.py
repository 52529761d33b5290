"""Everything the train step needs that is not trained: modules (static) and frozen params.

``load_models(config)`` reads converted real weights (and lists every missing file with the
command that makes it); ``demo_models(config)`` builds tiny random-weight stand-ins in code
(a small PanoHead and a small Stable Diffusion stack) so that the whole pipeline runs on a
laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.diffusion import NoiseSchedule
from jaxhead.models import clip_text
from jaxhead.models import vae as vae_lib
from jaxhead.models.controlnet import ControlNetConfig, ControlNetModel
from jaxhead.models.panohead import PanoHead, load_panohead
from jaxhead.models.panohead.demo import demo_generator
from jaxhead.models.unet import UNet2DConditionModel, UNetConfig
from jaxhead.models.vae import AutoencoderKL, VAEConfig
from jaxhead.teacher import Teacher, load_teacher
from jaxhead.utils.params_io import CONFIG_FILE, PARAMS_FILE

# Control signal name -> ControlNet name in the converted SD folder (controlnet_<name>/).
CONTROLNET_FOR = {"canny": "edge", "depth": "depth", "depth_anything": "depth",
                  "renderer_depth": "depth", "none": None}


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
    """Static parts of the training computation (hashable by identity)."""

    G: PanoHead
    vae: AutoencoderKL
    teacher: Teacher
    alphas_cumprod: np.ndarray  # [T] float32
    timesteps: np.ndarray  # [num_inference_steps] DDIM timesteps, descending
    depth: Any | None = None  # DepthAnythingV2 module when its weights are used
    grid_control: str = "renderer_depth"  # resolved: depth_anything | renderer_depth | none
    single_control: str = "canny"  # none | canny | depth (single-view control signal)
    demo: bool = False

    @property
    def latent_size(self) -> int:
        return self.G.config.img_resolution // self.vae.config.downscale


def controlnet_names(config) -> tuple[str, ...]:
    names = []
    for ctl in (config.single.control, config.grid.control if config.grid.enabled else "none"):
        n = CONTROLNET_FOR[ctl]
        if n is not None and n not in names:
            names.append(n)
    return tuple(names)


def _uses_lpips(config) -> bool:
    """The LPIPS term exists only on the single-view path."""
    return config.lpips_weight > 0 and config.single.enabled


def _converted(path: Path) -> bool:
    return (path / PARAMS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def missing_weights(config) -> list[str]:
    """Human-readable list of missing inputs, each with the command that creates it."""
    m = config.models
    out = []
    g = Path(m.generator)
    if not _converted(g):
        out.append(f"PanoHead generator: {g}/{{{PARAMS_FILE},{CONFIG_FILE}}}\n"
                   f"    python -m convert_weights.panohead "
                   f"easy-khair-180-gpc0.8-trans10-025000.pkl {g}")
    sd = Path(m.sd)
    cmd = (f"    python -m convert_weights.diffusers Realistic_Vision_V5.1_noVAE {sd} "
           f"--vae sd-vae-ft-mse --controlnet depth=sd-controlnet-depth "
           f"--controlnet edge=sd-controlnet-canny")
    parts = ["unet", "vae", "text_encoder"] + [f"controlnet_{n}" for n in controlnet_names(config)]
    miss = [p for p in parts if not _converted(sd / p)]
    if not (sd / "tokenizer").is_dir():
        miss.append("tokenizer")
    if not (sd / "scheduler" / "scheduler_config.json").is_file():
        miss.append("scheduler")
    if miss:
        out.append(f"Stable Diffusion teacher in {sd}: missing {', '.join(miss)}\n{cmd}")
    if config.grid.enabled and config.grid.control == "depth_anything" and not _converted(
            Path(m.depth_anything)):
        out.append(f"Depth Anything V2: {m.depth_anything}\n    python -m "
                   f"convert_weights.depth_anything depth_anything_v2_vitb.pth "
                   f"{m.depth_anything}")
    if _uses_lpips(config) and not _converted(Path(m.lpips)):
        from jaxhead.models.lpips import CONVERT_HINT

        out.append(f"LPIPS(alex) for lpips_weight={config.lpips_weight}: {m.lpips}\n    "
                   + CONVERT_HINT.replace("DST", str(m.lpips))
                   + "\n    (or set --config.lpips_weight=0)")
    return out


def _text_embeddings(tokenizer, module, params, prompts) -> jax.Array:
    return clip_text.encode_prompts(tokenizer, module, params, prompts)


def load_models(config) -> tuple[Models, dict[str, Any]]:
    """Real models from converted folders. Raises ``FileNotFoundError`` listing every missing
    input and its convert command before anything is loaded."""
    missing = missing_weights(config)
    if missing:
        raise FileNotFoundError("missing converted weights:\n  - " + "\n  - ".join(missing))
    m = config.models
    dtype = jnp.bfloat16 if m.teacher_dtype == "bfloat16" else jnp.float32
    G, g_params = load_panohead(m.generator)
    sd = Path(m.sd)
    vae_mod, vae_params = vae_lib.load(sd / "vae")
    vae_mod = vae_mod.clone(remat=bool(config.remat))
    teacher, t_params = load_teacher(sd, controlnets=controlnet_names(config), dtype=dtype)
    tok = clip_text.load_tokenizer(sd / "tokenizer")
    clip, clip_params = clip_text.load(sd / "text_encoder")
    text = {"cond": _text_embeddings(tok, clip, clip_params, [config.prompt]),
            "neg": _text_embeddings(tok, clip, clip_params, [config.negative_prompt])}
    del clip_params
    sched = NoiseSchedule.from_file(sd / "scheduler")
    depth, d_params, grid_control = None, None, _resolve_grid_control(config)
    if grid_control == "depth_anything" or (config.single.control == "depth" and _converted(
            Path(m.depth_anything))):
        from jaxhead.models import depth_anything as da

        depth, d_params = da.load(m.depth_anything)
    lpips_params = None
    if _uses_lpips(config):
        from jaxhead.models.lpips import load_lpips

        lpips_params = load_lpips(m.lpips)
    models = Models(G, vae_mod, teacher, np.asarray(sched.alphas_cumprod, np.float32),
                    sched.timesteps(config.num_inference_steps), depth, grid_control,
                    config.single.control)
    return models, {"generator": g_params, "vae": vae_params, "teacher": t_params,
                    "depth": d_params, "text": text, "lpips": lpips_params}


def _resolve_grid_control(config) -> str:
    if not config.grid.enabled:
        return "none"
    ctl = config.grid.control
    if ctl == "depth":  # Depth Anything when its weights exist (the paper), else renderer depth
        return "depth_anything" if _converted(Path(config.models.depth_anything)) else \
            "renderer_depth"
    return ctl


# --- tiny random stand-ins ---------------------------------------------------------------------

DEMO_UNET = dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D",
                 "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 layers_per_block=(1, 1), norm_num_groups=8, cross_attention_dim=32,
                 num_attention_heads=(2, 2), transformer_layers_per_block=(1, 1))
DEMO_CONTROL_CHANNELS = (8, 8, 16, 16)  # 8x down: 512 px control for 64 px latents
DEMO_VAE = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
DEMO_DEPTH = dict(embed_dim=32, depth=4, num_heads=2, intermediate_layers=(0, 1, 2, 3),
                  features=16, out_channels=(8, 16, 16, 32), head_hidden=8)
DEMO_CLIP = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, max_position_embeddings=77, eos_token_id=999)


class DemoTokenizer:
    """Word-hash tokenizer for the demo text encoder (the real one is CLIP's BPE)."""

    model_max_length = 77

    def __init__(self, vocab_size: int = 1000) -> None:
        self.vocab_size = vocab_size

    def __call__(self, prompts, padding=None, truncation=True, max_length=77,
                 return_tensors="np"):
        ids = np.full((len(prompts), max_length), self.vocab_size - 1, np.int32)
        for i, p in enumerate(prompts):
            toks = [int(hashlib.md5(w.lower().encode()).hexdigest(), 16)
                    % (self.vocab_size - 2) + 1 for w in p.replace(",", " ").split()]
            toks = [0] + toks[: max_length - 2] + [self.vocab_size - 1]
            ids[i, : len(toks)] = toks
        return {"input_ids": ids}


def random_params(shapes: Any, seed: int) -> Any:
    """Host-side random params for a shape tree: weights ~ N(0, 1/fan_in), norm scales 1,
    biases small (no init compile; every path, zero-convs included, is active)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return jnp.ones(s.shape, jnp.float32)
        if name.endswith("['bias']"):
            return jnp.asarray(0.02 * rng.standard_normal(s.shape), jnp.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(max(fan_in, 1)), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def demo_models(config, size: str = "demo") -> tuple[Models, dict[str, Any]]:
    """PanoHead + SD stack with random weights built in code: ``size="demo"`` tiny models (the
    ``demo`` config), ``size="full"`` the released PanoHead and SD 1.5 architectures (for
    benchmarks; about 2 GB of parameters)."""
    from jaxhead.models.panohead import PanoHeadConfig
    from jaxhead.models.panohead.demo import demo_params
    from jaxhead.models.sd_convert import param_shapes

    seed = int(config.seed)
    full = size == "full"
    if full:
        G = PanoHead(PanoHeadConfig())
        g_params = demo_params(G, seed)
    else:
        G, g_params = demo_generator(seed)
    vae_mod = AutoencoderKL(VAEConfig() if full else VAEConfig(**DEMO_VAE),
                            remat=bool(config.remat))
    s = vae_mod.config.downscale
    vae_params = random_params(param_shapes(vae_mod, np.zeros((1, s, s, 3), np.float32)),
                               seed + 1)
    tdtype = jnp.bfloat16 if config.models.teacher_dtype == "bfloat16" else jnp.float32
    ucfg = UNetConfig() if full else UNetConfig(**DEMO_UNET)
    unet = UNet2DConditionModel(ucfg, dtype=tdtype)
    x = np.zeros((1, 8, 8, 4), np.float32)
    ctx = np.zeros((1, 77, ucfg.cross_attention_dim), np.float32)
    t = np.zeros((1,), np.int32)
    unet_params = random_params(param_shapes(unet, x, t, ctx), seed + 2)
    cns, cn_params = [], {}
    for i, name in enumerate(controlnet_names(config)):
        ccfg = ControlNetConfig() if full else ControlNetConfig(
            **{k: v for k, v in DEMO_UNET.items() if k != "up_block_types"},
            conditioning_embedding_out_channels=DEMO_CONTROL_CHANNELS)
        cn = ControlNetModel(ccfg, dtype=tdtype)
        ctl = np.zeros((1, 64, 64, 3), np.float32)
        cn_params[name] = random_params(param_shapes(cn, x, t, ctx, ctl, 1.0), seed + 3 + i)
        cns.append((name, cn))
    teacher = Teacher(unet, tuple(cns))
    if tdtype != jnp.float32:
        from jaxhead.models.sd_convert import cast_params

        unet_params, cn_params = cast_params((unet_params, cn_params), tdtype)
    clip_cfg = clip_text.CLIPTextConfig() if full else clip_text.CLIPTextConfig(**DEMO_CLIP)
    clip = clip_text.CLIPTextModel(clip_cfg)
    clip_params = random_params(param_shapes(clip, np.zeros((1, 77), np.int32)), seed + 9)
    tok = DemoTokenizer(clip_cfg.vocab_size)
    text = {"cond": _text_embeddings(tok, clip, clip_params, [config.prompt]),
            "neg": _text_embeddings(tok, clip, clip_params, [config.negative_prompt])}
    sched = NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                       "beta_end": 0.012, "steps_offset": 1,
                                       "set_alpha_to_one": False})
    # Depth Anything only when asked for explicitly ("depth" resolves to renderer depth here).
    grid_control = "none" if not config.grid.enabled else (
        "renderer_depth" if config.grid.control in ("depth", "renderer_depth") else
        config.grid.control)
    depth, d_params = None, None
    if grid_control == "depth_anything":
        from jaxhead.models import depth_anything as da

        dcfg = da.CONFIGS["vitb"] if full else da.DepthAnythingConfig(**DEMO_DEPTH)
        depth = da.DepthAnythingV2(dcfg)
        d_params = random_params(depth.param_shapes(), seed + 11)
    lpips_params = None
    if _uses_lpips(config):  # the real AlexNet size (small), random weights
        from jaxhead.models import lpips as lpips_lib

        lpips_params = lpips_lib.random_params(jax.random.key(seed + 13))
    models = Models(G, vae_mod, teacher, np.asarray(sched.alphas_cumprod, np.float32),
                    sched.timesteps(config.num_inference_steps), depth, grid_control,
                    config.single.control, demo=True)
    return models, {"generator": g_params, "vae": vae_params,
                    "teacher": {"unet": unet_params, "controlnets": cn_params},
                    "depth": d_params, "text": text, "lpips": lpips_params}


def build_models(config) -> tuple[Models, dict[str, Any]]:
    """``demo_models`` when ``config.models.generator == "demo"``, else ``load_models``."""
    if config.models.generator == "demo" or config.models.sd == "demo":
        if not (config.models.generator == "demo" and config.models.sd == "demo"):
            raise ValueError("models.generator and models.sd must both be 'demo' (or both "
                             "real paths)")
        return demo_models(config)
    return load_models(config)


def describe(models: Models) -> str:
    g = models.G.config
    return (f"PanoHead tri-grid {g.triplane_size}, {g.depth_resolution}+"
            f"{g.depth_resolution_importance} samples, {g.neural_rendering_resolution} px; "
            f"teacher UNet {models.teacher.unet.config.block_out_channels}, ControlNets "
            f"{list(models.teacher.controlnet_names)}; grid control {models.grid_control}"
            + (" (demo: random weights)" if models.demo else ""))


__all__ = ["Models", "build_models", "controlnet_names", "demo_models", "describe",
           "load_models", "missing_weights", "os"]
