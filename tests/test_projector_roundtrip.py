"""Round trip: a target rendered from a known w at a known (t_mapping-corrected) camera is
inverted from w_avg; broken projectors (camera correction left out or applied with the wrong
sign, camera axes in the OpenGL instead of the OpenCV convention) fall clearly short. Runs on
the neural rendering (``render_output="image_raw"``, 32 px) of the tiny fixture generator,
without the background network (driven by w alone, it would let any camera match the
backdrop), so that the steps stay cheap on CPU; still marked slow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.camera import make_camera
from jaxhead.models.lpips_vgg import random_params
from jaxhead.models.panohead import load_panohead
from jaxhead.projector import Projector, ProjectorConfig, Targets, stats_camera

STEPS = 60
SMALL = (8, 12, 16, 16, 16)


def psnr(a, b):
    """PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / np.mean(np.square(np.asarray(a) - np.asarray(b)))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fixtures_dir):
    from convert_weights.panohead import convert

    dst = tmp_path_factory.mktemp("panohead_tiny")
    convert(fixtures_dir / "panohead_tiny" / "G_ema.safetensors", dst)
    G, params = load_panohead(dst)  # random weights, every path active, t_mapping included
    cfg = ProjectorConfig(num_steps=STEPS, ray_start=None, deterministic=True,
                          render_output="image_raw", perceptual_size=32, w_avg_samples=2000,
                          background="none")
    proj = Projector(G, params, random_params(jax.random.key(5), SMALL), cfg)
    stats = proj.w_stats()
    z = jax.random.normal(jax.random.key(11), (1, G.z_dim))
    w_true = G.mapping(params, z, stats_camera(), truncation_psi=0.7)
    c_label = make_camera(jnp.array([0.5]), jnp.array([0.15]))
    c_true = proj.corrected_cameras(c_label, stats)
    target = proj.render(params, w_true, c_true, jax.random.key(0))
    return proj, stats, target, c_label, c_true


def invert(proj, stats, tgt):
    """Run the projection from w_avg; returns the reconstruction at the target's camera."""
    state = proj.init(stats, 1)
    for i in range(STEPS):
        state, _ = proj.step(state, tgt, stats, jax.random.key(i))
    return proj.render(proj.params, state.w_opt, tgt.c, jax.random.key(0))


@pytest.fixture(scope="module")
def result(setup):
    proj, stats, target, c_label, c_true = setup
    start = proj.render(proj.params, jnp.broadcast_to(stats.w_avg, (1, proj.G.num_ws, 512)),
                        c_true, jax.random.key(0))
    tgt = proj.targets(target, c_label, stats)
    assert np.abs(np.asarray(tgt.c - c_label)).max() > 0.05  # the correction matters here
    return psnr(start, target), psnr(invert(proj, stats, tgt), target)


@pytest.mark.slow
def test_inversion_reaches_the_target(result):
    start, final = result
    print(f"round trip PSNR: w_avg start {start:.2f} dB -> after {STEPS} steps {final:.2f} dB")
    assert final >= start + 8.0


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["uncorrected", "negated_offset", "opengl_axes"])
def test_broken_projector_falls_short(setup, result, broken):
    proj, stats, target, c_label, c_true = setup
    tgt = proj.targets(target, c_label, stats)
    if broken == "uncorrected":
        cam = c_label
    elif broken == "negated_offset":
        cam = c_label - (c_true - c_label)
    else:  # camera y and z axes flipped (OpenGL-style cam2world)
        cam = c_true.at[:, jnp.array([1, 2, 5, 6, 9, 10])].multiply(-1)
    out = invert(proj, stats, Targets(tgt.images, tgt.features, cam))
    got = psnr(out, target)
    print(f"{broken}: {got:.2f} dB (working projector: {result[1]:.2f} dB)")
    assert got < result[1] - 3.0
