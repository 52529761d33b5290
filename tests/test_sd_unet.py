"""UNet2DConditionModel and ControlNetModel: parity with diffusers (PyTorch), config checks,
attention implementations."""

import functools

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch

from jaxhead.models import controlnet as cn_lib
from jaxhead.models import sd_layers
from jaxhead.models import unet as unet_lib


@functools.cache
def _unet(which: str = "main"):
    tu = T.torch_unet(which)
    cfg = dict(tu.config)
    module = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_diffusers(cfg))
    return tu, module, unet_lib.convert(T.state_dict(tu), cfg), jax.jit(module.apply)


@functools.cache
def _controlnet():
    tc = T.torch_controlnet()
    cfg = dict(tc.config)
    module = cn_lib.ControlNetModel(cn_lib.ControlNetConfig.from_diffusers(cfg))
    return tc, module, cn_lib.convert(T.state_dict(tc), cfg), jax.jit(module.apply)


def _inputs(b: int, h: int, w: int, ctx_dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 4, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, 7, ctx_dim)).astype(np.float32)
    t = np.array([999, 15, 500][:b])
    return x, t, ctx


# (16, 16); (14, 10) is not divisible by 4, so the UNet upsamples to the skips' sizes.
@pytest.mark.parametrize("hw", [(16, 16), (14, 10)])
def test_unet_controlnet_parity(hw):
    """ControlNet residuals and the UNet with those residuals injected, fp32."""
    tu, _, uparams, unet_fn = _unet()
    tc, _, cparams, cn_fn = _controlnet()
    x, t, ctx = _inputs(2, *hw, 32)
    f = 2 ** (len(T.TINY_CONTROL_CHANNELS) - 1)
    cond = np.random.default_rng(1).uniform(0, 1, (2, 3, f * hw[0], f * hw[1])).astype(np.float32)
    with torch.no_grad():
        args = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)
        plain = tu(*args).sample
        d, m = tc(*args, torch.from_numpy(cond), conditioning_scale=0.7, return_dict=False)
        ref = tu(*args, down_block_additional_residuals=d, mid_block_additional_residual=m).sample
    scale = np.full((2,), 0.7, np.float32)  # per-sample scale [B]
    jd, jm = cn_fn({"params": cparams}, T.nhwc(x), t, ctx, T.nhwc(cond), scale)
    assert len(jd) == len(d)
    for a, r in zip(jd, d, strict=True):
        assert T.rel_err(T.nchw(a), r) <= T.TOL
    assert T.rel_err(T.nchw(jm), m) <= T.TOL
    out = unet_fn({"params": uparams}, T.nhwc(x), t, ctx, jd, jm)
    assert out.shape == (2, *hw, 4)
    assert T.max_err(T.nchw(out), ref) <= T.TOL
    assert T.max_err(ref, plain) > 0.1  # the residuals matter


def test_unet_linear_projection_family_member():
    """use_linear_projection, 2 transformer layers, head count as int, freq shift, no flip,
    mid_block_scale_factor, center_input_sample."""
    tu, _, params, fn = _unet("linear")
    x, t, ctx = _inputs(2, 8, 8, 24, seed=3)
    with torch.no_grad():
        ref = tu(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    out = fn({"params": params}, T.nhwc(x), t, ctx)
    assert T.max_err(T.nchw(out), ref) <= T.TOL


def test_controlnet_per_sample_scale_and_skip_shapes():
    _, module, params, fn = _controlnet()
    x, t, ctx = _inputs(2, 16, 16, 32, seed=4)
    cond = np.random.default_rng(5).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    d1, m1 = fn({"params": params}, T.nhwc(x), t, ctx, cond, np.ones((2,), np.float32))
    d2, m2 = fn({"params": params}, T.nhwc(x), t, ctx, cond, np.array([0.5, 2.0], np.float32))
    np.testing.assert_allclose(m2[0], 0.5 * m1[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m2[1], 2.0 * m1[1], rtol=1e-5, atol=1e-6)
    shapes = unet_lib.skip_shapes(_unet()[1].config, 2, 16, 16)
    assert [r.shape for r in d1] == shapes


def test_attention_implementations_agree():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 300, 3, 8)).astype(np.float32) for _ in range(3))
    dense = sd_layers.attention(q, k, v, impl="dense")
    chunked = jax.jit(lambda a, b, c: sd_layers.attention(a, b, c, impl="chunked",
                                                          chunk_size=128))(q, k, v)
    assert T.max_err(chunked, dense) <= 1e-5
    mask = np.where(rng.uniform(size=(2, 1, 1, 300)) < 0.2, -1e9, 0.0).astype(np.float32)
    assert T.max_err(sd_layers.attention(q, k, v, bias=mask, impl="chunked", chunk_size=128),
                     sd_layers.attention(q, k, v, bias=mask, impl="dense")) <= 1e-5
    # gradients (the VAE encoder is differentiated through chunked attention)
    w = rng.standard_normal(q.shape).astype(np.float32)

    def loss(impl):
        return lambda a, b, c: jnp.sum(w * sd_layers.attention(a, b, c, bias=mask, impl=impl,
                                                                chunk_size=128))

    g_dense = jax.grad(loss("dense"), argnums=(0, 1, 2))(q, k, v)
    g_chunk = jax.jit(jax.grad(loss("chunked"), argnums=(0, 1, 2)))(q, k, v)
    for gc, gd in zip(g_chunk, g_dense, strict=True):
        assert T.max_err(gc, gd) <= 1e-5 * max(1.0, float(np.abs(gd).max()))
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a).transpose(1, 2) for a in (q, k, v))).transpose(1, 2)
    assert T.max_err(dense, ref) <= 1e-5
    with pytest.raises(ValueError, match="unknown attention impl"):
        sd_layers.attention(q, k, v, impl="flash")


def test_transformer_block_chunked_attention_matches_dense():
    """A spatial transformer over 48x48 tokens: "auto" picks query chunking (3 chunks of 1024,
    the last padded) and matches the dense path."""
    x = np.random.default_rng(6).standard_normal((1, 48, 48, 16)).astype(np.float32)
    ctx = np.random.default_rng(7).standard_normal((1, 5, 8)).astype(np.float32)

    def block(impl):
        return sd_layers.Transformer2DModel(2, 8, norm_num_groups=4, attention_impl=impl)

    params = block("dense").init(jax.random.key(0), x, ctx)
    run = {impl: jax.jit(block(impl).apply)(params, x, ctx) for impl in ("dense", "auto")}
    assert T.max_err(run["auto"], run["dense"]) <= 1e-5
    lowered = jax.jit(block("auto").apply).lower(params, x, ctx).as_text()
    assert "while" in lowered  # lax.map over query chunks


@pytest.mark.parametrize("change, match", [
    ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4}, "down_block_types"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type"),
    ({"addition_embed_type": "text_time"}, "addition_embed_type"),
    ({"only_cross_attention": True}, "only_cross_attention"),
    ({"transformer_layers_per_block": [[1, 2], [1, 2], [1, 2], [1, 2]]}, "nested"),
    ({"some_future_option": 1}, "some_future_option=1 .unknown option"),
    ({"num_attention_heads": 8}, "num_attention_heads"),
])
def test_unet_unsupported_config(change, match):
    cfg = {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768, **change}
    with pytest.raises(ValueError, match=match):
        unet_lib.UNetConfig.from_diffusers(cfg)


def test_default_config_is_sd15():
    cfg = unet_lib.UNetConfig.from_diffusers({"cross_attention_dim": 768})
    assert cfg.block_out_channels == (320, 640, 1280, 1280)
    assert cfg.num_attention_heads == (8,) * 4 and cfg.layers_per_block == (2,) * 4
    with pytest.raises(ValueError, match="controlnet_conditioning_channel_order='xyz'"):
        cn_lib.ControlNetConfig.from_diffusers({"controlnet_conditioning_channel_order": "xyz"})


def test_low_precision_weights_wait_for_the_layer_input():
    """bfloat16 weights are tied to their layer's input on CPU, so XLA converts each one to
    float32 just before its layer instead of the whole network's up front (8 dense layers of
    1024 x 1024: 8 float32 copies = 32 MiB of temporaries with flax's plain promotion, one
    copy with ours); values unchanged."""
    promotes = {"plain": flax.linen.dtypes.promote_dtype, "tied": sd_layers.promote_after_input}

    class Stack(flax.linen.Module):
        promote: str

        @flax.linen.compact
        def __call__(self, x):
            for i in range(8):
                x = jnp.tanh(flax.linen.Dense(1024, dtype=jnp.bfloat16, name=f"d{i}",
                                              promote_dtype=promotes[self.promote])(x))
            return x

    x = jnp.asarray(np.random.default_rng(8).standard_normal((4, 1024)), jnp.bfloat16)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16),
                          Stack("tied").init(jax.random.key(0), x))
    out = {k: jax.jit(Stack(k).apply)(params, x) for k in promotes}
    np.testing.assert_array_equal(np.asarray(out["tied"], np.float32),
                                  np.asarray(out["plain"], np.float32))
    if jax.default_backend() == "cpu":
        temp = {k: jax.jit(Stack(k).apply).lower(params, x).compile().memory_analysis()
                .temp_size_in_bytes for k in promotes}
        assert temp["plain"] >= 7 * 4 * 2**20 and temp["tied"] <= 2 * 4 * 2**20, temp
