"""Full-size SD 1.5 UNet (≈860 M parameters, random weights): diffusers vs jaxhead on one
64x64 latent CFG batch, with ControlNet-style residuals injected. Heavy (~7 GB RAM, minutes on
2 cores); run alone: ``python -m pytest -q -m slow tests/``."""

import gc
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch

from jaxhead.models import unet as unet_lib

# SD 1.5 unet/config.json (everything else is the diffusers default)
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)


@pytest.mark.slow
def test_full_sd15_unet_parity():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    tu = UNet2DConditionModel(**SD15_UNET).eval()
    cfg = dict(tu.config)
    assert sum(p.numel() for p in tu.parameters()) > 850e6
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
    t = np.array([981, 981])
    ctx = rng.standard_normal((2, 77, 768)).astype(np.float32)
    module = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_diffusers(cfg))
    res = [0.1 * rng.standard_normal(s).astype(np.float32)
           for s in unet_lib.skip_shapes(module.config, 2, 64, 64)]
    mid = 0.1 * rng.standard_normal((2, 8, 8, 1280)).astype(np.float32)
    start = time.perf_counter()
    with torch.no_grad():
        ref = tu(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                 down_block_additional_residuals=[torch.from_numpy(T.nchw(r)) for r in res],
                 mid_block_additional_residual=torch.from_numpy(T.nchw(mid))).sample.numpy()
    torch_s = time.perf_counter() - start

    params = unet_lib.convert(T.state_dict(tu), cfg)  # copies; the torch model can go
    del tu
    gc.collect()
    params = jax.tree.map(jnp.asarray, params)
    gc.collect()
    start = time.perf_counter()
    out = jax.jit(module.apply)({"params": params}, T.nhwc(x), t, ctx, res, mid)
    out = np.asarray(out)
    jax_s = time.perf_counter() - start  # includes compilation
    err = T.max_err(T.nchw(out), ref)
    scale = float(np.abs(ref).max())
    print(f"\nfull SD1.5 UNet: max-abs err {err:.3g} (output max {scale:.3g}), "
          f"torch {torch_s:.1f}s, jax (compile+run) {jax_s:.1f}s")
    assert err <= T.TOL
