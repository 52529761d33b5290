"""AutoencoderKL: parity with diffusers, reparameterised sampling, encoder gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch

from jaxhead.models import vae as vae_lib


@functools.cache
def _model():
    tv = T.torch_vae()
    cfg = dict(tv.config)
    module = vae_lib.AutoencoderKL(vae_lib.VAEConfig.from_diffusers(cfg))
    params = vae_lib.convert(T.state_dict(tv), cfg)
    encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method=module.encode))
    decode = jax.jit(lambda p, z: module.apply({"params": p}, z, method=module.decode))
    return tv, module, params, encode, decode


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_vae_parity(hw):
    tv, _, params, encode, decode = _model()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3) + hw).astype(np.float32)
    with torch.no_grad():
        post = tv.encode(torch.from_numpy(x)).latent_dist
        rec = tv.decode(post.mean).sample
    dist = encode(params, T.nhwc(x))
    assert dist.mean.shape == (2, hw[0] // 2, hw[1] // 2, 4)
    assert T.max_err(T.nchw(dist.mean), post.mean) <= T.TOL
    assert T.max_err(T.nchw(dist.logvar), post.logvar) <= T.TOL
    out = decode(params, T.nhwc(post.mean))
    assert T.max_err(T.nchw(out), rec) <= T.TOL


def test_vae_sample_and_scaling():
    tv, module, params, encode, _ = _model()
    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    dist = encode(params, x)
    key = jax.random.key(3)
    noise = jax.random.normal(key, dist.mean.shape)
    np.testing.assert_allclose(dist.sample(key), dist.mean + jnp.exp(0.5 * dist.logvar) * noise,
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(dist.sample(key), dist.sample(jax.random.key(4)))
    np.testing.assert_array_equal(dist.mode(), dist.mean)
    # encode_latents / decode_latents apply the config's scaling factor
    assert module.config.scaling_factor == pytest.approx(tv.config.scaling_factor)
    enc = jax.jit(functools.partial(vae_lib.encode_latents, module))
    lat = enc(params, x)
    np.testing.assert_allclose(lat, dist.mean * tv.config.scaling_factor, atol=1e-6)
    lat_s = enc(params, x, key)
    np.testing.assert_allclose(lat_s, dist.sample(key) * tv.config.scaling_factor, atol=1e-6)
    img = jax.jit(functools.partial(vae_lib.decode_latents, module))(params, lat)
    with torch.no_grad():
        ref = tv.decode(torch.from_numpy(T.nchw(lat)) / tv.config.scaling_factor).sample
    assert T.max_err(T.nchw(img), ref) <= T.TOL


def test_vae_encoder_gradient_matches_torch():
    """d <w, mean(x)> / dx through the encoder equals PyTorch autograd."""
    tv, module, params, _, _ = _model()
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    w = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    (tv.encode(xt).latent_dist.mean * torch.from_numpy(w)).sum().backward()

    def f(img):
        dist = module.apply({"params": params}, img, method=module.encode)
        return jnp.sum(dist.mean * T.nhwc(w))

    g = jax.jit(jax.grad(f))(T.nhwc(x))
    assert T.rel_err(T.nchw(g), xt.grad) <= T.TOL


def test_vae_config_errors():
    with pytest.raises(ValueError, match="down_block_types"):
        vae_lib.VAEConfig.from_diffusers({"block_out_channels": [32],
                                          "down_block_types": ["AttnDownEncoderBlock2D"]})
    with pytest.raises(ValueError, match="latents_mean"):
        vae_lib.VAEConfig.from_diffusers({"latents_mean": [0.0] * 4})


def test_vae_deprecated_attention_names():
    """Older VAE folders name the mid-block attention query/key/value/proj_attn."""
    tv, _, params, _, _ = _model()
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in T.state_dict(tv).items():
        for new, dep in old.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
        sd[k] = v
    assert any(".query." in k for k in sd)
    params_old = vae_lib.convert(sd, dict(tv.config))
    jax.tree.map(np.testing.assert_array_equal, params_old, params)


def test_encoder_remat_same_values_and_gradient():
    """Rematerialised blocks, and images encoded one at a time (each with the batch's own
    posterior noise): the same latents and input gradients as one plain batched pass."""
    _, module, params, _, _ = _model()
    remat = module.clone(remat=True)
    x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32))
    w = jnp.asarray(np.random.default_rng(6).normal(size=(2, 16, 16, 4)).astype(np.float32))

    def f(m, one=False):
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(w * vae_lib.encode_latents(
            m, params, x, jax.random.key(0), one_at_a_time=one) ** 2)))(x)

    (v0, g0) = f(module)
    assert float(jnp.abs(g0[1]).max()) > 0  # both images reach the loss
    for m, one in ((remat, False), (remat, True)):
        v1, g1 = f(m, one)
        np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(g0), np.asarray(g1), rtol=1e-5, atol=1e-6)
