"""The sharded training step: one process with 1 and with 4 (fake CPU) devices, and the train
CLI as 2 processes x 2 devices (``jax.distributed`` over localhost, gloo collectives), all
giving the same update.

Its own module: the two trainer processes need ~9 GB each at their peak, so they run first,
before this process builds anything (the conftest has released the previous modules' compiled
programs by then); the in-process references are computed afterwards."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from train_testlib import SHARDED, max_err, micro_config

from jaxhead import train
from jaxhead.generators import load_generator
from jaxhead.training.optim import merge

pytestmark = pytest.mark.slow  # two trainer processes: ~2.5 minutes on 2 cores (still run in CI)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """``python -m jaxhead.train`` as 2 processes x 2 devices, one SGD (lr 1) step of the
    grid-only config with 4 identities and previews: ``(workdir, [stdout of each])``."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    wd = tmp_path_factory.mktemp("two_processes") / "mh"
    port = _free_port()
    flags = ["--config", "configs/demo.py", "--config.demo_teacher=random_sd",
             "--config.single.enabled=False",
             "--config.final_turntable_identities=0", "--config.preview_every=1",
             "--config.steps=1", "--config.compilation_cache=", f"--config.workdir={wd}",
             "--config.distributed=True", f"--config.coordinator_address=localhost:{port}",
             "--config.num_processes=2"]
    flags += [f"--config.{k}={v}" for k, v in SHARDED.items()]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-m", "jaxhead.train", *flags,
                               f"--config.process_id={i}"], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    try:
        for pr in procs:
            outs.append(pr.communicate(timeout=900)[0])
    finally:  # a failed or hung peer would otherwise wait on its collectives forever
        for q in procs:
            if q.poll() is None:
                q.kill()
    for i, (pr, out) in enumerate(zip(procs, outs, strict=True)):
        assert pr.returncode == 0, f"process {i} exited with {pr.returncode}:\n{out[-3000:]}"
    return wd, outs


@pytest.fixture(scope="module")
def sharded_steps():
    """One SGD (lr 1) step of the grid-only config with 4 identities in this process on 1 and
    on 4 devices: ``{n: (params, metrics, initial params, frozen generator)}``."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    out = {}
    for n in (1, 4):  # on 4 devices the teacher is sharded too (models.shard_teacher)
        b = train.build(micro_config(num_devices=n, **SHARDED,
                                     **{"models.shard_teacher": n == 4}))
        state, m = b.step(b.init(), b.frozen)
        if n == 4:
            sh = state.term_state["ldis"].prev.sharding
            assert sh.spec[0] == "data" and len(sh.device_set) == 4
            # the demo teacher's one tensor of >= 64 Ki values lives in quarters
            big = [x for x in jax.tree.leaves(b.frozen["teacher"]) if x.size >= 1 << 16]
            assert big and all(x.addressable_shards[0].data.size * 4 == x.size for x in big)
        out[n] = (jax.device_get(state.params), {k: float(v) for k, v in m.items()},
                  jax.device_get(b.init().params), jax.device_get(b.frozen["generator"]))
    return out


@pytest.mark.heavy  # two trainer processes: ~4 minutes (run with -m heavy)
# the two-process run is requested first: its fixture then runs before sharded_steps compiles
def test_two_processes_train_like_one(two_process_run, sharded_steps):
    """One identity per device: the exported generator equals the single-process 4-device
    step's, process 0 alone reports and writes the workdir, and the previews (rendered by
    every process: their identities are sharded too) are written once."""
    wd, outs = two_process_run
    assert "4 device(s)" in outs[0] and "4 device(s)" not in outs[1]  # process 0 reports
    assert len((wd / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (wd / "previews").iterdir()) == [
        "000001_grid.png", "000001_views.png"]
    _, params = load_generator(wd / "generator")
    p4, _, init, frozen_g = sharded_steps[4]
    scale = max_err(p4, init)
    assert scale > 0
    err = max_err(params, merge(frozen_g, p4))
    assert err <= 1e-5 * scale, (err, scale)


def test_sharded_step_matches_single_device(sharded_steps):
    """4 CPU devices, identities split over the data axis and the teacher's large tensors
    split across the devices: same update as one device."""
    (p1, m1, init1, _), (p4, m4, _, _) = sharded_steps[1], sharded_steps[4]
    for k in ("ld_grid", "ldis"):
        assert m1[k] == pytest.approx(m4[k], rel=1e-3), k
    # SGD with lr 1: the update is the gradient itself
    g1 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p1, init1)
    g4 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p4, init1)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g1))
    assert scale > 0
    err = max_err(g1, g4)
    assert err <= 2e-3 * scale, (err, scale)


def test_teacher_sharding_places_each_tensor_once():
    """``models.shard_teacher``: large teacher tensors split along their largest axis that the
    device count divides, small or indivisible ones (and everything but the teacher)
    replicated; the placement never makes a replicated copy first."""
    from configs import demo
    from jaxhead.training import sharding

    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices")
    c = demo.get_config()
    c.batch_size = c.num_devices = 4
    c.models.shard_teacher = True
    mesh = sharding.make_mesh(c)
    frozen = {"generator": {"w": np.ones((512, 512), np.float32)},
              "teacher": {"conv": np.ones((3, 3, 320, 640), np.float32),
                          "odd": np.ones((3, 3, 321, 321), np.float32),
                          "bias": np.ones((640,), np.float32)}}
    sh = sharding.frozen_shardings(frozen, mesh, c)
    assert tuple(sh["teacher"]["conv"].spec) == (None, None, None, "data")
    assert tuple(sh["teacher"]["odd"].spec) == () and tuple(sh["teacher"]["bias"].spec) == ()
    assert tuple(sh["generator"]["w"].spec) == ()
    placed = sharding.place_frozen(frozen, mesh, c)
    assert placed["teacher"]["conv"].addressable_shards[0].data.shape == (3, 3, 320, 160)
    np.testing.assert_array_equal(np.asarray(placed["teacher"]["conv"]), frozen["teacher"]["conv"])
    c.models.shard_teacher = False
    assert all(tuple(s.spec) == () for s in
               jax.tree.leaves(sharding.frozen_shardings(frozen, mesh, c)))
