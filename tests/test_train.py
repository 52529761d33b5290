"""The training program on the demo config (tiny random models built in code)."""

import hashlib
import json
import os
from pathlib import Path

import jax
import jaxlib
import numpy as np
import pytest

from configs import demo
from jaxhead import train
from jaxhead.models.panohead import load_panohead
from jaxhead.training import step as step_lib
from jaxhead.utils import params_io

pytestmark = pytest.mark.slow  # several minutes of CPU compile and compute (still run in CI)

REFERENCE = Path(__file__).parent / "fixtures" / "train_reference.json"


def _digest(summary) -> dict[str, str]:
    """sha256 of each trainable leaf (path -> hex), bytes + dtype + shape."""
    flat = params_io.flatten(jax.device_get(summary["state"].params))
    out = {}
    for k in sorted(flat):
        a = np.ascontiguousarray(np.asarray(flat[k]))
        h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
        out[k] = h.hexdigest()[:16]
    return out


def _check_reference(name: str, summary, workdir) -> None:
    """Compare the run's parameters and logged metrics with ``REFERENCE[name]`` (recorded once
    with ``JAXHEAD_RECORD_REFERENCE=1``, before the trainer's refactor)."""
    metrics = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    keep = ("ld_single", "ld_grid", "tweedie", "lpips", "ldis", "grad_norm", "update_norm")
    got = {"params": _digest(summary),
           "metrics": [{k: m[k] for k in keep if k in m} for m in metrics]}
    if os.environ.get("JAXHEAD_RECORD_REFERENCE"):
        ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
        ref[name] = got
        ref["recorded_with"] = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
        REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded the {name!r} reference")
    ref = json.loads(REFERENCE.read_text())
    if ref["recorded_with"]["jaxlib"] != jaxlib.__version__:
        pytest.skip(f"reference recorded with jaxlib {ref['recorded_with']['jaxlib']}, "
                    f"running {jaxlib.__version__}: XLA's CPU numerics may differ")
    want = ref[name]
    assert got["metrics"] == want["metrics"]
    diff = [k for k in want["params"] if got["params"].get(k) != want["params"][k]]
    assert got["params"].keys() == want["params"].keys()
    assert not diff, f"{len(diff)} of {len(want['params'])} leaves differ, e.g. {diff[:3]}"


def _micro(**over):
    """Grid-only demo config (no 512 px SR in the step): the cheap variant for the tests that
    need several runs."""
    c = demo.get_config()
    c.single.enabled = False
    c.final_turntable_identities = 0
    c.preview_every = 0
    c.log_every = 1
    for k, v in over.items():
        target = c
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo pipeline end to end (single view + mirror + grid), 2 steps on a fixed batch
    with the pure distillation objective (no Tweedie / LDIS terms)."""
    c = demo.get_config()
    c.steps = 2
    c.fixed_batch = True
    # every term of the step is on (the bitwise reference covers them), the extra terms at
    # negligible weights so that the step is the pure distillation update
    c.tweedie_weight = 1e-6
    c.ldis_weight = 1e-6
    c.final_turntable_frames = 8
    c.lpips_weight = 1e-6  # LPIPS(alex) with random weights in the step (negligible weight)
    # Adam's first steps move every parameter by about lr whatever its gradient, so the
    # first-order decrease of the surrogate holds only for small steps: one step of lr 1e-5 /
    # 1e-4 / 1e-3 takes it from -3.9e-4 to -6.4e-4 / -6.2e-4 / -2.1e-4 on this batch.
    c.optimizer.lr = 1e-5
    wd = tmp_path_factory.mktemp("demo_run")
    built = train.build(c)
    state0 = built.init()
    summary = train.train_and_evaluate(c, wd, progress=False, built=built)
    return c, built, state0, summary, wd


def test_demo_run_outputs(demo_run):
    c, _, _, summary, wd = demo_run
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for x in lines:
        assert {"ld_single", "ld_grid", "lpips", "grad_norm"} <= set(x)
        assert 0 < x["lpips"] < 1e-4
        assert all(np.isfinite(v) for v in x.values())
    assert (wd / "previews" / "000002_views.png").is_file()
    assert (wd / "previews" / "000002_grid.png").is_file()
    assert (wd / "checkpoints" / "2").is_dir()
    assert (wd / "turntables" / "seed0000_turntable.gif").is_file()
    assert json.loads((wd / "config.json").read_text())["prompt"] == c.prompt


def test_stylized_generator_changes_only_trainable_non_bias_params(demo_run):
    c, built, _, summary, wd = demo_run
    G, stylized = load_panohead(wd / "generator")  # the export renders with jaxhead.render
    frozen = jax.device_get(built.frozen["generator"])
    a, b = params_io.flatten(frozen), params_io.flatten(stylized)
    assert a.keys() == b.keys()
    changed = {k for k in a if not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))}
    assert changed, "training changed nothing"
    for k in changed:
        assert k.startswith(("params/backbone/synthesis/", "params/superresolution/")), k
        assert not k.endswith("/bias"), k
    assert any(k.startswith("params/superresolution/") for k in changed)
    assert any(k.startswith("params/backbone/synthesis/") for k in changed)
    # the frozen copy used by the run is untouched (equal to a freshly built demo generator)
    from jaxhead.training.models import build_models

    _, fresh = build_models(c)
    fa = params_io.flatten(jax.device_get(fresh["generator"]))
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(a[k]), err_msg=k)


def test_demo_run_reduces_the_distillation_surrogate(demo_run):
    """On the fixed batch, the LD surrogate <g0, latents(theta)> (gradients g0 of the initial
    generator held fixed) is lower after training than before."""
    c, built, state0, summary, _ = demo_run
    sc = step_lib.StepConfig.from_config(c)
    key = step_lib.step_key(state0, sc)

    @jax.jit
    def aux_at(trainable, state):
        _, aux = step_lib.loss_and_aux(trainable, state, built.frozen, key, models=built.models,
                                       sc=sc)
        return {k: aux[k] for k in ("g_single", "lat_single", "g_grid", "lat_grid")}

    aux0 = aux_at(state0.params, state0)
    aux1 = aux_at(summary["state"].params, state0)
    s0 = float(step_lib.surrogate(aux0, aux0, sc))
    s1 = float(step_lib.surrogate(aux1, aux0, sc))
    assert s1 < s0, (s0, s1)


def test_demo_steps_match_the_recorded_reference(demo_run):
    """The demo's first two steps (single + mirror + grid, LPIPS, Tweedie, LDIS) give
    bitwise the parameters recorded before the trainer's refactor."""
    _, _, _, summary, wd = demo_run
    _check_reference("demo", summary, wd)


def test_resume_follows_the_uninterrupted_trajectory(tmp_path):
    c4 = _micro(steps=4, checkpoint_every=2)
    built = train.build(c4)
    straight = train.train_and_evaluate(c4, tmp_path / "a", progress=False, built=built)
    _check_reference("micro", straight, tmp_path / "a")
    c2 = _micro(steps=2, checkpoint_every=2)
    train.train_and_evaluate(c2, tmp_path / "b", progress=False, built=built)
    resumed = train.train_and_evaluate(c4, tmp_path / "b", progress=False, built=built)
    assert resumed["step"] == straight["step"] == 4
    sa, sb = straight["state"], resumed["state"]
    for x, y in zip(jax.tree.leaves(jax.device_get(sa)), jax.tree.leaves(jax.device_get(sb)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1]
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(ma)["ld_grid"] == json.loads(mb)["ld_grid"]


def test_sharded_step_matches_single_device():
    """4 CPU devices, identities split over the data axis: same update as one device."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    out = {}
    for n in (1, 4):
        c = _micro(batch_size=4, num_devices=n, **{"optimizer.name": "sgd",
                                                    "optimizer.lr": 1.0})
        b = train.build(c)
        state, m = b.step(b.init(), b.frozen)
        if n == 4:
            sh = state.prev_planes.sharding
            assert sh.spec[0] == "data" and len(sh.device_set) == 4
        out[n] = (jax.device_get(state.params), {k: float(v) for k, v in m.items()},
                  jax.device_get(b.init().params))
    (p1, m1, init1), (p4, m4, _) = out[1], out[4]
    for k in ("ld_grid", "ldis"):
        assert m1[k] == pytest.approx(m4[k], rel=1e-3), k
    # SGD with lr 1: the update is the gradient itself
    g1 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p1, init1)
    g4 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p4, init1)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g1))
    assert scale > 0
    err = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(g1),
                                                        jax.tree.leaves(g4), strict=True))
    assert err <= 2e-3 * scale, (err, scale)


def test_config_errors_before_compute(tmp_path):
    c = demo.get_config()
    c.grid.mode = "sideways"
    c.truncation_psi = 1.5
    with pytest.raises(ValueError) as e:
        train.train_and_evaluate(c, tmp_path)
    assert "grid.mode" in str(e.value) and "truncation_psi" in str(e.value)
    with pytest.raises(AttributeError):
        c.not_a_field  # noqa: B018
    # missing real weights: one message naming every missing piece and its convert command
    from configs import pixar

    c = pixar.get_config()
    c.models.generator = str(tmp_path / "nope")
    c.models.sd = str(tmp_path / "nosd")
    with pytest.raises(FileNotFoundError) as e:
        train.build(c)
    msg = str(e.value)
    assert "convert_weights.panohead" in msg and "convert_weights.diffusers" in msg
    assert "controlnet_edge" in msg and "controlnet_depth" in msg
    assert "convert_weights.lpips" in msg  # lpips_weight 0.05 by default
    c.lpips_weight = 0.0
    with pytest.raises(FileNotFoundError) as e:
        train.build(c)
    assert "lpips" not in str(e.value)
    c.lpips_weight = -1.0
    with pytest.raises(ValueError, match="lpips_weight must be >= 0"):
        train.train_and_evaluate(c, tmp_path / "neg")


def test_depth_anything_grid_control(tmp_path):
    """Grid control from Depth Anything (a tiny random one) inside the jitted step."""
    c = _micro(**{"grid.control": "depth_anything"})
    b = train.build(c)
    assert b.models.grid_control == "depth_anything" and b.models.depth is not None
    state, m = b.step(b.init(), b.frozen)
    m = jax.device_get(m)
    assert np.isfinite(float(m["ld_grid"])) and float(m["rms_g_grid"]) > 0


def test_grid_control_resolution(tmp_path):
    """'depth' uses Depth Anything when its converted weights exist, else the renderer depth."""
    from configs import pixar
    from jaxhead.training.models import _resolve_grid_control

    c = pixar.get_config()
    c.models.depth_anything = str(tmp_path / "da")
    assert _resolve_grid_control(c) == "renderer_depth"
    params_io.save_params(tmp_path / "da", {"w": np.zeros(1, np.float32)}, {"model": "x"})
    assert _resolve_grid_control(c) == "depth_anything"
    c.grid.control = "renderer_depth"
    assert _resolve_grid_control(c) == "renderer_depth"
    c.grid.enabled = False
    assert _resolve_grid_control(c) == "none"
