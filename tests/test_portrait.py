"""The single-portrait mode (3DArtmator): the image-direction loss against its formula, its
value and gradient where the direction is zero (initialisation), the reference / inversion
cache logic, the no-teacher plumbing, one real trainer step, and the one-line errors."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_testlib import override

from configs import portrait as portrait_config
from jaxhead import train
from jaxhead.errors import DataError
from jaxhead.latents import save_ws
from jaxhead.losses.regularizers import image_direction_loss
from jaxhead.models import lpips_vgg
from jaxhead.training import reference
from jaxhead.training.config import validate_config
from jaxhead.training.models import missing_weights, needs_teacher
from jaxhead.training.terms.portrait import demo_lpips_vgg, spatial_loss

NUM_WS, W_DIM = 8, 512  # the demo generator's


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _emb(seed, n, d=16):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, d)) * r.uniform(0.5, 3.0, size=(n, 1))  # unequal norms


def test_direction_loss_is_the_formula_and_sign_and_normalisation_matter():
    e, e0 = _emb(0, 5), _emb(1, 5)
    ref, ori = _emb(2, 1)[0], _emb(3, 1)[0]
    guide = _unit(ref) - _unit(ori)  # E(I_ref) - E(I*_ori), unit embeddings
    d = _unit(e) - _unit(e0)
    want = 1 - (d @ guide) / (np.linalg.norm(d, axis=-1) * np.linalg.norm(guide))
    f = jax.jit(image_direction_loss, static_argnames="eps")
    got0 = np.asarray(f(e, e0, guide, eps=0.0))
    np.testing.assert_allclose(got0, want, atol=1e-6)
    got = np.asarray(f(e, e0, guide))  # eps 1e-3: within eps^2 / (2 |d|^2) of the formula
    bound = 1e-6 / (2 * np.sum(d * d, -1)) + 1e-6
    assert np.all(np.abs(got - want) <= bound), (got - want, bound)
    # the guide's length does not matter, its direction does
    np.testing.assert_allclose(np.asarray(f(e, e0, 3.0 * guide)), got, atol=1e-6)
    # a wrong sign (frozen minus trained) gives 1 + cos instead of 1 - cos
    assert np.max(np.abs(np.asarray(f(e0, e, guide)) - want)) > 0.1
    # without normalising the embeddings before the difference the value changes
    d_raw = e - e0
    raw = 1 - (d_raw @ guide) / (np.linalg.norm(d_raw, axis=-1) * np.linalg.norm(guide))
    assert np.max(np.abs(raw - want)) > 0.05


def test_direction_loss_at_a_zero_direction_is_finite_with_the_guides_gradient():
    """Trained == frozen (initialisation): value 1, gradient -(I - u u^T) unit(g) / (|e| eps)
    w.r.t. the trained embedding (u = unit(e)), finite and non-zero."""
    e = _emb(4, 3)
    guide = _unit(_emb(5, 1)[0]) - _unit(_emb(6, 1)[0])
    eps = 1e-3

    def total(x):
        return jnp.sum(image_direction_loss(x, jnp.asarray(e), guide, eps=eps))

    v, g = jax.value_and_grad(total)(jnp.asarray(e, jnp.float32))
    np.testing.assert_allclose(float(v), 3.0, atol=1e-6)
    u, gh = _unit(e), _unit(guide)
    proj = gh[None] - np.sum(u * gh, -1, keepdims=True) * u
    want = -proj / (np.linalg.norm(e, axis=-1, keepdims=True) * eps)
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(want).max() > 1.0
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_spatial_loss_is_lpips_vgg_at_the_inversions_size():
    params = demo_lpips_vgg(0)
    r = np.random.default_rng(0)
    a = jnp.asarray(r.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    b = jnp.asarray(r.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    ours, ref = jax.jit(spatial_loss), jax.jit(lpips_vgg.lpips_vgg)
    np.testing.assert_allclose(np.asarray(ours(params, a, b)),
                               np.asarray(ref(params, a, b)), rtol=1e-6)
    assert np.allclose(np.asarray(ours(params, a, a)), 0.0)
    big = jnp.repeat(jnp.repeat(a[:1] + 0.3 * b[:1], 16, 1), 16, 2)  # 512 px: area to 256
    big_b = jnp.repeat(jnp.repeat(b[:1], 16, 1), 16, 2) + 0.1 * a[:1, :1, :1]
    want = ref(params, lpips_vgg.area_downsample(big, 256),
               lpips_vgg.area_downsample(big_b, 256))
    np.testing.assert_allclose(np.asarray(ours(params, big, big_b)), np.asarray(want),
                               rtol=1e-5)


# --- reference files, the inversion cache ---------------------------------------------------


def _image(path, seed=0, size=128):
    r = np.random.default_rng(seed)
    Image.fromarray(r.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _config(tmp_path, **over):
    c = portrait_config.get_config()
    c.models.generator = "demo"
    c.models.sd = "demo"
    c.reference = str(_image(tmp_path / "art.png"))
    c.reference_yaw = 0.25
    c.workdir = str(tmp_path / "run")
    return override(c, **over)


def test_reference_forms_and_their_errors(tmp_path):
    c = _config(tmp_path)
    ref = reference.read_reference(c)
    assert ref.image.shape == (512, 512, 3) and ref.camera.shape == (25,)
    np.testing.assert_allclose(ref.camera, reference.frontal_camera(0.25, 0.0))
    # a folder in PanoHead's layout with one labelled image gives its label's camera
    folder = tmp_path / "crop"
    folder.mkdir()
    _image(folder / "mona.png")
    cam = [float(v) for v in np.arange(25) / 10]
    (folder / "dataset.json").write_text(json.dumps({"labels": [["mona.png", cam]]}))
    c.reference = str(folder)
    np.testing.assert_allclose(reference.read_reference(c).camera, cam, rtol=1e-6)
    _image(folder / "other.png", seed=1)  # unlabelled
    with pytest.raises(DataError, match="has no camera label"):
        reference.read_reference(c)
    (folder / "other.png").unlink()
    (folder / "dataset.json").unlink()
    with pytest.raises(DataError, match="no dataset.json"):
        reference.read_reference(c)
    c.reference = str(tmp_path / "art.png")
    c.reference_yaw = None
    with pytest.raises(ValueError, match="without a camera: set --config.reference_yaw"):
        reference.read_reference(c)


def test_inversion_is_cached_reused_and_never_confused(tmp_path):
    """The inversion runs once, is cached with its settings and reused; a cache of another
    reference is refused; reference_w skips it; a w of another num_ws is refused."""
    G = SimpleNamespace(num_ws=NUM_WS, w_dim=W_DIM)
    calls = []

    def fake_invert(G_, params, lpips_params, ref, config):
        calls.append(ref.name)
        return np.full((1, NUM_WS, W_DIM), float(len(calls)), np.float32)

    c = _config(tmp_path)
    wd = tmp_path / "run"
    ref = reference.read_reference(c)
    w1 = reference.reference_w(c, wd, G, None, None, ref, invert_fn=fake_invert)
    assert calls == ["art.png"] and (wd / reference.CACHE_FILE).is_file()
    w2 = reference.reference_w(c, wd, G, None, None, ref, invert_fn=fake_invert)
    assert len(calls) == 1 and np.array_equal(w1, w2)  # reused (a resumed run)
    # the cache is a plain w file too (render --ws, preview_ws)
    np.testing.assert_array_equal(reference.read_ws(wd / reference.CACHE_FILE), w1)
    # another image under the same name, or other inversion settings: refused, kept
    _image(tmp_path / "art.png", seed=5)
    other = reference.read_reference(c)
    with pytest.raises(DataError, match="image_sha256"):
        reference.reference_w(c, wd, G, None, None, other, invert_fn=fake_invert)
    c.reference_invert_steps = 7
    with pytest.raises(DataError, match="steps: 500 -> 7"):
        reference.reference_w(c, wd, G, None, None, ref, invert_fn=fake_invert)
    assert len(calls) == 1 and np.array_equal(reference.read_ws(wd / reference.CACHE_FILE), w1)
    # reference_w given: no inversion, no cache read
    save_ws(tmp_path / "w.npz", np.full((1, NUM_WS, W_DIM), 9.0))
    c.reference_w = str(tmp_path / "w.npz")
    w3 = reference.reference_w(c, tmp_path / "fresh", G, None, None, other,
                               invert_fn=fake_invert)
    assert len(calls) == 1 and float(w3[0, 0, 0]) == 9.0
    save_ws(tmp_path / "w6.npz", np.zeros((1, 6, W_DIM)))
    c.reference_w = str(tmp_path / "w6.npz")
    with pytest.raises(DataError, match=r"w is \[1, 6, 512\], but the generator takes"):
        reference.reference_w(c, wd, G, None, None, ref, invert_fn=fake_invert)


def test_portrait_mode_needs_no_teacher_and_checks_its_config(tmp_path):
    c = _config(tmp_path)
    vc = validate_config(c)
    assert not needs_teacher(vc)
    # real paths: only the generator, CLIP and LPIPS-VGG16 are asked for, never SD
    c.models.generator = str(tmp_path / "g")
    c.models.sd = str(tmp_path / "sd")
    c.models.clip = str(tmp_path / "clip")
    c.models.lpips_vgg = str(tmp_path / "vgg")
    text = "\n".join(missing_weights(validate_config(c)))
    for needle in ("convert_weights.panohead", "convert_weights.clip", "--net vgg"):
        assert needle in text
    assert "Stable Diffusion" not in text and "diffusers" not in text
    bad = _config(tmp_path, **{"single.enabled": True})
    with pytest.raises(ValueError, match="objective=none distills nothing, but single.enabled"):
        validate_config(bad)
    bad = _config(tmp_path, **{"terms.portrait.weight": 0.0})
    with pytest.raises(ValueError) as e:
        validate_config(bad)
    assert "is set but terms.portrait.weight=0" in str(e.value)
    assert "no term has a weight > 0: nothing to train" in str(e.value)
    bad = _config(tmp_path, **{"terms.portrait.identities": "all", "terms.portrait.eps": 0.0})
    with pytest.raises(ValueError, match="identities='all'.*eps must be > 0"):
        validate_config(bad)


# --- through the trainer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One training step of the portrait config on the demo models with a given w*
    (inversion skipped): the direction term alone (spatial weight 0) over 2 views, so that
    the step's gradient at initialisation is the zero direction's."""
    tmp = tmp_path_factory.mktemp("portrait")
    save_ws(tmp / "w.npz", 0.3 * np.asarray(jax.random.normal(jax.random.key(1),
                                                                (1, NUM_WS, W_DIM))))
    c = _config(tmp, **{
        "reference_w": str(tmp / "w.npz"), "terms.portrait.render_output": "image_raw",
        "terms.portrait.views": 2, "terms.portrait.spatial_weight": 0.0, "steps": 1,
        "log_every": 1, "preview_every": 0, "final_turntable_identities": 0,
        "optimizer.lr": 1e-3, "remat": False})
    built = train.build(c, workdir=tmp / "run")
    init = jax.device_get(built.init().params)
    summary = train.train_and_evaluate(c, tmp / "run", progress=False, built=built)
    return SimpleNamespace(built=built, init=init, summary=summary, workdir=tmp / "run")


def test_one_portrait_step_at_init_is_finite_and_moves_the_generator(run):
    frozen = run.built.frozen
    assert not {"teacher", "vae", "text"} & set(frozen)  # no SD stack was built
    data = frozen["terms"]["portrait"]
    assert data["w"].shape == (1, NUM_WS, W_DIM) and data["camera"].shape == (1, 25)
    assert np.linalg.norm(np.asarray(data["guide"])) > 0
    m = run.summary["metrics"]
    # at init the trained renders equal the frozen ones: 1 - cos = 1 per view, 2 views
    assert abs(m["portrait_direction"] - 2.0) < 1e-4, m
    assert m["skipped"] == 0.0 and np.isfinite(m["grad_norm"]) and m["grad_norm"] > 0, m
    after = jax.device_get(run.summary["state"].params)
    moved = {jax.tree_util.keystr(path): float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(after),
                                     jax.tree.leaves(run.init), strict=True)}
    # Adam's first step moves every trained synthesis weight by about lr (biases are frozen;
    # the SR gets no gradient from the 32 px neural renderings of render_output=image_raw)
    syn = {k: v for k, v in moved.items() if "synthesis" in k and not k.endswith("['bias']")}
    assert len(syn) > 10 and min(syn.values()) > 0.5e-3, syn
    assert all(v == 0 for k, v in moved.items() if "superresolution" in k or
               k.endswith("['bias']"))
    assert (run.workdir / "generator" / "config.json").is_file()


def _run_cli(capsys, *argv):
    rc = train.main(["--config", "configs/portrait.py", "--config.models.generator=demo",
                     "--config.models.sd=demo", "--config.compilation_cache=", *argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_bad_references_are_one_line(capsys, tmp_path):
    art = _image(tmp_path / "art.png")
    wd = f"--config.workdir={tmp_path / 'run'}"
    rc, err = _run_cli(capsys, f"--config.reference={tmp_path / 'nope.png'}", wd)
    assert rc == 2 and len(err) == 1 and "nope.png' does not exist" in err[0], err
    rc, err = _run_cli(capsys, f"--config.reference={art}", wd)
    assert rc == 2 and len(err) == 1 and "without a camera" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    save_ws(tmp_path / "w6.npz", np.zeros((1, 6, W_DIM)))
    rc, err = _run_cli(capsys, f"--config.reference={art}", "--config.reference_yaw=0",
                       f"--config.reference_w={tmp_path / 'w6.npz'}", wd)
    assert rc == 1 and len(err) == 1 and "w is [1, 6, 512], but the generator takes" in err[0]


@pytest.mark.slow
def test_inversion_at_start_runs_the_projector(tmp_path):
    """The real projector path (1 step on the demo generator's 32 px rendering)."""
    from jaxhead.models.panohead.demo import demo_generator

    c = validate_config(_config(tmp_path, **{"reference_invert_steps": 1,
                                             "terms.portrait.render_output": "image_raw"}))
    G, params = demo_generator(0)
    lp = demo_lpips_vgg(0)
    ref = reference.read_reference(c)
    w = reference.reference_w(c, tmp_path / "run", G, params, lp, ref)
    assert w.shape == (1, NUM_WS, W_DIM) and np.all(np.isfinite(w))
    cached, settings = reference.read_cache(tmp_path / "run" / reference.CACHE_FILE)
    assert np.array_equal(cached, w) and settings["steps"] == 1
