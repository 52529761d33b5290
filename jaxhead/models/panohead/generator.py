"""PanoHead's ``TriPlaneGenerator`` (inference path) as a Flax linen module, NHWC.

Submodule names mirror the PyTorch attributes (``backbone.mapping``, ``backbone.synthesis``,
``decoder``, ``torgb``, ``bcg_synthesis``, ``superresolution``) so that converted parameters
keep the official names (``.`` becomes ``/``; ``decoder.net.0`` becomes ``decoder/net_0``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxhead.models.panohead import renderer
from jaxhead.models.stylegan2 import (
    FullyConnectedLayer,
    MappingNetwork,
    SynthesisBlock,
    SynthesisNetwork,
    ToRGBLayer,
    synthesis_num_ws,
)
from jaxhead.ops.resize import resize_bilinear

BACKGROUNDS = ("network", "none", "white")


@dataclasses.dataclass(frozen=True)
class PanoHeadConfig:
    """Constructor arguments of the official ``TriPlaneGenerator`` that matter at inference."""

    z_dim: int = 512
    c_dim: int = 25
    w_dim: int = 512
    img_resolution: int = 512
    mapping_layers: int = 2
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None  # backbone and background network
    sr_conv_clamp: float | None = 256.0  # 256 when sr_num_fp16_res > 0 (kept on in fp32)
    triplane_size: int = 256
    triplane_depth: int = 3
    decoder_lr_mul: float = 1.0
    decoder_activation: str = "none"
    use_torgb_raw: bool = True
    use_background: bool = True
    sr_antialias: bool = True
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    avg_camera_radius: float = 2.7
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
    superresolution_noise_mode: str = "none"
    neural_rendering_resolution: int = 64
    # widths of the SR network's 256 px and 512 px blocks: fixed at (256, 128) in the official
    # SuperresolutionHybrid8XDC (every released checkpoint); smaller only for jaxhead's demo
    sr_channels: tuple[int, int] = (256, 128)

    @property
    def num_ws(self) -> int:
        return synthesis_num_ws(self.triplane_size)

    @property
    def sr_input_resolution(self) -> int:
        return 128

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["avg_camera_pivot"] = list(self.avg_camera_pivot)
        d["sr_channels"] = list(self.sr_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PanoHeadConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown PanoHead config keys: {unknown}")
        d = dict(d)
        if "avg_camera_pivot" in d:
            d["avg_camera_pivot"] = tuple(float(v) for v in d["avg_camera_pivot"])
        if "sr_channels" in d:
            try:
                d["sr_channels"] = tuple(int(v) for v in d["sr_channels"])
            except (TypeError, ValueError):
                d["sr_channels"] = ()
            if len(d["sr_channels"]) != 2:
                raise ValueError("PanoHead config key sr_channels must be two integers "
                                 "(the SR widths at 256 and 512 px)")
        return cls(**d)

    @classmethod
    def from_official(cls, init_kwargs: dict[str, Any],
                      neural_rendering_resolution: int = 64) -> PanoHeadConfig:
        """From the ``init_kwargs`` stored in an official pickle (or the fixture's config.json)."""
        k = dict(init_kwargs)
        rk = dict(k.get("rendering_kwargs", {}))
        sr_module = rk.get("superresolution_module", "")
        if not sr_module.endswith("SuperresolutionHybrid8XDC"):
            raise ValueError(f"unsupported superresolution_module {sr_module!r} "
                             "(only SuperresolutionHybrid8XDC is ported)")
        if k.get("img_resolution", 512) != 512:
            raise ValueError("SuperresolutionHybrid8XDC requires img_resolution 512")
        if rk.get("clamp_mode", "softplus") != "softplus":
            raise ValueError("only clamp_mode 'softplus' is supported (MipRayMarcher2)")
        if rk.get("disparity_space_sampling", False):
            raise ValueError("disparity_space_sampling is not supported")
        if rk.get("ray_start") == "auto":
            raise ValueError("ray_start/ray_end 'auto' is not supported")
        if rk.get("decoder_activation", "none") not in ("none", "sigmoid"):
            raise ValueError(f"decoder_activation {rk['decoder_activation']!r} not supported")
        return cls(
            z_dim=int(k["z_dim"]), c_dim=int(k["c_dim"]), w_dim=int(k["w_dim"]),
            img_resolution=int(k.get("img_resolution", 512)),
            mapping_layers=int(k.get("mapping_kwargs", {}).get("num_layers", 8)),
            channel_base=int(k.get("channel_base", 32768)),
            channel_max=int(k.get("channel_max", 512)),
            conv_clamp=k.get("conv_clamp", 256),
            sr_conv_clamp=256.0 if int(k.get("sr_num_fp16_res", 0)) > 0 else None,
            triplane_size=int(rk["triplane_size"]),
            triplane_depth=int(rk.get("triplane_depth", 1)),
            decoder_lr_mul=float(rk.get("decoder_lr_mul", 1.0)),
            decoder_activation=rk.get("decoder_activation", "none"),
            use_torgb_raw=bool(rk.get("use_torgb_raw", False)),
            use_background=bool(rk.get("use_background", False)),
            sr_antialias=bool(rk.get("sr_antialias", True)),
            c_scale=float(rk.get("c_scale", 1.0)),
            c_gen_conditioning_zero=bool(rk.get("c_gen_conditioning_zero", False)),
            depth_resolution=int(rk["depth_resolution"]),
            depth_resolution_importance=int(rk["depth_resolution_importance"]),
            ray_start=float(rk["ray_start"]), ray_end=float(rk["ray_end"]),
            box_warp=float(rk.get("box_warp", 1.0)),
            avg_camera_radius=float(rk.get("avg_camera_radius", 2.7)),
            avg_camera_pivot=tuple(float(v) for v in rk.get("avg_camera_pivot", (0, 0, 0.2))),
            superresolution_noise_mode=rk.get("superresolution_noise_mode", "none"),
            neural_rendering_resolution=int(neural_rendering_resolution),
        )


class OSGDecoder(nn.Module):
    """Mean tri-grid feature [.., 32] -> FC(64) softplus -> FC(1 + 32): (rgb, sigma)."""

    n_features: int = 32
    lr_mul: float = 1.0
    activation: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = FullyConnectedLayer(self.n_features, 64, lr_multiplier=self.lr_mul, name="net_0")(x)
        h = jax.nn.softplus(h)
        h = FullyConnectedLayer(64, 1 + 32, lr_multiplier=self.lr_mul, name="net_2")(h)
        rgb, sigma = h[..., 1:], h[..., :1]
        if self.activation == "sigmoid":
            rgb = jax.nn.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        return rgb, sigma


class SuperresolutionHybrid8XDC(nn.Module):
    """rgb [N, r, r, 3] + features [N, r, r, 32] -> 512 px image (two synthesis blocks, of
    ``widths`` channels at 256 and 512 px)."""

    channels: int = 32
    w_dim: int = 512
    antialias: bool = True
    conv_clamp: float | None = 256.0
    widths: tuple[int, int] = (256, 128)

    @nn.compact
    def __call__(self, rgb: jax.Array, x: jax.Array, ws: jax.Array,
                 noise_mode: str = "none") -> jax.Array:
        ws = jnp.repeat(ws[:, -1:], 3, axis=1)
        if x.shape[1] != 128:
            x = resize_bilinear(x, 128, antialias=self.antialias)
            rgb = resize_bilinear(rgb, 128, antialias=self.antialias)
        c0, c1 = self.widths
        x, rgb = SynthesisBlock(self.channels, c0, self.w_dim, 256, 3, False,
                                conv_clamp=self.conv_clamp, name="block0")(x, rgb, ws, noise_mode)
        x, rgb = SynthesisBlock(c0, c1, self.w_dim, 512, 3, True,
                                conv_clamp=self.conv_clamp, name="block1")(x, rgb, ws, noise_mode)
        return rgb


class StyleGAN2Backbone(nn.Module):
    cfg: PanoHeadConfig

    def setup(self) -> None:
        c = self.cfg
        self.synthesis = SynthesisNetwork(c.w_dim, c.triplane_size, 32 * 3 * c.triplane_depth,
                                          c.channel_base, c.channel_max, c.conv_clamp)
        self.mapping = MappingNetwork(c.z_dim, c.c_dim, c.w_dim, c.num_ws, c.mapping_layers)


class TriPlaneGenerator(nn.Module):
    """The PanoHead generator. Call its methods through ``apply(..., method=...)``."""

    cfg: PanoHeadConfig

    def setup(self) -> None:
        c = self.cfg
        self.backbone = StyleGAN2Backbone(c)
        self.decoder = OSGDecoder(32, c.decoder_lr_mul, c.decoder_activation)
        if c.use_torgb_raw:
            self.torgb = ToRGBLayer(32, 3, c.w_dim)
        if c.use_background:
            self.bcg_synthesis = SynthesisNetwork(c.w_dim, c.sr_input_resolution, 32,
                                                  c.channel_base // 2, c.channel_max,
                                                  c.conv_clamp)
        self.superresolution = SuperresolutionHybrid8XDC(32, c.w_dim, c.sr_antialias,
                                                         c.sr_conv_clamp, tuple(c.sr_channels))
        # Camera self-adaptation (z, c -> translation offset). Only touched by camera_offset,
        # so ``init`` (via __call__) leaves it out; see PanoHead.init(t_mapping=...).
        self.t_mapping = MappingNetwork(c.z_dim, c.c_dim, 3, 1, c.mapping_layers,
                                        lr_multiplier=1.0, last_activation="linear")

    def mapping(self, z: jax.Array, c: jax.Array, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> jax.Array:
        """z ``[N, z_dim]``, c ``[N, 25]`` -> ws ``[N, num_ws, w_dim]``."""
        if self.cfg.c_gen_conditioning_zero:
            c = jnp.zeros_like(c)
        return self.backbone.mapping(z, c * self.cfg.c_scale, truncation_psi, truncation_cutoff)

    def camera_offset(self, z: jax.Array, c: jax.Array, truncation_psi: float = 1.0
                      ) -> jax.Array:
        """``t_mapping(z, c)``: camera translation offset ``[N, 3]`` (the official
        ``G.t_mapping`` called directly, as the projector does: no ``c_scale``)."""
        return self.t_mapping(z, c, truncation_psi)[:, 0]

    def planes(self, ws: jax.Array, noise_mode: str = "const") -> jax.Array:
        """ws -> backbone tri-grid features ``[N, T, T, 96 * depth]`` (NHWC)."""
        return self.backbone.synthesis(ws, noise_mode)

    def render_planes(self, planes: jax.Array, ws: jax.Array, c: jax.Array, *,
                      neural_rendering_resolution: int, noise_mode: str = "const",
                      deterministic: bool = False, background: str = "network",
                      superresolution: bool = True) -> dict[str, jax.Array]:
        """Volume-render tri-grid ``planes`` from cameras ``c [N, 25]``, then super-resolve
        (``superresolution=False`` skips the SR network: no ``image`` in the result).

        ``background``: ``"network"`` composites the background synthesis network (PanoHead);
        ``"none"`` renders without it; ``"white"`` renders without it and whitens the raw RGB
        where the head is transparent before the SR (the stylization code's inference mode).
        """
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        cfg = self.cfg
        res = neural_rendering_resolution
        n = ws.shape[0]
        origins, dirs = renderer.ray_sampler(c[:, :16].reshape(-1, 4, 4),
                                             c[:, 16:25].reshape(-1, 3, 3), res)
        volumes = renderer.planes_to_volumes(planes, cfg.triplane_depth)
        feat, depth, acc = renderer.render(
            volumes, self.decoder, origins, dirs, ray_start=cfg.ray_start, ray_end=cfg.ray_end,
            depth_resolution=cfg.depth_resolution,
            depth_resolution_importance=cfg.depth_resolution_importance, box_warp=cfg.box_warp,
            rng=None if deterministic else self.make_rng("render"))
        feature_image = feat.reshape(n, res, res, -1)
        depth_image = depth.reshape(n, res, res, 1)
        acc_image = acc.reshape(n, res, res, 1)
        if cfg.decoder_activation == "sigmoid":
            feature_image = feature_image * 2 - 1
        if cfg.use_background and background == "network":
            nb = self.bcg_synthesis.num_ws
            ws_bcg = ws[:, :nb]
            if ws_bcg.shape[1] < nb:
                pad = jnp.repeat(ws_bcg[:, -1:], nb - ws_bcg.shape[1], axis=1)
                ws_bcg = jnp.concatenate([ws_bcg, pad], axis=1)
            bcg = self.bcg_synthesis(ws_bcg, noise_mode)
            bcg = resize_bilinear(bcg, res, antialias=cfg.sr_antialias)
            feature_image = feature_image + (1 - acc_image) * bcg
        if cfg.use_torgb_raw:
            rgb_image = self.torgb(feature_image, ws[:, -1])
        else:
            rgb_image = feature_image[..., :3]
        if background == "white":
            rgb_image = rgb_image * acc_image + (1 - acc_image)
        out = {"image_raw": rgb_image, "image_depth": depth_image,
                "image_mask": acc_image * (1 + 2 * 0.001) - 0.001, "image_acc": acc_image,
                "image_feature": feature_image}
        if superresolution:
            out["image"] = self.superresolution(rgb_image, feature_image, ws,
                                                cfg.superresolution_noise_mode)
        return out

    def sample_points(self, planes: jax.Array, ws: jax.Array, points: jax.Array, *,
                      colors: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """Raw decoder density and (optionally) colour at world points, as the official
        ``TriPlaneGenerator.sample_mixed`` (``run_model``: no softplus, no tri-plane crop).

        planes ``[N, T, T, 96 * depth]``, ws ``[N, num_ws, w_dim]``, points ``[N, M, 3]`` ->
        (sigma ``[N, M]``, rgb ``[N, M, 3]`` through the raw ToRGB at ``ws[:, -1]`` (about
        [-1, 1]) or None)."""
        cfg = self.cfg
        volumes = renderer.planes_to_volumes(planes, cfg.triplane_depth)
        feats = renderer.sample_from_planes(volumes, points, cfg.box_warp).mean(axis=1)
        feat, sigma = self.decoder(feats)
        if not colors:
            return sigma[..., 0], None
        if cfg.decoder_activation == "sigmoid":
            feat = feat * 2 - 1
        if cfg.use_torgb_raw:  # a 1x1 conv: the points as a [N, M, 1] image
            rgb = self.torgb(feat[:, :, None, :], ws[:, -1])[:, :, 0]
        else:
            rgb = feat[..., :3]
        return sigma[..., 0], rgb

    def synthesis(self, ws: jax.Array, c: jax.Array, *, neural_rendering_resolution: int,
                  noise_mode: str = "const", deterministic: bool = False,
                  background: str = "network", superresolution: bool = True
                  ) -> dict[str, jax.Array]:
        planes = self.planes(ws, noise_mode)
        out = self.render_planes(planes, ws, c,
                                 neural_rendering_resolution=neural_rendering_resolution,
                                 noise_mode=noise_mode, deterministic=deterministic,
                                 background=background, superresolution=superresolution)
        out["planes"] = planes
        return out

    def __call__(self, z: jax.Array, c: jax.Array) -> jax.Array:
        """Touches every submodule once (used by ``init``); returns the SR image."""
        ws = self.mapping(z, c)
        planes = self.planes(ws, "const")
        r = self.cfg.sr_input_resolution
        n = z.shape[0]
        feats = jnp.zeros((n, r, r, 32), jnp.float32)
        self.decoder(feats[:, 0, :2])
        rgb = self.torgb(feats, ws[:, -1]) if self.cfg.use_torgb_raw else feats[..., :3]
        if self.cfg.use_background:
            nb = self.bcg_synthesis.num_ws
            wb = jnp.concatenate([ws, jnp.repeat(ws[:, -1:], max(0, nb - ws.shape[1]), 1)], 1)
            self.bcg_synthesis(wb[:, :nb], "const")
        del planes
        return self.superresolution(rgb, feats, ws, "none")
