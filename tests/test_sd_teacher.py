"""The CFG teacher call against a PyTorch (diffusers) reference computation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch

from jaxhead.models import controlnet as cn_lib
from jaxhead.models import unet as unet_lib
from jaxhead.teacher import Teacher

NAMES = ("depth", "edge")


@functools.cache
def _teacher(dtype=jnp.float32):
    tu = T.torch_unet("teacher")
    unet = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_diffusers(dict(tu.config)),
                                         dtype=dtype)
    params = {"unet": unet_lib.convert(T.state_dict(tu), dict(tu.config)), "controlnets": {}}
    cns = []
    for name, seed in zip(NAMES, (2, 5), strict=True):
        tc = T.torch_controlnet(seed, "teacher")
        cfg = dict(tc.config)
        cns.append((name, cn_lib.ControlNetModel(cn_lib.ControlNetConfig.from_diffusers(cfg),
                                                 dtype=dtype)))
        params["controlnets"][name] = cn_lib.convert(T.state_dict(tc), cfg)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return Teacher(unet, tuple(cns)), params


def _inputs(b: int, seed: int):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return dict(noisy_latents=f(b, 16, 16, 4), t=np.array([900, 35, 500][:b]),
                text_emb=f(b, 7, 32), neg_emb=f(1, 7, 32),
                control=rng.uniform(0, 1, (b, 32, 32, 3)).astype(np.float32))


def _torch_reference(inp, assignment, control_scale, guidance):
    """Per sample: CFG batch [neg; text], ControlNet (if any) on both halves, then the UNet."""
    tu = T.torch_unet("teacher")
    cns = {n: T.torch_controlnet(s, "teacher") for n, s in zip(NAMES, (2, 5), strict=True)}
    out = {"eps_uncond": [], "eps_cond": [], "eps": []}
    for i, name in enumerate(assignment):
        x = torch.from_numpy(T.nchw(inp["noisy_latents"][i:i + 1])).repeat(2, 1, 1, 1)
        t = torch.tensor([inp["t"][i]] * 2)
        ctx = torch.from_numpy(np.concatenate([inp["neg_emb"], inp["text_emb"][i:i + 1]]))
        with torch.no_grad():
            kw = {}
            if name is not None:
                c = torch.from_numpy(T.nchw(inp["control"][i:i + 1])).repeat(2, 1, 1, 1)
                d, m = cns[name](x, t, ctx, c, conditioning_scale=float(control_scale[i]),
                                 return_dict=False)
                kw = dict(down_block_additional_residuals=d, mid_block_additional_residual=m)
            eps = tu(x, t, ctx, **kw).sample.numpy()
        u, c = T.nhwc(eps[:1]), T.nhwc(eps[1:])
        out["eps_uncond"].append(u)
        out["eps_cond"].append(c)
        out["eps"].append(u + guidance[i] * (c - u))
    return {k: np.concatenate(v) for k, v in out.items()}


def test_teacher_mixed_controlnets_matches_torch():
    """Batch of 3: depth ControlNet, edge ControlNet, no ControlNet; per-sample scales."""
    teacher, params = _teacher()
    inp = _inputs(3, seed=0)
    assignment = ("depth", "edge", None)
    scale = np.array([1.0, 0.6, 1.0], np.float32)
    guidance = np.array([7.5, 3.0, 1.0], np.float32)
    out = teacher.jit_eps(params, **inp, controlnet=assignment, control_scale=scale,
                          guidance_scale=guidance)
    ref = _torch_reference(inp, assignment, scale, guidance)
    for k in ("eps_uncond", "eps_cond"):
        assert getattr(out, k).shape == (3, 16, 16, 4)
        assert T.max_err(getattr(out, k), ref[k]) <= T.TOL, k
    assert T.rel_err(out.eps, ref["eps"]) <= T.TOL
    # new values, same shapes and assignment: no retrace
    inp2 = _inputs(3, seed=1)
    out2 = teacher.jit_eps(params, **inp2, controlnet=assignment, control_scale=scale,
                           guidance_scale=guidance)
    assert teacher.jit_eps._cache_size() == 1
    ref2 = _torch_reference(inp2, assignment, scale, guidance)
    assert T.max_err(out2.eps_cond, ref2["eps_cond"]) <= T.TOL


def test_teacher_inside_grad_one_controlnet():
    """All samples on one ControlNet; called inside jax.grad the teacher is a constant
    (stop_gradient), so d<eps, z>/dz = eps."""
    teacher, params = _teacher()
    inp = _inputs(1, seed=2)
    z = inp.pop("noisy_latents")

    def f(z):
        out = teacher.eps(params, z, **inp, controlnet="depth", control_scale=0.8,
                          guidance_scale=7.5)
        return jnp.vdot(out.eps, z), out

    grad, out = jax.jit(jax.grad(f, has_aux=True))(z)
    np.testing.assert_array_equal(grad, out.eps)
    ref = _torch_reference({**inp, "noisy_latents": z}, ("depth",), [0.8], [7.5])
    assert T.max_err(out.eps_cond, ref["eps_cond"]) <= T.TOL
    assert T.max_err(out.eps_uncond, ref["eps_uncond"]) <= T.TOL


def test_teacher_bf16_close_to_fp32_reference():
    teacher, params = _teacher(jnp.bfloat16)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params))
    inp = _inputs(3, seed=0)
    assignment = ("depth", "edge", None)
    scale = np.array([1.0, 0.6, 1.0], np.float32)
    out = teacher.jit_eps(params, **inp, controlnet=assignment, control_scale=scale,
                          guidance_scale=7.5)
    assert out.eps.dtype == jnp.float32 and np.isfinite(np.asarray(out.eps)).all()
    ref = _torch_reference(inp, assignment, scale, [7.5] * 3)
    # bf16 keeps 8 mantissa bits: a few percent of the output scale through the network
    for k in ("eps_uncond", "eps_cond"):
        assert T.rel_err(getattr(out, k), ref[k]) <= 5e-2, k


def test_teacher_errors():
    teacher, params = _teacher()
    inp = _inputs(2, seed=3)
    with pytest.raises(ValueError, match="unknown ControlNet"):
        teacher.eps(params, **inp, controlnet="canny")
    with pytest.raises(ValueError, match="2 entries for batch 3|entries for batch"):
        teacher.eps(params, **_inputs(3, seed=3), controlnet=("depth", None))
    del inp["control"]
    with pytest.raises(ValueError, match="needs a control image"):
        teacher.eps(params, **inp, controlnet="depth")
