"""Random-weight stand-ins for the evaluation: a Stable Diffusion stack (tiny, or SD 1.5's
architecture) and the metric networks, built in code, so the protocol runs without downloads
(``configs/eval_demo.py``) and the benchmark times full-size networks."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxhead.diffusion import NoiseSchedule
from jaxhead.models import clip_text
from jaxhead.models.sd_convert import param_shapes
from jaxhead.models.unet import UNet2DConditionModel, UNetConfig
from jaxhead.models.vae import AutoencoderKL, VAEConfig
from jaxhead.sampling import StableDiffusion
from jaxhead.teacher import Teacher
from jaxhead.training.demo import (
    DEMO_CLIP,
    DEMO_UNET,
    DEMO_VAE,
    DemoTokenizer,
    random_params,
)

SD15_SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                  "steps_offset": 1, "set_alpha_to_one": False}
DEMO_CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2)
DEMO_ARCFACE = dict(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem=8, embedding_dim=64)


def demo_sd(seed: int = 0, *, full: bool = False, dtype: Any = None
            ) -> tuple[StableDiffusion, dict[str, Any]]:
    """A random-weight SD stack: the demo trainer's tiny UNet / VAE / text encoder (word-hash
    tokenizer), or with ``full`` SD 1.5's architectures (about 1.1 G parameters)."""
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    ucfg = UNetConfig() if full else UNetConfig(**DEMO_UNET)
    unet = UNet2DConditionModel(ucfg, dtype=dtype)
    x = np.zeros((1, 8, 8, 4), np.float32)
    ctx = np.zeros((1, 77, ucfg.cross_attention_dim), np.float32)
    unet_params = random_params(param_shapes(unet, x, np.zeros((1,), np.int32), ctx), seed + 2)
    if dtype != jnp.float32:
        from jaxhead.models.sd_convert import cast_params

        unet_params = cast_params(unet_params, dtype)
    vae = AutoencoderKL(VAEConfig() if full else VAEConfig(**DEMO_VAE))
    s = vae.config.downscale
    vae_params = random_params(param_shapes(vae, np.zeros((1, s, s, 3), np.float32)), seed + 1)
    ccfg = clip_text.CLIPTextConfig() if full else clip_text.CLIPTextConfig(**DEMO_CLIP)
    te = clip_text.CLIPTextModel(ccfg)
    te_params = random_params(param_shapes(te, np.zeros((1, 77), np.int32)), seed + 9)
    sd = StableDiffusion(Teacher(unet), vae, te, DemoTokenizer(ccfg.vocab_size),
                         NoiseSchedule.from_config(SD15_SCHEDULER))
    return sd, {"teacher": {"unet": unet_params, "controlnets": {}}, "vae": vae_params,
                "text_encoder": te_params}


def _inception_params(seed: int) -> Any:
    """Random FID-Inception weights drawn on the host (``inception.random_params``'s rules;
    one jax.random call per tensor there compiles for every shape, about 90 s on 2 cores)."""
    import jax.numpy as jnp

    from jaxhead.metrics.inception import param_shapes

    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name = path[-1].key
        if name == "running_var" or (name == "weight" and path[-2].key == "bn"):
            a = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            a = 0.1 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        return jnp.asarray(a, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, param_shapes(),
                                            is_leaf=lambda s: isinstance(s, tuple))


def demo_network(name: str, *, full: bool = False, seed: int = 0) -> Any:
    """Random-weight metric network ``name`` (inception, clip, arcface, lpips) in the form the
    loaders return: Inception and LPIPS at their real sizes, CLIP and ArcFace tiny unless
    ``full`` (ViT-B/32, iresnet50)."""
    if name == "inception":
        return _inception_params(seed)
    if name == "lpips":
        from jaxhead.models.lpips import param_shapes as lpips_shapes

        rng = np.random.default_rng(seed)
        shapes = lpips_shapes()  # He-normal AlexNet, non-negative lin (lpips.random_params)
        net = {n: {"weight": rng.standard_normal(s["weight"]) * np.sqrt(
                       2.0 / np.prod(s["weight"][:-1])),
                   "bias": 0.01 * rng.standard_normal(s["bias"])}
               for n, s in shapes["net"].items()}
        lin = {n: np.abs(rng.standard_normal(s)) / s[0] for n, s in shapes["lin"].items()}
        return jax.tree.map(lambda a: jax.numpy.asarray(a, jax.numpy.float32),
                            {"net": net, "lin": lin})
    if name == "arcface":
        from jaxhead.models import arcface

        cfg = arcface.IRESNET50 if full else arcface.ArcFaceConfig(**DEMO_ARCFACE)
        return arcface.random_params(cfg, seed)
    if name == "clip":
        from jaxhead.models import clip
        from jaxhead.models.clip_vision import CLIPVisionConfig

        cfg = clip.PRESETS["openai/clip-vit-base-patch32"] if full else clip.CLIPConfig(
            text=clip_text.CLIPTextConfig(**DEMO_CLIP),
            vision=CLIPVisionConfig(**DEMO_CLIP_VISION), projection_dim=32)
        rng = np.random.default_rng(seed)

        def leaf(path, sds):  # clip.random_params' rules, drawn on the host
            name = path[-1].key
            if name == "logit_scale":
                a = np.full(sds.shape, cfg.logit_scale_init_value)
            elif name == "scale":
                a = np.ones(sds.shape)
            else:
                a = 0.02 * rng.standard_normal(sds.shape)
            return jax.numpy.asarray(a, jax.numpy.float32)

        weights = jax.tree_util.tree_map_with_path(leaf, clip.expected_shapes(cfg))
        return clip.CLIPParams(config=cfg, weights=weights), DemoTokenizer(cfg.text.vocab_size)
    raise ValueError(f"unknown metric network {name!r}")
