"""The demo's analytic teacher: a Gaussian over latents whose score is exact, so that the demo
visibly stylizes in minutes with no diffusion weights at all.

Its latent space is :class:`PoolingVAE`'s, 8x8 average colours (a random-weight VAE would
hide colour behind a random map). With the prompt, clean latents are ``z0 ~ N(mu, sigma^2 I)``,
``mu`` the encoding of a target palette image made in code (:func:`palette_image`); without it
(the negative prompt), ``z0 ~ N(0, I)``. For ``x_t = sqrt(abar) z0 +
sqrt(1 - abar) eps`` each gives the exact noise prediction

    eps(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar),

so classifier-free guidance, LD, rank weighting, mirror and grid scores run unchanged and
drive every view's latents towards the palette's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.teacher import TeacherOutput

Array = jax.Array

# The demo prompt's target: a zombie palette, sickly green above fading to darker green below.
PALETTE_TOP = (0.30, 0.85, 0.30)
PALETTE_BOTTOM = (0.20, 0.55, 0.15)


def palette_image(size: int) -> np.ndarray:
    """The target palette ``[size, size, 3]`` in [-1, 1]: a vertical two-colour gradient with a
    faint diagonal stripe texture."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    top, bottom = np.asarray(PALETTE_TOP, np.float32), np.asarray(PALETTE_BOTTOM, np.float32)
    img = (1 - y)[..., None] * top + y[..., None] * bottom
    img = img * (1 + 0.08 * np.sin(2 * np.pi * 12 * (x + y)))[..., None]
    return np.clip(img, 0, 1) * 2 - 1


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianTeacher:
    """Drop-in for :class:`jaxhead.teacher.Teacher` (same ``eps`` signature; control images
    are accepted and ignored). Params: ``{"mu": [1, h, w, 4]}``."""

    alphas_cumprod: np.ndarray  # [T] float32
    sigma: float = 0.2  # narrow: LD's fixed point (where eps_c = eps_u) is ~1.1 x mu
    controlnet_names: tuple[str, ...] = ()

    def eps(self, params: dict[str, Any], noisy_latents: Array, t: Array, text_emb: Array,
            neg_emb: Array, control: Array | None = None, *, controlnet: Any = None,
            control_scale: Any = 1.0, guidance_scale: Any = 7.5) -> TeacherOutput:
        del text_emb, neg_emb, control, controlnet, control_scale
        sg = jax.lax.stop_gradient
        x = sg(noisy_latents)
        ab = jnp.asarray(self.alphas_cumprod)[jnp.asarray(t).reshape(-1)]
        ab = jnp.broadcast_to(ab, (x.shape[0],)).reshape(-1, 1, 1, 1)

        def eps_of(mean, std):
            return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mean) / (ab * std**2 + 1 - ab)

        eu = eps_of(0.0, 1.0)
        ec = eps_of(sg(params["mu"]), self.sigma)
        g = jnp.asarray(guidance_scale, jnp.float32)
        g = g.reshape(-1, 1, 1, 1) if g.ndim else g
        return TeacherOutput(eu, ec, eu + g * (ec - eu))


@dataclasses.dataclass(frozen=True)
class PoolingVAEConfig:
    """The fields of :class:`jaxhead.models.vae.VAEConfig` that the step reads."""

    downscale: int = 8
    scaling_factor: float = 1.0
    shift_factor: float | None = None
    latent_channels: int = 4


class _Posterior:
    """Deterministic "posterior": ``sample`` and ``mode`` are the encoding itself."""

    def __init__(self, z: Array) -> None:
        self.z = z

    def mode(self) -> Array:
        return self.z

    def sample(self, key: Array) -> Array:
        del key
        return self.z


jax.tree_util.register_pytree_node(_Posterior, lambda p: ((p.z,), None),
                                   lambda _, zs: _Posterior(*zs))


class PoolingVAE(nn.Module):
    """The demo's parameter-free stand-in for the SD VAE: a latent pixel is the average RGB of
    its 8x8 block and their mean (4 channels, about [-1, 1]); decoding repeats the RGB. Same
    ``encode`` / ``decode`` interface as :class:`jaxhead.models.vae.AutoencoderKL`."""

    config: PoolingVAEConfig = PoolingVAEConfig()
    remat: bool = False

    def encode(self, images: Array) -> _Posterior:
        s = self.config.downscale
        b, h, w, c = images.shape
        rgb = images.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))
        return _Posterior(jnp.concatenate([rgb, rgb.mean(-1, keepdims=True)], axis=-1))

    def decode(self, z: Array) -> Array:
        s = self.config.downscale
        return jnp.repeat(jnp.repeat(z[..., :3], s, axis=1), s, axis=2)

    def __call__(self, images: Array) -> Array:
        return self.decode(self.encode(images).mode())


# The views at which the demo's restyle is measured: yaw (radians; front, both sides, back).
MEASURE_YAWS = (0.0, 0.8, -0.8, 2.5)


def palette_rgb() -> np.ndarray:
    """Mean RGB ``[3]`` (in [-1, 1]) of :func:`palette_image`: where the demo drives colours."""
    return palette_image(64).reshape(-1, 3).mean(0)


def head_colours(G: Any, frozen: dict[str, Any], trained: dict[str, Any], ws: Array
                 ) -> tuple[Array, Array]:
    """Opacity-weighted mean RGB ``[N, len(MEASURE_YAWS), 3]`` (in [-1, 1]) of each identity
    (``ws [N, num_ws, w_dim]``) rendered at :data:`MEASURE_YAWS` (pitch 0, no background, const
    noise) by the frozen and by the trained generator variables."""
    from jaxhead import camera
    from jaxhead.ops.resize import resize_bilinear

    nv = len(MEASURE_YAWS)
    cams = camera.make_camera(jnp.asarray(MEASURE_YAWS), jnp.zeros(nv), radius=G.camera_radius)
    wsr = jnp.repeat(ws, nv, axis=0)
    cs = jnp.tile(cams, (ws.shape[0], 1))

    def colour(params):
        rep = G.representation(params, wsr, noise_mode="const")
        r = G.render(params, wsr, cs, rep, noise_mode="const", deterministic=True,
                     background="none")
        m = resize_bilinear(r["image_acc"], r["image"].shape[1], align_corners=False)
        rgb = (r["image"] * m).sum((1, 2)) / (m.sum((1, 2)) + 1e-6)
        return rgb.reshape(ws.shape[0], nv, 3)

    return colour(frozen), colour(trained)


def toward_palette(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """How far each colour moved towards the palette's mean colour, as a fraction of the way
    (``[..., 3] -> [...]``: 0 unchanged or sideways, 1 arrived, > 1 went beyond it, < 0 away)."""
    to = palette_rgb() - before
    return ((after - before) * to).sum(-1) / (to * to).sum(-1)
