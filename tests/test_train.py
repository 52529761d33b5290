"""The training program on the demo config (tiny random models built in code)."""

import hashlib
import json
import os
from pathlib import Path

import jax
import jaxlib
import numpy as np
import pytest
from train_testlib import micro_config

from configs import demo
from jaxhead import train
from jaxhead.models.panohead import load_panohead
from jaxhead.training import checkpoint as checkpoint_lib
from jaxhead.training import step as step_lib
from jaxhead.training.views import enabled_views
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


def numerics_key() -> dict[str, str]:
    """What XLA:CPU's float results depend on besides the program: the jaxlib version and the
    CPU's widest vector instructions (AVX-512 and AVX2 machines sum in different orders)."""
    import platform

    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    isa = next((f for f in ("avx512f", "avx2", "neon", "asimd") if f" {f}" in flags),
               platform.machine())
    return {"jaxlib": jaxlib.__version__, "cpu": f"{platform.machine()}-{isa}"}


def _reference_for(refs: list[dict], key: dict[str, str]) -> dict | None:
    """The recorded reference of this machine's numerics: the entry of the same jaxlib and CPU,
    else one of the same jaxlib recorded before the CPU was part of the key ("cpu": null)."""
    same = [r for r in refs if r["recorded_with"]["jaxlib"] == key["jaxlib"]]
    return (next((r for r in same if r["recorded_with"].get("cpu") == key["cpu"]), None)
            or next((r for r in same if r["recorded_with"].get("cpu") is None), None))


def _check_reference(name: str, summary, workdir) -> None:
    """Compare the run's parameters and logged metrics with this machine's recorded reference
    (``REFERENCE``: a list of references, one per :func:`numerics_key`; recorded with
    ``JAXHEAD_RECORD_REFERENCE=1``, which adds or replaces this machine's entry)."""
    metrics = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    keep = ("ld_single", "ld_grid", "tweedie", "lpips", "ldis", "grad_norm", "update_norm")
    got = {"params": _digest(summary),
           "metrics": [{k: m[k] for k in keep if k in m} for m in metrics]}
    key = numerics_key()
    refs = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else []
    if os.environ.get("JAXHEAD_RECORD_REFERENCE"):
        mine = next((r for r in refs if r["recorded_with"] == key), None)
        if mine is None:
            refs.append(mine := {"recorded_with": key})
        mine[name] = got
        REFERENCE.write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded the {name!r} reference for {key}")
    ref = _reference_for(refs, key)
    if ref is None or name not in ref:
        pytest.skip(f"no {name!r} reference recorded for {key} (XLA's CPU numerics differ "
                    "between jaxlib versions and vector ISAs): record one with "
                    "JAXHEAD_RECORD_REFERENCE=1")
    want = ref[name]
    assert got["metrics"] == want["metrics"]
    diff = [k for k in want["params"] if got["params"].get(k) != want["params"][k]]
    assert got["params"].keys() == want["params"].keys()
    assert not diff, f"{len(diff)} of {len(want['params'])} leaves differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo pipeline end to end (single view + mirror + grid), 2 steps on a fixed batch
    with the pure distillation objective (no Tweedie / LDIS terms)."""
    c = demo.get_config()
    c.demo_teacher = "random_sd"  # the real teacher path (random-weight SD stack)
    c.steps = 2
    c.fixed_batch = True
    # every term of the step is on (the bitwise reference covers them), the extra terms at
    # negligible weights so that the step is the pure distillation update
    c.tweedie_weight = 1e-6
    c.ldis_weight = 1e-6
    c.final_turntable_frames = 8
    c.lpips_weight = 1e-6  # LPIPS(alex) with random weights in the step (negligible weight)
    c.split_backward = False  # the recorded reference is the one-pass step (see the test of
    #                           split_backward for the equality of the two)
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
    from jaxhead.training.demo import build_models

    _, fresh = build_models(c)
    fa = params_io.flatten(jax.device_get(fresh["generator"]))
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(a[k]), err_msg=k)


def test_demo_run_reduces_the_distillation_surrogate(demo_run):
    """On the fixed batch, each view's own distillation loss with the gradients g0 of the
    initial generator held fixed, <g0, latents(theta)>, is lower after training than before."""
    _, built, state0, summary, _ = demo_run
    cfg = built.config
    keys = step_lib.step_keys(state0, cfg)

    @jax.jit
    def aux_at(trainable, state, frozen):
        _, aux = step_lib.loss_and_aux(trainable, state, frozen, keys, models=built.models,
                                       config=cfg)
        return {k: v for k, v in aux.items() if k.startswith(("g_", "lat_"))}

    aux0 = aux_at(state0.params, state0, built.frozen)
    aux1 = aux_at(summary["state"].params, state0, built.frozen)
    views = enabled_views(cfg)
    assert [v.name for v in views] == ["single", "grid"]

    def surrogate(aux):
        return sum(float(v.distill_loss(aux[f"lat_{v.name}"], aux0[f"g_{v.name}"]))
                   for v in views)

    s0, s1 = surrogate(aux0), surrogate(aux1)
    assert s1 < s0, (s0, s1)


def test_demo_steps_match_the_recorded_reference(demo_run):
    """The demo's first two steps (single + mirror + grid, LPIPS, Tweedie, LDIS) give
    bitwise the parameters recorded before the trainer's refactor."""
    _, _, _, summary, wd = demo_run
    _check_reference("demo", summary, wd)


def _gradient_from_adam(opt_state, b1: float):
    """The gradient of a step taken from a fresh Adam state: its first moment is (1 - b1) g
    (trainable leaves; the frozen biases have no Adam state)."""
    import optax

    found = [s for s in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return jax.tree.map(lambda m: np.asarray(m) / (1.0 - b1), jax.device_get(found[0].mu))


@pytest.mark.heavy  # a second compile of the demo step: ~2.5 minutes (run with -m heavy)
def test_split_backward_gives_the_one_pass_gradient(demo_run):
    """``split_backward`` (one backward pass per view, summed; the default) gives the demo's
    one-pass gradient to fp32 round-off, and the same loss terms and term state. The one-pass
    step is the demo run's own compiled step (its config has ``split_backward=False``)."""
    from jaxhead.training.config import validate_config
    from jaxhead.training.optim import make_optimizer

    c, built, _, _, _ = demo_run
    assert built.config.split_backward is False and c.optimizer.name == "adam"
    new0, m0 = built.step(built.init(), built.frozen)  # donates the fresh state
    cfg = built.config.as_configdict()
    cfg.split_backward = True
    cfg = validate_config(cfg)
    opt = make_optimizer(cfg)
    split_step = jax.jit(lambda st, fr: step_lib.train_step(
        st, fr, models=built.models, config=cfg, optimizer=opt))
    new1, m1 = split_step(built.init(), built.frozen)
    b1 = c.optimizer.b1
    g0 = _gradient_from_adam(new0.opt_state, b1)
    g1 = _gradient_from_adam(new1.opt_state, b1)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g0))
    assert scale > 0
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5 * scale, rtol=0)
    m0, m1 = jax.device_get((m0, m1))
    assert set(m0) == set(m1)
    # the surrogates are sums <grad, latents> that cancel to ~1e-3 from O(1) summands: their
    # fp32 round-off is absolute (the split run differs by 2e-8 in ld_grid = 9e-4)
    for k in ("ld_single", "ld_grid", "tweedie", "lpips", "ldis"):
        assert m1[k] == pytest.approx(m0[k], rel=1e-5, abs=1e-7), k
    ts0, ts1 = jax.device_get((new0.term_state, new1.term_state))
    for a, b in zip(jax.tree.leaves(ts0), jax.tree.leaves(ts1), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def micro():
    """One build of the grid-only config, shared by the tests that run it several times."""
    c = micro_config(steps=4, checkpoint_every=2)
    return c, train.build(c)


def test_resume_follows_the_uninterrupted_trajectory(tmp_path, micro):
    c4, built = micro
    straight = train.train_and_evaluate(c4, tmp_path / "a", progress=False, built=built)
    _check_reference("micro", straight, tmp_path / "a")
    c2 = micro_config(steps=2, checkpoint_every=2)
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


def test_resume_after_a_kill_logs_each_step_once(tmp_path, micro, monkeypatch):
    """Killed while saving step 3's checkpoint (metrics of step 3 already logged): the resumed
    run restores step 2 and its metrics.jsonl holds each step once."""
    from jaxhead.training import checkpoint

    c4, built = micro
    save = checkpoint.save

    def dying_save(mgr, state):
        if int(jax.device_get(state.step)) == 3:
            raise KeyboardInterrupt("killed while checkpointing step 3")
        save(mgr, state)

    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(micro_config(steps=4, checkpoint_every=1), tmp_path,
                                 progress=False, built=built)
    monkeypatch.setattr(checkpoint, "save", save)
    rows = lambda: [json.loads(x)["step"]  # noqa: E731
                    for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows() == [1, 2, 3]
    train.train_and_evaluate(micro_config(steps=4, checkpoint_every=1), tmp_path, progress=False,
                             built=built)
    assert rows() == [1, 2, 3, 4]


def _poison(tree, path: str):
    """``tree`` with the leaves under ``path`` (``/``-joined) replaced by NaN."""
    flat = params_io.flatten(jax.device_get(tree))
    hit = [k for k in flat if k.startswith(path)]
    assert hit, path
    for k in hit:
        flat[k] = np.full(np.shape(flat[k]), np.nan, np.asarray(flat[k]).dtype)
    return params_io.unflatten(flat)


def test_non_finite_steps_are_skipped_and_never_saved(tmp_path, micro):
    """A generator whose frozen decoder is NaN: every step is skipped (no update, counted),
    checkpoints stay finite, and the run stops with one clear error after
    ``max_skipped_steps`` consecutive skips; the good model then resumes normally."""
    from jaxhead.errors import TrainingDiverged

    c4, built = micro
    frozen = dict(built.frozen)
    frozen["generator"] = jax.device_put(
        _poison(built.frozen["generator"], "params/decoder/"),
        jax.tree.map(lambda x: x.sharding, built.frozen["generator"]))
    poisoned = built._replace(frozen=frozen)
    c = micro_config(steps=4, checkpoint_every=2, max_skipped_steps=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        train.train_and_evaluate(c, tmp_path, progress=False, built=poisoned)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [1.0, 1.0, 1.0]
    init = jax.device_get(built.init())
    mgr = checkpoint_lib.manager(tmp_path, 3)
    assert list(mgr.all_steps()) == [2]  # saved before the stop, and finite: the initial params
    saved = checkpoint_lib.restore_latest(mgr, built.init())
    for x, y in zip(jax.tree.leaves(jax.device_get(saved.params)), jax.tree.leaves(init.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    out = train.train_and_evaluate(c, tmp_path, progress=False, built=built)
    assert out["step"] == 4 and out["metrics"]["skipped"] == 0.0


def test_nan_teacher_skips_the_update(demo_run):
    """A teacher answering NaN: the LD gradients are cleaned (nan_to_num) but the Tweedie and
    LPIPS terms carry NaN; the step applies nothing and reports it."""
    _, built, _, _, _ = demo_run
    frozen = dict(built.frozen)
    frozen["teacher"] = jax.device_put(
        _poison(built.frozen["teacher"], "unet/conv_in/"),
        jax.tree.map(lambda x: x.sharding, built.frozen["teacher"]))
    state = built.init()
    before = jax.device_get(state.params)
    new, m = built.step(state, frozen)
    m = jax.device_get(m)
    assert float(m["skipped"]) == 1.0 and not np.isfinite(float(m["tweedie"]))
    assert int(new.step) == 1
    for x, y in zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(before),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_workdir_with_a_different_config_is_refused_before_anything_is_written(tmp_path):
    from jaxhead.errors import UsageError
    from jaxhead.training.config import validate_config
    from jaxhead.training.workdir import check_resume

    c = demo.get_config()
    (tmp_path / "config.json").write_text(validate_config(c).to_json_best_effort(indent=1))
    saved = (tmp_path / "config.json").read_text()
    c.prompt = "Portrait of a werewolf"
    c.optimizer.lr = 0.05
    c.batch_size = 2
    with pytest.raises(UsageError) as e:
        train.train_and_evaluate(c, tmp_path, progress=False)
    msg = str(e.value)
    assert "prompt" in msg and "optimizer.lr" in msg and "batch_size" in msg
    assert "resume_changed" in msg
    assert (tmp_path / "config.json").read_text() == saved
    c.resume_changed = ("prompt", "optimizer.lr", "batch_size")
    check_resume(tmp_path, validate_config(c))  # explicitly allowed
    c = demo.get_config()
    c.steps = 100
    c.log_every = 5
    check_resume(tmp_path, validate_config(c))  # harmless fields may change


def test_fields_added_after_a_run_resume_at_their_default(tmp_path):
    """A workdir saved before a config field existed resumes when the field holds its
    default; set to anything else, the field is a change like any other."""
    from jaxhead.errors import UsageError
    from jaxhead.training.config import validate_config
    from jaxhead.training.workdir import check_resume

    c = demo.get_config()
    saved = json.loads(validate_config(c).to_json_best_effort())
    del saved["tweedie_weight"]  # as written by a version without the field
    (tmp_path / "config.json").write_text(json.dumps(saved))
    defaults = train.base_defaults()
    check_resume(tmp_path, validate_config(c), defaults)
    with pytest.raises(UsageError, match="tweedie_weight"):  # without defaults: a change
        check_resume(tmp_path, validate_config(c))
    c.tweedie_weight = 0.3  # the "new" field away from its default: a change
    with pytest.raises(UsageError, match="tweedie_weight"):
        check_resume(tmp_path, validate_config(c), defaults)
    c.tweedie_weight = 0.1
    c.ldis_weight = 0.5  # a field the saved run has: refused as before
    with pytest.raises(UsageError, match="ldis_weight"):
        check_resume(tmp_path, validate_config(c), defaults)
    c = demo.get_config()
    c.coordinator_address = "host0:1234"  # new and resumable anyway
    c.preview_identities = 1
    check_resume(tmp_path, validate_config(c), defaults)
    saved["demo_teacher"] = "random_sd"
    del saved["coordinator_address"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UsageError, match="demo_teacher"):
        check_resume(tmp_path, validate_config(demo.get_config()))


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


def test_outside_objective_and_depth_anything_control_train_a_step(tmp_path):
    """An objective registered from outside the package (the README's recipe) trains a demo
    step, tuned through objective_kw; the grid control is Depth Anything (a tiny random one)
    inside the jitted step. (One compile for both: CI time.)"""
    from jaxhead.losses import OBJECTIVES, register_objective

    seen = []

    def csd_grad(eps_uncond, eps_cond, *, noise, alpha_bar, guidance_scale=7.5, power=0.5):
        del noise
        seen.append((guidance_scale, power))
        return guidance_scale * (eps_cond - eps_uncond) * alpha_bar[:, None, None, None] ** power

    register_objective("csd_outside", csd_grad, power=0.5)
    try:
        c = micro_config(**{"grid.control": "depth_anything", "objective": "csd_outside"})
        c.objective_kw.power = 1.0
        b = train.build(c)
        assert b.models.depth is not None
        state, m = b.step(b.init(), b.frozen)
    finally:
        OBJECTIVES.pop("csd_outside")
    assert seen == [(7.5, 1.0)]
    m = jax.device_get(m)
    assert np.isfinite(float(m["ld_grid"])) and float(m["rms_g_grid"]) > 0
    assert float(m["update_norm"]) > 0 and float(m["skipped"]) == 0.0


def test_missing_control_weights_stop_the_run(tmp_path):
    """A selected control whose weights are missing stops the run before any compute (no
    silent fallback to the renderer's depth); the renderer's depth only when chosen."""
    from configs import pixar
    from jaxhead.errors import MissingWeightsError
    from jaxhead.training.models import missing_weights

    c = pixar.get_config()
    c.models.depth_anything = str(tmp_path / "da")
    c.single.control = "depth_anything"
    msg = "\n".join(missing_weights(c))
    assert "convert_weights.depth_anything" in msg
    assert "grid.control=depth_anything" in msg and "single.control=depth_anything" in msg
    with pytest.raises(MissingWeightsError, match="convert_weights.depth_anything"):
        train.build(c)
    c.single.control = "canny"
    c.grid.control = "renderer_depth"
    assert "depth_anything" not in "\n".join(missing_weights(c))
    params_io.save_params(tmp_path / "da", {"w": np.zeros(1, np.float32)}, {"model": "x"})
    c.grid.control = "depth_anything"
    assert "depth_anything" not in "\n".join(missing_weights(c))


@pytest.mark.heavy  # the shipped demo's 8 steps: ~2 minutes (run with -m heavy)
def test_demo_as_shipped_visibly_restyles_every_head_and_view(tmp_path):
    """``configs/demo.py`` as a newcomer runs it (the analytic Gaussian demo teacher, single
    view + mirror + grid, rank weighting): every head's colour moves towards the palette in
    every view (front, sides, back) and turns greener, and the run reports it."""
    from jaxhead.training.demo_teacher import head_colours, palette_rgb, toward_palette
    from jaxhead.training.optim import merge
    from jaxhead.training.sampling import conditioning_ws

    c = demo.get_config()
    assert c.demo_teacher == "gaussian"
    c.final_turntable_identities = 0
    c.preview_every = 0
    built = train.build(c)
    summary = train.train_and_evaluate(c, tmp_path, progress=False, built=built)
    before, after = summary["head_colours"]
    assert before.shape == (c.preview_identities, 4, 3)
    G, fg = built.models.G, built.frozen["generator"]
    z = jax.random.normal(jax.random.key(7), (3, G.z_dim))  # identities other than the run's
    c0, c1 = jax.device_get(jax.jit(lambda tr: head_colours(
        G, fg, merge(fg, tr), conditioning_ws(G, built.config, fg, z)))(
            summary["state"].params))
    for b, a in ((before, after), (np.asarray(c0), np.asarray(c1))):
        moved = toward_palette(b, a)
        assert np.all(moved > 0.25), moved  # every identity, every view (a sign error: < 0)
        assert moved.mean() > 0.5, moved
        # the green of the palette: the heads become greener than they were
        assert np.all(a[..., 1] - b[..., 1] > 0.2), (b, a)
    assert palette_rgb()[1] > 0.3
