"""The frozen Stable Diffusion teacher: one classifier-free-guidance UNet (+ ControlNet) query.

    teacher, tparams = load_teacher("converted", controlnets=("depth", "edge"))
    out = teacher.jit_eps(tparams, noisy_latents, t, text_emb, neg_emb, control,
                          controlnet=("depth", "edge"), control_scale=1.0, guidance_scale=7.5)
    out.eps_uncond, out.eps_cond, out.eps        # [B, h, w, 4] float32 each

:meth:`Teacher.eps` is a pure function of (params, arrays): call it inside a jitted training step
(also under ``jax.grad``). The teacher is frozen and never differentiated: its inputs pass through
``stop_gradient``, so no backward pass through the UNet is built; the distillation gradient is
formed from its outputs by the caller.

Batching: sample ``i`` of the batch uses ControlNet ``controlnet[i]`` (a name, or ``None`` for
none), e.g. ``("depth", "edge")`` for a 2x2-grid image with the depth ControlNet and a single view
with the edge ControlNet in the same step. The assignment is static (part of the compiled
program); each ControlNet runs once on its samples' CFG batch, and the UNet runs once on the whole
concatenated CFG batch ``[uncond (B); cond (B)]``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.errors import DataError
from jaxhead.models import controlnet as controlnet_lib
from jaxhead.models import unet as unet_lib
from jaxhead.models.controlnet import ControlNetModel
from jaxhead.models.unet import UNet2DConditionModel, skip_shapes
from jaxhead.utils.compile import jit

Array = jax.Array
ControlNetAssignment = str | Sequence[str | None] | None


class TeacherOutput(NamedTuple):
    """Noise predictions [B, h, w, 4] float32: unconditional (negative prompt), conditional, and
    the guided ``eps_uncond + guidance_scale * (eps_cond - eps_uncond)``."""

    eps_uncond: Array
    eps_cond: Array
    eps: Array


@dataclasses.dataclass(frozen=True)
class Teacher:
    """Frozen UNet + named ControlNets. Params: ``{"unet": ..., "controlnets": {name: ...}}``."""

    unet: UNet2DConditionModel
    controlnets: tuple[tuple[str, ControlNetModel], ...] = ()

    @property
    def controlnet_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.controlnets)

    def _assignment(self, controlnet: ControlNetAssignment, batch: int) -> tuple[str | None, ...]:
        ids = ((controlnet,) * batch if controlnet is None or isinstance(controlnet, str)
               else tuple(controlnet))
        if len(ids) != batch:
            raise ValueError(f"controlnet assignment has {len(ids)} entries for batch {batch}")
        unknown = sorted({n for n in ids if n is not None} - set(self.controlnet_names))
        if unknown:
            raise ValueError(f"unknown ControlNet(s) {unknown}; this teacher has "
                             f"{list(self.controlnet_names)}")
        return ids

    def eps(self, params: Mapping[str, Any], noisy_latents: Array, t: Array, text_emb: Array,
            neg_emb: Array, control: Array | None = None, *,
            controlnet: ControlNetAssignment = None, control_scale: Array | float = 1.0,
            guidance_scale: Array | float = 7.5) -> TeacherOutput:
        """One CFG teacher query.

        Args:
          params: ``{"unet": ..., "controlnets": {name: ...}}``.
          noisy_latents: x_t [B, h, w, 4] (scaled latents, NHWC).
          t: int/float timesteps, scalar or [B].
          text_emb, neg_emb: prompt / negative-prompt embeddings [B or 1, 77, D].
          control: control images [B, 8h, 8w, 3] in [0, 1]; required if any sample uses a
            ControlNet (rows of samples without one are ignored).
          controlnet: static ControlNet name per sample (or one name / None for all).
          control_scale: ControlNet conditioning scale, scalar or [B].
          guidance_scale: CFG scale for ``eps``, scalar or [B].
        """
        sg = jax.lax.stop_gradient
        x = sg(noisy_latents)
        b = x.shape[0]
        ids = self._assignment(controlnet, b)
        t = jnp.broadcast_to(jnp.asarray(sg(t)).reshape(-1), (b,))
        cond = jnp.broadcast_to(sg(text_emb), (b,) + text_emb.shape[1:])
        uncond = jnp.broadcast_to(sg(neg_emb), (b,) + neg_emb.shape[1:])
        # CFG batch: [uncond samples; cond samples]
        x2, t2, ctx2 = (jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                        jnp.concatenate([uncond, cond]))
        down, mid = None, None
        if any(n is not None for n in ids):
            if control is None:
                raise ValueError(f"controlnet={ids} needs a control image")
            control = sg(control)
            scale = jnp.broadcast_to(jnp.asarray(sg(control_scale), jnp.float32).reshape(-1),
                                     (b,))
            down, mid = self._controlnet_residuals(params["controlnets"], ids, x2, t2, ctx2,
                                                   jnp.concatenate([control, control]),
                                                   jnp.concatenate([scale, scale]))
        eps = self.unet.apply({"params": params["unet"]}, x2, t2, ctx2, down, mid)
        eps_uncond, eps_cond = eps[:b], eps[b:]
        g = jnp.asarray(guidance_scale, jnp.float32)
        g = g.reshape(-1, 1, 1, 1) if g.ndim else g
        return TeacherOutput(eps_uncond, eps_cond, eps_uncond + g * (eps_cond - eps_uncond))

    def _controlnet_residuals(self, cn_params: Mapping[str, Any], ids: tuple[str | None, ...],
                              x2: Array, t2: Array, ctx2: Array, control2: Array, scale2: Array
                              ) -> tuple[list[Array], Array]:
        """Residuals for the CFG batch: each ControlNet on its rows, zeros for rows without."""
        b = len(ids)
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(ids):
            if n is not None:
                groups.setdefault(n, []).append(i)
        modules = dict(self.controlnets)
        if len(groups) == 1 and len(next(iter(groups.values()))) == b:  # one ControlNet for all
            name = next(iter(groups))
            return modules[name].apply({"params": cn_params[name]}, x2, t2, ctx2, control2,
                                       scale2)
        h, w = x2.shape[1:3]
        cfg = self.unet.config
        down = [jnp.zeros(s, jnp.float32) for s in skip_shapes(cfg, 2 * b, h, w)]
        mid_shape = (2 * b,) + down[-1].shape[1:3] + (cfg.block_out_channels[-1],)
        mid = jnp.zeros(mid_shape, jnp.float32)
        for name, rows in groups.items():
            idx = np.array(rows + [r + b for r in rows])
            d, m = modules[name].apply({"params": cn_params[name]}, x2[idx], t2[idx], ctx2[idx],
                                       control2[idx], scale2[idx])
            down = [acc.at[idx].set(r) for acc, r in zip(down, d, strict=True)]
            mid = mid.at[idx].set(m)
        return down, mid

    @functools.cached_property
    def jit_eps(self) -> Any:
        """``jax.jit(self.eps)`` with ``controlnet`` static (compiled once per assignment and
        input shapes)."""
        return jit(self.eps, static_argnames=("controlnet",))


def load_teacher(root: str | os.PathLike, *,
                 controlnets: Sequence[str] | Mapping[str, str | os.PathLike] = (),
                 dtype: Any = jnp.float32, attention_impl: str = "auto", verify: bool = True
                 ) -> tuple[Teacher, dict[str, Any]]:
    """Teacher from a converted folder: ``root/unet`` and ``root/controlnet_<name>`` (names), or
    ``{name: path}``. ``dtype`` bfloat16 casts the frozen params and runs activations in bf16
    (outputs stay float32). ``verify``: check each file's content hash and finiteness. Missing
    or bad files raise ``MissingWeightsError`` / ``DataError`` naming them."""
    root = Path(root)
    if not isinstance(controlnets, Mapping):
        controlnets = {n: root / f"controlnet_{n}" for n in controlnets}
    unet, unet_params = unet_lib.load(root / "unet", dtype=dtype, attention_impl=attention_impl,
                                      verify=verify)
    mods, cn_params = [], {}
    for name, path in controlnets.items():
        m, p = controlnet_lib.load(path, dtype=dtype, attention_impl=attention_impl,
                                   verify=verify)
        if m.config.block_out_channels != unet.config.block_out_channels:
            raise DataError(f"ControlNet {name!r} ({os.fspath(path)}) does not match the UNet's "
                            "block_out_channels")
        mods.append((name, m))
        cn_params[name] = p
    return Teacher(unet, tuple(mods)), {"unet": unet_params, "controlnets": cn_params}
