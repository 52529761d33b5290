"""PanoHead in JAX: ``G, params = load_panohead(dir)``; ``G.mapping``; ``G.synthesis``.

``params`` is the Flax variables dict ``{"params": ..., "buffers": ...}``: trainable-capable
parameters under ``params``, the ``w_avg`` and ``noise_const`` buffers under ``buffers``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxhead.errors import DataError, MissingWeightsError
from jaxhead.models.panohead.generator import PanoHeadConfig, TriPlaneGenerator
from jaxhead.utils import params_io

__all__ = ["PanoHead", "PanoHeadConfig", "TriPlaneGenerator", "load_panohead", "save_panohead",
           "FORMAT"]

FORMAT = "jaxhead.panohead/1"
CONVERT_HINT = "python -m convert_weights.panohead SRC.pkl DST"
# the command for the released checkpoint (DST: where the loader looks)
RELEASED_CONVERT = "python -m convert_weights.panohead easy-khair-180-gpc0.8-trans10-025000.pkl DST"

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PanoHead:
    """A PanoHead generator: configuration + Flax module; every method is pure in ``params``."""

    config: PanoHeadConfig

    @functools.cached_property
    def module(self) -> TriPlaneGenerator:
        return TriPlaneGenerator(self.config)

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    # --- the jaxhead.generators.Generator3D interface -----------------------------------------

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def image_size(self) -> int:
        return self.config.img_resolution

    @property
    def camera_radius(self) -> float:
        return self.config.avg_camera_radius

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    @property
    def box_size(self) -> float:
        """Side of the cube (centred at the origin) the tri-grid spans: ``box_warp``."""
        return self.config.box_warp

    def representation(self, params: Params, ws: jax.Array, *, noise_mode: str = "const",
                       rng: jax.Array | None = None) -> jax.Array:
        """The tri-grid planes ``[N, T, T, 96 * depth]`` (:meth:`planes`)."""
        return self.planes(params, ws, noise_mode=noise_mode, rng=rng)

    def render(self, params: Params, ws: jax.Array, c: jax.Array, rep: jax.Array, *,
               noise_mode: str = "const", rng: jax.Array | None = None,
               deterministic: bool = False, background: str = "none",
               superresolution: bool = True) -> dict[str, jax.Array]:
        """:meth:`synthesis` from precomputed planes ``rep``."""
        return self.synthesis(params, ws, c, planes=rep, noise_mode=noise_mode, rng=rng,
                              deterministic=deterministic, background=background,
                              superresolution=superresolution)

    def feature_planes(self, rep: jax.Array) -> jax.Array:
        """Planes ``[N, T, T, 3 * C]`` -> ``[N, T, T, 3, C]`` (C = 32 * depth)."""
        return rep.reshape(rep.shape[:3] + (3, rep.shape[-1] // 3))

    def density(self, params: Params, ws: jax.Array, points: jax.Array, *,
                rep: jax.Array | None = None, noise_mode: str = "const") -> jax.Array:
        """Raw density σ (the decoder's output 0: no softplus, no tri-plane crop, as the
        official ``G.sample``) at world points ``[N, M, 3]`` -> ``[N, M]``. ``rep``: the
        precomputed planes of ``ws`` (:meth:`representation`), else computed here."""
        rep = self.representation(params, ws, noise_mode=noise_mode) if rep is None else rep
        sigma, _ = self.module.apply(params, rep, ws, points,
                                     method=TriPlaneGenerator.sample_points)
        return sigma

    def point_colors(self, params: Params, ws: jax.Array, points: jax.Array, *,
                     rep: jax.Array | None = None, noise_mode: str = "const") -> jax.Array:
        """Colour at world points ``[N, M, 3]`` -> ``[N, M, 3]`` (about [-1, 1]): the
        decoder's features through the raw ToRGB at ``ws[:, -1]``, as the raw image makes
        them from composited features."""
        rep = self.representation(params, ws, noise_mode=noise_mode) if rep is None else rep
        _, rgb = self.module.apply(params, rep, ws, points, colors=True,
                                   method=TriPlaneGenerator.sample_points)
        return rgb

    def save(self, directory: str | os.PathLike, params: Params,
             extra: dict[str, Any] | None = None) -> None:
        save_panohead(directory, self, params, extra)

    def init(self, rng: jax.Array, *, t_mapping: bool = False) -> Params:
        """Random parameters (PyTorch-like init: N(0, 1) raw weights, zero biases, affine bias 1).

        ``t_mapping=True`` adds the camera self-adaptation network (``params/t_mapping``,
        ``buffers/t_mapping/w_avg``), which only inversion uses (:meth:`camera_offset`).
        Note the random model renders little (zero noise strengths, zero biases); tests and demos
        perturb it, see :func:`jaxhead.models.panohead.demo.demo_params`.
        """
        z = jnp.zeros((1, self.config.z_dim), jnp.float32)
        c = jnp.zeros((1, self.config.c_dim), jnp.float32)
        out = dict(self.module.init({"params": rng}, z, c))
        if t_mapping:
            extra = self.module.init({"params": jax.random.fold_in(rng, 1)}, z, c,
                                     method=TriPlaneGenerator.camera_offset)
            out = {k: {**out.get(k, {}), **extra.get(k, {})} for k in ("params", "buffers")}
        return out

    def param_shapes(self, *, t_mapping: bool = False) -> Params:
        """Shapes/dtypes of :meth:`init`'s result, without computing anything."""
        return jax.eval_shape(functools.partial(self.init, t_mapping=t_mapping),
                              jax.random.key(0))

    @staticmethod
    def has_t_mapping(params: Params) -> bool:
        """Whether ``params`` carry the camera self-adaptation network ``t_mapping``."""
        return "t_mapping" in params.get("params", {})

    def camera_offset(self, params: Params, z: jax.Array, c: jax.Array,
                      truncation_psi: float = 1.0) -> jax.Array:
        """PanoHead's ``t_mapping``: z ``[N, z_dim]``, camera c ``[N, 25]`` -> translation
        offset ``[N, 3]`` (world units) that the official forward adds to ``c[:, [3, 7, 11]]``.

        Raises ``MissingWeightsError`` for generators converted without ``t_mapping``.
        """
        if not self.has_t_mapping(params):
            raise MissingWeightsError(
                "this PanoHead generator has no t_mapping (camera self-adaptation) weights, "
                "which inversion needs: it was converted before they were kept; reconvert the "
                f"official pickle: {CONVERT_HINT}")
        return self.module.apply(params, z, c, truncation_psi,
                                 method=TriPlaneGenerator.camera_offset)

    def mapping(self, params: Params, z: jax.Array, c: jax.Array, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> jax.Array:
        """z ``[N, z_dim]``, conditioning camera c ``[N, 25]`` -> ws ``[N, num_ws, w_dim]``."""
        return self.module.apply(params, z, c, truncation_psi, truncation_cutoff,
                                 method=TriPlaneGenerator.mapping)

    def planes(self, params: Params, ws: jax.Array, *, noise_mode: str = "const",
               rng: jax.Array | None = None) -> jax.Array:
        """ws -> tri-grid backbone output ``[N, T, T, 96 * depth]`` (NHWC)."""
        rngs = _rngs(rng, noise_mode, deterministic=True)
        return self.module.apply(params, ws, noise_mode, rngs=rngs,
                                 method=TriPlaneGenerator.planes)

    def synthesis(self, params: Params, ws: jax.Array, c: jax.Array, *,
                  noise_mode: str = "const", deterministic: bool = False,
                  rng: jax.Array | None = None, neural_rendering_resolution: int | None = None,
                  background: str = "network", planes: jax.Array | None = None,
                  superresolution: bool = True) -> dict[str, jax.Array]:
        """Render ws ``[N, num_ws, 512]`` from cameras c ``[N, 25]``.

        Args:
          noise_mode: backbone noise, ``"random"`` (needs ``rng``), ``"const"`` or ``"none"``.
          deterministic: stratified jitter 0.5 and ``u = linspace(0, 1, K)`` importance samples;
            otherwise ``rng`` drives both.
          background: ``"network"`` (PanoHead's background network), ``"none"`` (the official
            distillation renders without it) or ``"white"`` (none, raw RGB whitened by the
            accumulated opacity before the SR; the stylization code's inference renders).
          planes: reuse precomputed backbone planes (from :meth:`planes`).
          superresolution: False skips the SR network (no ``image`` in the result).
        Returns dict of NHWC arrays: ``image`` [N, 512, 512, 3] (about [-1, 1]), ``image_raw``
        [N, r, r, 3], ``image_depth`` [N, r, r, 1] (world units), ``image_mask`` [N, r, r, 1]
        (``acc * 1.002 - 0.001``), ``image_acc`` (accumulated opacity in [0, 1]),
        ``image_feature`` [N, r, r, 32], ``planes`` [N, T, T, 96 * depth].
        """
        res = neural_rendering_resolution or self.config.neural_rendering_resolution
        rngs = _rngs(rng, noise_mode, deterministic)
        if planes is None:
            return self.module.apply(params, ws, c, neural_rendering_resolution=res,
                                     noise_mode=noise_mode, deterministic=deterministic,
                                     background=background, superresolution=superresolution,
                                     rngs=rngs, method=TriPlaneGenerator.synthesis)
        out = self.module.apply(params, planes, ws, c, neural_rendering_resolution=res,
                                noise_mode=noise_mode, deterministic=deterministic,
                                background=background, superresolution=superresolution,
                                rngs=rngs, method=TriPlaneGenerator.render_planes)
        out["planes"] = planes
        return out


def _rngs(rng: jax.Array | None, noise_mode: str, deterministic: bool) -> dict[str, jax.Array]:
    needs_rng = noise_mode == "random" or not deterministic
    if rng is None:
        if needs_rng:
            raise ValueError("pass rng=key for noise_mode='random' or deterministic=False")
        return {}
    k_noise, k_render = jax.random.split(rng)
    return {"noise": k_noise, "render": k_render}


def save_panohead(directory: str | os.PathLike, G: PanoHead, params: Params,
                  extra: dict[str, Any] | None = None) -> None:
    """Write ``params`` (variables dict) + config in the format :func:`load_panohead` reads."""
    cfg = {"format": FORMAT, "panohead": G.config.to_dict(), **(extra or {})}
    params_io.save_params(directory, jax.device_get(params), cfg)


def load_panohead(directory: str | os.PathLike, *, verify: bool = True
                  ) -> tuple[PanoHead, Params]:
    """Load a converted generator directory (``params.safetensors`` + ``config.json``).

    Returns ``(G, params)`` with params as jnp arrays; the parameter tree is checked against the
    configuration and mismatches are reported by name. ``verify`` checks the content hash and
    finiteness (:func:`jaxhead.utils.params_io.load_params`). Raises ``MissingWeightsError`` /
    ``DataError`` naming the directory.
    """
    flat_params, cfg = params_io.load_params(directory, what="PanoHead generator",
                                             convert_hint=CONVERT_HINT, verify=verify)
    where = os.fspath(directory)
    if cfg.get("format") != FORMAT or not isinstance(cfg.get("panohead"), dict):
        raise DataError(f"{where!r}: config.json format is {cfg.get('format')!r}, expected "
                        f"{FORMAT!r} (convert it with: {CONVERT_HINT})")
    with params_io.data_errors(f"{where}/config.json"):
        G = PanoHead(PanoHeadConfig.from_dict(cfg["panohead"]))
    # Generators converted before t_mapping was kept load without it (inversion then refuses).
    expected = G.param_shapes(t_mapping=PanoHead.has_t_mapping(flat_params))
    params_io.check_tree(flat_params, expected, what=f"PanoHead parameters in {where!r}")
    return G, jax.tree.map(jnp.asarray, flat_params)

