"""What a GPU or TPU compiles is the program its users want (issue 26).

Programs are traced here on the CPU and lowered for ``cuda`` and ``tpu`` without a device
(``.trace(...).lower(lowering_platforms=...)``, abstract inputs: nothing is allocated). The
StableHLO is searched for jaxhead's CPU-only constructs (named scopes of
:data:`jaxhead.ops.platform.CPU_SCOPES`), the accelerator attention, the dtype of the teacher's
products and CPU compiler options; the CPU lowering of the same trace must still hold the CPU
constructs (so that these checks cannot pass by the CPU paths being gone).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.models import sd_layers
from jaxhead.ops import platform
from jaxhead.ops import remat as remat_lib
from jaxhead.ops.upfirdn import conv2d

ACCELERATORS = ("cuda", "tpu")


def scopes_in(lowered) -> set[str]:
    """The CPU-only named scopes (and the accelerator attention's) in a lowered program."""
    text = lowered.as_text(debug_info=True)  # op locations: "jit(f)/.../jvp(scope)/op"
    return {s for s in (*platform.CPU_SCOPES, platform.ACCEL_ATTENTION)
            if re.search(rf"(?<![\w]){s}(?![\w])", text)}


def products(lowered, scope: str) -> list[tuple[str, list[str]]]:
    """``(op, operand types)`` of every dot and convolution whose location is under
    ``scope`` (a module or named-scope path element such as ``UNet2DConditionModel``)."""
    found = []

    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for o in block.operations:
                    name = o.operation.name
                    if name in ("stablehlo.dot_general", "stablehlo.convolution") and \
                            scope in str(o.location):
                        found.append((name, [str(v.type) for v in o.operands]))
                    walk(o.operation)

    walk(lowered.compiler_ir("stablehlo").operation)
    return found


def compiler_options_of(lowered) -> dict:
    return dict(lowered._lowering._compiler_options_kvs or ())  # what .compile() passes to XLA


def check_accelerator_program(lowered, *, attention: bool) -> None:
    """No CPU-only construct and no CPU compiler option; the accelerator attention if the
    program has attention."""
    found = scopes_in(lowered)
    leaked = found & set(platform.CPU_SCOPES)
    assert not leaked, f"CPU-only constructs in an accelerator program: {sorted(leaked)}"
    assert (platform.ACCEL_ATTENTION in found) == attention, found
    assert not compiler_options_of(lowered), compiler_options_of(lowered)


# ----------------------------------------------------------------------------------------------
# Every construct on its own (fast)
# ----------------------------------------------------------------------------------------------


def _probe(w, x, q, kv, wd, key):
    """Uses each CPU-only construct once: a rematerialised convolution whose weight gradient
    is taken (remat + wgrad GEMMs), "auto" attention over 1024 x 1024 tokens (chunked on CPU) and
    a bfloat16 dense layer (weight tie)."""

    def block(w, x, key):
        return jnp.tanh(conv2d(x, w, 1)) + jax.random.normal(key, (x.shape[-1],)) * 0

    h = remat_lib.remat(block)(w, x, key)
    a = sd_layers.attention(q, kv, kv)
    xd, wdd = sd_layers.promote_after_input(q.reshape(-1, 8).astype(jnp.bfloat16), wd)
    return jnp.sum(h ** 2) + jnp.sum(a.astype(jnp.float32)) + jnp.sum(
        (xd @ wdd).astype(jnp.float32))


_PROBE_ARGS = (jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32),
               jax.ShapeDtypeStruct((1, 16, 16, 4), jnp.float32),
               jax.ShapeDtypeStruct((1, 1024, 1, 8), jnp.float32),
               jax.ShapeDtypeStruct((1, 1024, 1, 8), jnp.float32),
               jax.ShapeDtypeStruct((8, 8), jnp.bfloat16),
               jax.eval_shape(lambda: jax.random.key(0)))


def _probe_trace():
    return jax.jit(jax.grad(_probe, argnums=(0, 2, 4))).trace(*_PROBE_ARGS)


def test_each_cpu_construct_is_lowered_for_cpu_only():
    traced = _probe_trace()
    assert scopes_in(traced.lower(lowering_platforms=("cpu",))) == set(platform.CPU_SCOPES)
    for p in ACCELERATORS:
        check_accelerator_program(traced.lower(lowering_platforms=(p,)), attention=True)


def test_jaxhead_jit_traces_once_per_platform_without_selection_left_in_the_program():
    """``jaxhead.utils.compile.jit`` traces for the lowering platform: the CPU program is the
    CPU branches alone (no ``case`` op: the program jaxhead ran before the selection existed),
    the cuda / tpu programs the accelerator branches alone."""
    from jaxhead.utils.compile import jit

    f = jit(jax.grad(_probe, argnums=(0, 2, 4)))
    traced = f.trace(*_PROBE_ARGS)
    cpu = traced.lower(lowering_platforms=("cpu",))
    assert scopes_in(cpu) == set(platform.CPU_SCOPES)
    assert "stablehlo.case" not in cpu.as_text()
    for p in ACCELERATORS:
        low = traced.lower(lowering_platforms=(p,))
        check_accelerator_program(low, attention=True)
        assert "stablehlo.case" not in low.as_text()
    assert len(traced._traced) == 2  # one trace for CPU, one shared by cuda and tpu


def test_a_cpu_path_leaking_into_the_gpu_program_is_caught(monkeypatch):
    """A selector that picks the CPU branch whatever the platform (the old
    ``jax.default_backend()`` choice on a CPU host): the checks refuse the cuda program."""
    monkeypatch.setattr(platform, "per_platform", lambda *a, cpu, accelerator: cpu(*a))
    lowered = _probe_trace().lower(lowering_platforms=("cuda",))
    with pytest.raises(AssertionError, match="CPU-only constructs"):
        check_accelerator_program(lowered, attention=True)
    assert scopes_in(lowered) == set(platform.CPU_SCOPES)


def test_forcing_either_path_by_environment(monkeypatch):
    monkeypatch.setenv(platform.FORCE_ENV, "accelerator")
    assert scopes_in(_probe_trace().lower(lowering_platforms=("cpu",))) == {
        platform.ACCEL_ATTENTION}
    monkeypatch.setenv(platform.FORCE_ENV, "cpu")
    assert scopes_in(_probe_trace().lower(lowering_platforms=("cuda",))) == set(
        platform.CPU_SCOPES)
    monkeypatch.setenv(platform.FORCE_ENV, "gpu")
    with pytest.raises(ValueError, match=platform.FORCE_ENV):
        _probe_trace()


def test_accelerator_paths_compute_the_cpu_values():
    """Run on this CPU with the accelerator branches forced: the same values and gradients
    as the CPU branches (attention to fp32 round-off; the rest as XLA's own)."""
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(s.shape), s.dtype) for s in _PROBE_ARGS[:5]]
    args.append(jax.random.key(1))
    grad = jax.grad(_probe, argnums=(0, 1, 2, 3, 4))
    cpu = jax.jit(grad)(*args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(platform.FORCE_ENV, "accelerator")
        acc = jax.jit(grad)(*args)
    for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(acc), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(a).max()))


def test_compile_jit_lowered_for_another_platform_has_no_cpu_options():
    from jaxhead.utils import compile as compile_lib

    f = compile_lib.jit(lambda x: x * 2)
    x = jax.ShapeDtypeStruct((4,), jnp.float32)
    assert compiler_options_of(f.trace(x).lower(lowering_platforms=("cpu",))) == \
        compile_lib.compiler_options("cpu")
    for p in ACCELERATORS:
        assert compiler_options_of(f.trace(x).lower(lowering_platforms=(p,))) == {}


# ----------------------------------------------------------------------------------------------
# The inversion step and the train step
# ----------------------------------------------------------------------------------------------


def _lowerings(traced, platforms=(*ACCELERATORS, "cpu")) -> dict:
    return {p: traced.lower(lowering_platforms=(p,)) for p in platforms}


def test_inversion_steps_lower_without_cpu_paths():
    """W+ projection and PTI steps (tiny PanoHead with its camera network, LPIPS-VGG16)."""
    from jaxhead.models.lpips_vgg import random_params
    from jaxhead.models.panohead import PanoHead
    from jaxhead.models.panohead.demo import demo_config
    from jaxhead.projector import Projector, ProjectorConfig, Stats
    from jaxhead.utils.compile import jit

    G = PanoHead(demo_config())
    params = G.param_shapes(t_mapping=True)
    lpips = jax.eval_shape(random_params, jax.random.key(1))
    proj = Projector(G, params, lpips, ProjectorConfig())
    stats = Stats(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in ((512,), (), (512,))))
    batch, size = 1, G.image_size
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    cams = jax.ShapeDtypeStruct((batch, 25), jnp.float32)
    tgt = jax.eval_shape(lambda p, lp, i, c, s: Projector(G, p, lp).targets(i, c, s),
                         params, lpips, images, cams, stats)
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = jax.eval_shape(lambda s: proj.init(s, batch), stats)
    pti = jax.eval_shape(lambda p: Projector(G, p, lpips).pti_init(batch), params)
    w = jax.ShapeDtypeStruct((batch, G.num_ws, G.w_dim), jnp.float32)
    steps = {"project": jit(functools.partial(proj._step, chunk=None)).trace(
                 params, lpips, state, tgt, stats, key),
             "pti": jit(proj._pti_step).trace(params, lpips, pti, tgt, w, key)}
    for name, traced in steps.items():
        # PTI differentiates the weights (the projection only w, through modulated activations:
        # no CPU-only construct in either program, so its CPU program is not traced here)
        low = _lowerings(traced, (*ACCELERATORS, "cpu") if name == "pti" else ACCELERATORS)
        if name == "pti":
            assert scopes_in(low["cpu"]) == {platform.CPU_WGRAD}
        for p in ACCELERATORS:
            check_accelerator_program(low[p], attention=False)


def _check_train_step(name: str, teacher_dtype: str, platforms=(*ACCELERATORS, "cpu")) -> None:
    from benchmarks.train_step import build_step

    b = build_step(name, teacher_dtype, abstract=True)
    low = _lowerings(b["step"].trace(b["state"], b["frozen"]), platforms)
    assert scopes_in(low["cpu"]) == set(platform.CPU_SCOPES) - (
        set() if teacher_dtype == "bfloat16" else {platform.CPU_WEIGHT_TIE})
    for p in platforms:
        if p == "cpu":
            continue
        check_accelerator_program(low[p], attention=True)
        dots = products(low[p], "UNet2DConditionModel") + products(low[p], "ControlNetModel")
        assert len(dots) > 20
        want = "bf16" if teacher_dtype == "bfloat16" else "f32"
        # every product of the teacher (UNet, ControlNets: projections, attention, convs)
        wrong = [d for d in dots if not all(t.endswith(f"x{want}>") for t in d[1])]
        assert not wrong, wrong[:3]


@pytest.mark.heavy  # 232 s on 2 busy cores: two traces of the demo step (-m heavy)
def test_demo_train_step_with_sd_teacher_lowers_without_cpu_paths():
    """The demo step with its tiny random SD stack in bfloat16 (every construct of the
    paper's step at toy size; the full-size step is the heavy test below)."""
    _check_train_step("demo_sd", "bfloat16")


@pytest.mark.heavy  # 108 s on 2 idle cores (two traces of the full step), more when busy
@pytest.mark.parametrize("teacher_dtype", ["bfloat16"])
def test_paper_train_step_lowers_without_cpu_paths(teacher_dtype):
    """The paper's step (released PanoHead, SD 1.5 UNet + 2 ControlNets, VAE, LPIPS; random
    weights as shapes only) lowered for cuda and tpu."""
    _check_train_step("full", teacher_dtype)
