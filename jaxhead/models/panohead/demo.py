"""A small random-weight PanoHead for demos, tests and the demo training config.

Same architecture as the released model with small sizes (as the official-code fixture
``panohead_tiny``): mapping 2 layers, tri-grid 32 px x 3 depth, 12 + 12 ray samples, 32 px
neural rendering, SR to 512 through 32 / 16 channels (the fixture and every released
checkpoint keep the official 256 / 128; the full-width SR alone is ~320 GFLOP per 512 px
image). Random weights render abstract shapes, not heads; real heads need the released
checkpoint (``python -m convert_weights.panohead``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.models.panohead import PanoHead, PanoHeadConfig


def demo_config(**overrides) -> PanoHeadConfig:
    """The tiny configuration (``overrides`` replace fields)."""
    base = dict(channel_base=2048, channel_max=32, triplane_size=32, depth_resolution=12,
                depth_resolution_importance=12, neural_rendering_resolution=32,
                sr_channels=(32, 16))
    base.update(overrides)
    return PanoHeadConfig(**base)


def host_init(G: PanoHead, seed: int = 0, *, t_mapping: bool = False) -> dict:
    """PyTorch-like random init drawn on the host (no compile): raw weights, ``const`` and
    ``noise_const`` ~ N(0, 1), biases 0 (affine biases 1), noise strengths and ``w_avg`` 0;
    ``t_mapping``: with the camera self-adaptation network (which inversion needs), drawn
    from its own stream so that every other tensor is the same as without it."""

    def draws(shapes, rng):
        def draw(path, s):
            name = jax.tree_util.keystr(path)
            if name.endswith("['bias']"):
                return np.full(s.shape, 1.0 if "affine" in name else 0.0, np.float32)
            if "noise_strength" in name or "w_avg" in name:
                return np.zeros(s.shape, np.float32)
            w = rng.standard_normal(s.shape).astype(np.float32)
            if "['mapping']" in name and name.endswith("['weight']") and "embed" not in name:
                w = w / 0.01  # lr_multiplier 0.01: stored weights are N(0, 1) / lr_mul
            return w

        return jax.tree.map(jnp.asarray, jax.tree_util.tree_map_with_path(draw, shapes))

    out = draws(G.param_shapes(), np.random.default_rng(seed))
    if t_mapping:
        full = G.param_shapes(t_mapping=True)
        extra = draws({k: {"t_mapping": full[k]["t_mapping"]} for k in ("params", "buffers")},
                      np.random.default_rng(seed + 7))
        out = {k: {**out[k], **extra[k]} for k in ("params", "buffers")}
    return out


def demo_params(G: PanoHead, seed: int = 0, params: dict | None = None) -> dict:
    """Random parameters with every path active.

    PyTorch's init leaves noise strengths and biases at zero; here they get small random
    values (noise strength 0.1, as the fixture) so that every term of the generator is
    exercised. ``w_avg`` gets a random value so that truncation does something. A
    ``t_mapping`` network in ``params`` is kept as it is (the other tensors do not depend on
    whether it is there).
    """
    params = host_init(G, seed) if params is None else params
    rng = np.random.default_rng(seed + 1)

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        if "['t_mapping']" in name:  # kept (and draws nothing: the other tensors' values
            return x  #                 do not depend on whether it is there)
        x = np.asarray(x)
        if "noise_strength" in name:
            x = np.full_like(x, 0.1)
        elif name.endswith("['bias']") and "affine" not in name:
            x = x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
        elif "w_avg" in name:
            x = 0.5 * rng.standard_normal(x.shape).astype(np.float32)
        return jnp.asarray(x)

    return jax.tree_util.tree_map_with_path(perturb, params)


def sculpt(params: dict, *, amplitude: float = 2.0, gain: float = 8.0,
           offset: float = -6.0, colour_gain: float = 0.3) -> dict:
    """Give a random generator a solid blob to look at (for demos only).

    Routes a smooth 4x4 bump (the ``b4`` constant, up-sampled by the skip connections) into
    channel 0 of every plane and depth slice, and makes the decoder's density a steep
    function of that channel, so that the three planes' bumps add up to a closed, roughly
    spherical object whose silhouette, texture and depth change as the camera turns. The
    higher blocks' ToRGBs do not write the density channel, so every identity gets the blob
    (its colours and texture differ); the colour outputs (raw and SR ToRGBs) are scaled by
    ``colour_gain`` with zero biases, so that images lie about in [-1, 1]. Every other
    weight keeps its random value (texture, background).
    """
    p = jax.tree.map(lambda x: x, params)
    b4 = p["params"]["backbone"]["synthesis"]["b4"]
    c = b4["const"].shape[-1]
    bump = np.zeros((4, 4), np.float32)
    bump[1:3, 1:3] = 1.0
    b4["const"] = b4["const"].at[:, :, 0].set(amplitude * (bump - 0.5))
    w = np.zeros((3, 3, c, c), np.float32)
    w[1, 1] = np.eye(c)  # identity 3x3 conv
    b4["conv1"]["weight"] = jnp.asarray(w)
    b4["conv1"]["affine"]["weight"] = jnp.zeros_like(b4["conv1"]["affine"]["weight"])  # style 1
    b4["conv1"]["bias"] = b4["conv1"]["bias"].at[0].set(0.0)
    b4["torgb"]["affine"]["weight"] = jnp.zeros_like(b4["torgb"]["affine"]["weight"])
    sigma_ch = np.array([pl * 96 + d for pl in range(3) for d in range(3)])  # plane ch 0, all d
    tw = np.array(b4["torgb"]["weight"])
    tw[0, 0, :, sigma_ch] = 0.0
    tw[0, 0, 0, sigma_ch] = np.sqrt(c)  # ToRGB styles are 1/sqrt(c) with zero affine weights
    b4["torgb"]["weight"] = jnp.asarray(tw)
    b4["torgb"]["bias"] = b4["torgb"]["bias"].at[sigma_ch].set(0.0)
    syn = p["params"]["backbone"]["synthesis"]
    for name, block in syn.items():
        if name != "b4" and "torgb" in block:
            block["torgb"]["weight"] = block["torgb"]["weight"].at[..., sigma_ch].set(0.0)
    for t in (p["params"]["torgb"], *(blk["torgb"] for blk in
                                       p["params"]["superresolution"].values())):
        t["weight"] = t["weight"] * colour_gain
        t["bias"] = jnp.zeros_like(t["bias"])
    dec = p["params"]["decoder"]
    w0 = np.array(dec["net_0"]["weight"])
    w0[0] = 0.0
    w0[0, 0] = gain * np.sqrt(w0.shape[1])  # equalized-LR gain 1/sqrt(in)
    dec["net_0"]["weight"] = jnp.asarray(w0)
    dec["net_0"]["bias"] = dec["net_0"]["bias"].at[0].set(0.0)
    w2 = np.array(dec["net_2"]["weight"])
    w2[0] = 0.0
    w2[0, 0] = np.sqrt(w2.shape[1])
    dec["net_2"]["weight"] = jnp.asarray(w2)
    dec["net_2"]["bias"] = dec["net_2"]["bias"].at[0].set(offset)
    return p


def demo_generator(seed: int = 0, *, sculpted: bool = True, t_mapping: bool = False,
                   **overrides) -> tuple[PanoHead, dict]:
    """``(G, params)`` of the tiny random generator (``sculpted``: with :func:`sculpt`;
    ``t_mapping``: with the camera self-adaptation network, for inversion)."""
    G = PanoHead(demo_config(**overrides))
    params = demo_params(G, seed, host_init(G, seed, t_mapping=t_mapping))
    return G, sculpt(params) if sculpted else params
