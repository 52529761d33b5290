"""PanoHead port vs the official generator (fixture made by the official PyTorch code)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert_weights.panohead import convert, read_source, torch_to_flax
from jaxhead.camera import make_camera, mirror_camera
from jaxhead.models.panohead import PanoHead, PanoHeadConfig, load_panohead
from jaxhead.models.panohead.renderer import ray_sampler


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, fixtures_dir):
    dst = tmp_path_factory.mktemp("panohead_tiny")
    convert(fixtures_dir / "panohead_tiny" / "G_ema.safetensors", dst)
    return dst


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_panohead(tiny_dir)


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return dict(np.load(fixtures_dir / "panohead_tiny" / "io.npz"))


@pytest.fixture(scope="module")
def synth(tiny):
    """One jitted synthesis shared by the tests (compiled once per shape/options)."""
    G, _ = tiny

    @jax.jit
    def f(params, ws, c):
        return G.synthesis(params, ws, c, noise_mode="const", deterministic=True)

    return f


@pytest.fixture(scope="module")
def rendered(tiny, io, synth):
    _, params = tiny
    return jax.tree.map(np.asarray, synth(params, jnp.asarray(io["ws"]), jnp.asarray(io["c"])))


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def test_mapping_matches_official(tiny, io):
    G, params = tiny
    ws = G.mapping(params, jnp.asarray(io["z"]), jnp.asarray(io["c_cond"]),
                   truncation_psi=float(io["truncation_psi"]), truncation_cutoff=14)
    assert ws.shape == (4, G.num_ws, 512) == io["ws"].shape
    assert np.abs(np.asarray(ws) - io["ws"]).max() <= 1e-4
    ws1 = G.mapping(params, jnp.asarray(io["z"]), jnp.asarray(io["c_cond"]))
    assert np.abs(np.asarray(ws1) - io["ws_nopsi"]).max() <= 1e-4
    # truncation pulls toward w_avg: psi = 0 gives w_avg everywhere
    ws0 = G.mapping(params, jnp.asarray(io["z"]), jnp.asarray(io["c_cond"]), truncation_psi=0.0)
    np.testing.assert_allclose(np.asarray(ws0)[:, 3], np.broadcast_to(
        np.asarray(params["buffers"]["backbone"]["mapping"]["w_avg"]), (4, 512)), atol=1e-6)


@pytest.mark.parametrize("key,tol", [("planes", 1e-3), ("image_raw", 1e-3), ("image_depth", 1e-3),
                                     ("image_mask", 1e-3), ("image", 2e-3)])
def test_synthesis_matches_official(rendered, io, key, tol):
    got = _nchw(rendered[key])
    ref = io[key]
    assert got.shape == ref.shape
    err = np.abs(got - ref).reshape(4, -1).max(axis=1)  # per camera; camera 2 is the back view
    assert (err <= tol).all(), f"{key}: per-camera max-abs error {err}"


def test_cameras_reproduce_fixture(io):
    yaw = np.array([0.0, 0.6, np.pi, -1.2])
    pitch = np.array([0.0, -0.2, 0.1, 0.25])
    np.testing.assert_allclose(np.asarray(make_camera(yaw, pitch)), io["c"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(make_camera(jnp.zeros(4), jnp.full(4, 0.2))),
                               io["c_cond"], atol=1e-6)


def test_mirror_camera_mirrors_rays():
    """Rays of the mirrored camera at column j are the x-reflected rays of column W-1-j."""
    c = make_camera(jnp.array([0.7, -2.0]), jnp.array([0.1, -0.3]))
    res = 8
    o, d = ray_sampler(c[:, :16].reshape(-1, 4, 4), c[:, 16:].reshape(-1, 3, 3), res)
    om, dm = ray_sampler(mirror_camera(c)[:, :16].reshape(-1, 4, 4),
                         c[:, 16:].reshape(-1, 3, 3), res)
    flip = np.array([-1.0, 1.0, 1.0])
    d = np.asarray(d).reshape(2, res, res, 3)
    dm = np.asarray(dm).reshape(2, res, res, 3)
    np.testing.assert_allclose(dm, d[:, :, ::-1] * flip, atol=1e-6)
    np.testing.assert_allclose(np.asarray(om), np.asarray(o) * flip, atol=1e-6)


def test_noise_modes_and_stochastic_renderer(tiny, io, rendered):
    G, params = tiny
    ws, c = jnp.asarray(io["ws"][:2]), jnp.asarray(io["c"][:2])
    with pytest.raises(ValueError, match="rng"):
        G.synthesis(params, ws, c, noise_mode="random", deterministic=True)
    with pytest.raises(ValueError, match="rng"):
        G.synthesis(params, ws, c, noise_mode="const", deterministic=False)
    # stochastic ray sampling (const noise): reproducible per key, an unbiased jitter of the
    # deterministic sampling, so close to it but not equal
    f = jax.jit(lambda p, k: G.synthesis(p, ws, c, noise_mode="const", rng=k)["image_raw"])
    a, b, other = (np.asarray(f(params, jax.random.key(k))) for k in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - other).max() > 1e-4
    det = rendered["image_raw"][:2]
    assert 1e-5 < np.abs(a - det).mean() < 0.2 * np.abs(det).mean()
    # backbone noise modes
    planes = jax.jit(lambda p, k, mode: G.planes(p, ws, noise_mode=mode, rng=k),
                     static_argnums=2)
    p_const = np.asarray(planes(params, None, "const"))
    np.testing.assert_allclose(p_const, rendered["planes"][:2], atol=1e-5)
    p_none = np.asarray(planes(params, None, "none"))
    p_r1, p_r2 = (np.asarray(planes(params, jax.random.key(k), "random")) for k in (5, 6))
    assert np.abs(p_none - p_const).max() > 1e-3
    assert np.abs(p_r1 - p_r2).max() > 1e-3
    np.testing.assert_array_equal(p_r1, np.asarray(planes(params, jax.random.key(5), "random")))


def test_gradients_reach_synthesis_and_sr(tiny, io):
    G, params = tiny
    ws, c = jnp.asarray(io["ws"][:1]), jnp.asarray(io["c"][:1])
    trainable = {k: params["params"][k] for k in ("backbone", "superresolution")}

    def loss(tr):
        p = {"params": {**params["params"], **tr}, "buffers": params["buffers"]}
        out = G.synthesis(p, ws, c, noise_mode="const", deterministic=True, background="none")
        return jnp.mean(out["image"] ** 2) + jnp.mean(out["image_raw"])

    loss_j = jax.jit(loss)
    grads = jax.jit(jax.grad(loss))(trainable)
    syn, sr = grads["backbone"]["synthesis"], grads["superresolution"]
    for name, g in [("b4 const", syn["b4"]["const"]),
                    ("b32 conv1 weight", syn["b32"]["conv1"]["weight"]),
                    ("SR block1 torgb", sr["block1"]["torgb"]["weight"]),
                    ("SR block0 conv0", sr["block0"]["conv0"]["weight"])]:
        g = np.asarray(g)
        assert np.isfinite(g).all(), name
        assert np.abs(g).max() > 0, name
    # the mapping network does not enter synthesis(ws, ...)
    assert not np.asarray(grads["backbone"]["mapping"]["fc0"]["weight"]).any()
    # directional finite difference along the SR gradient (the SR does not move ray samples,
    # so the loss is smooth in these parameters)
    norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(sr)))
    eps = 1e-2

    def shifted(sign):
        d = jax.tree.map(lambda p, g: p + sign * eps * g / norm, trainable["superresolution"], sr)
        return float(loss_j({**trainable, "superresolution": d}))

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(fd - norm) < 0.02 * norm, (fd, norm)


def test_state_dict_mismatch_names_keys(fixtures_dir):
    sd, kwargs, res = read_source(fixtures_dir / "panohead_tiny" / "G_ema.safetensors")
    cfg = PanoHeadConfig.from_official(kwargs, res)
    bad = dict(sd)
    del bad["decoder.net.2.bias"]
    bad["superresolution.block0.conv1.weight"] = np.zeros((256, 255, 3, 3), np.float32)
    bad["backbone.synthesis.b4.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        torch_to_flax(bad, cfg)
    msg = str(e.value)
    assert "decoder.net.2.bias" in msg or "decoder/net_2/bias" in msg
    assert "superresolution.block0.conv1.weight" in msg
    assert "backbone.synthesis.b4.extra" in msg


def test_load_errors(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="convert_weights.panohead"):
        load_panohead(tmp_path / "nothing")
    # a converted directory whose config disagrees with its parameters
    d = tmp_path / "bad"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["panohead"]["triplane_size"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_panohead(d)
    cfg["panohead"]["not_a_key"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not_a_key"):
        load_panohead(d)


@pytest.mark.slow
def test_full_released_configuration_renders():
    """The released model's configuration (num_ws 14, tri-grid 256, 48 + 48 samples, 64 px)."""
    G = PanoHead(PanoHeadConfig())
    assert G.num_ws == 14
    shapes = G.param_shapes()
    n_values = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    # ~54.6 M values in the official state dict, minus t_mapping (~1.6 k) and the FIR filters
    assert 54.0e6 < n_values < 54.7e6, n_values
    params = jax.jit(G.init)(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (1, 512))
    c = make_camera(jnp.array([0.4]), jnp.array([0.0]))
    out = jax.jit(lambda p: G.synthesis(p, G.mapping(p, z, c, 0.7, 14), c,
                                        rng=jax.random.key(2)))(params)
    assert out["image"].shape == (1, 512, 512, 3)
    assert out["image_raw"].shape == (1, 64, 64, 3)
    assert out["image_depth"].shape == out["image_mask"].shape == (1, 64, 64, 1)
    assert out["planes"].shape == (1, 256, 256, 288)
    for k, v in out.items():
        assert np.isfinite(np.asarray(v)).all(), k
    d = np.asarray(out["image_depth"])
    assert (d >= 2.25 - 1e-4).all() and (d <= 3.3 + 0.05).all()


def test_sr_channels_round_trip_and_bad_values():
    """``sr_channels`` (the demo's narrow SR) survives config.json; a bad value is named."""
    c = PanoHeadConfig(sr_channels=(32, 16))
    assert PanoHeadConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert PanoHeadConfig.from_dict({}).sr_channels == (256, 128)  # the official widths
    for bad in ("wide", [64], 7):
        with pytest.raises(ValueError, match="sr_channels must be two integers"):
            PanoHeadConfig.from_dict({"sr_channels": bad})
