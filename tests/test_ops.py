"""Low-level ops against their PyTorch definitions (torch is a test extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from jaxhead.ops.grid_sample import grid_sample_3d  # noqa: E402
from jaxhead.ops.resize import resize_bicubic_pil, resize_bilinear  # noqa: E402
from jaxhead.ops.upfirdn import conv2d_up2, setup_filter, upfirdn2d, upsample2d  # noqa: E402
from tests.image_testlib import edge_image  # noqa: E402


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("in_size,out_size,align,aa", [
    (128, 32, False, True), (128, 64, False, True), (64, 128, False, True),
    (37, 16, False, True), (16, 64, True, False), (20, 13, False, False), (64, 256, True, False),
])
def test_resize_matches_torch_interpolate(in_size, out_size, align, aa):
    x = np.random.default_rng(0).normal(size=(2, in_size, in_size, 3)).astype(np.float32)
    got = np.asarray(resize_bilinear(jnp.asarray(x), out_size, align_corners=align,
                                     antialias=aa))
    ref = _nhwc(F.interpolate(_nchw(x), size=(out_size, out_size), mode="bilinear",
                              align_corners=align, antialias=aa))
    np.testing.assert_allclose(got, ref, atol=2e-6)


@pytest.mark.parametrize("hw,out", [((512, 512), (224, 224)), ((61, 45), (43, 32)),
                                    ((17, 23), (32, 43)), ((40, 40), (40, 16))])
def test_resize_bicubic_matches_pillow(hw, out):
    """uint8: bit-identical to Pillow (down, up, one axis only); float: the same taps without
    the 8-bit rounding, within about one level of Pillow."""
    from PIL import Image

    x = np.stack([edge_image(*hw, seed=s) for s in (0, 1)])
    ref = np.stack([np.asarray(Image.fromarray(a).resize(out[::-1], Image.BICUBIC)) for a in x])
    got = np.asarray(resize_bicubic_pil(jnp.asarray(x), out))
    assert got.dtype == np.uint8 and got.shape == (2, *out, 3)
    np.testing.assert_array_equal(got, ref)
    f = np.asarray(resize_bicubic_pil(jnp.asarray(x / 255.0, jnp.float32), out)) * 255
    diff = np.abs(f - ref)
    assert diff.max() < 1.2 and diff.mean() < 0.4, (diff.max(), diff.mean())


def test_grid_sample_3d_matches_torch():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(3, 4, 6, 5, 7)).astype(np.float32)  # [B, D, H, W, C]
    pts = rng.uniform(-1.3, 1.3, size=(3, 200, 3)).astype(np.float32)  # some out of range
    got = np.asarray(grid_sample_3d(jnp.asarray(vol), jnp.asarray(pts)))
    t_vol = torch.from_numpy(vol.transpose(0, 4, 1, 2, 3).copy())  # [B, C, D, H, W]
    t_grid = torch.from_numpy(pts).reshape(3, 1, 1, 200, 3)
    ref = F.grid_sample(t_vol, t_grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False).reshape(3, 7, 200).permute(0, 2, 1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _torch_upfirdn(x, f, up, pad, gain):
    """Reference semantics written directly in torch: zero-insert, pad, flipped-filter conv."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[2], pad[3]])
    k = torch.from_numpy(np.ascontiguousarray(f[::-1, ::-1] * gain)).float()
    k = k[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def test_upsample2d_and_upfirdn():
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 5)).astype(np.float32)
    f = setup_filter()
    got = np.asarray(upsample2d(jnp.asarray(x)))
    ref = _nhwc(_torch_upfirdn(_nchw(x), f, 2, (2, 1, 2, 1), 4.0))
    assert got.shape == (2, 16, 16, 5)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    got = np.asarray(upfirdn2d(jnp.asarray(x), padding=(1, 1, 1, 1)))
    np.testing.assert_allclose(got, _nhwc(_torch_upfirdn(_nchw(x), f, 1, (1, 1, 1, 1), 1.0)),
                               atol=1e-5)


def test_conv2d_up2_equals_upsample_then_convolve():
    """The transposed-conv form equals the generic form: FIR-upsample, then true convolution."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
    w_oihw = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)
    f = setup_filter()
    got = np.asarray(conv2d_up2(jnp.asarray(x), jnp.asarray(w_oihw.transpose(2, 3, 1, 0))))
    # Generic reference path of conv2d_resample(up=2, padding=1, flip_weight=False):
    # upfirdn2d(up=2, pad=[3, 2, 3, 2], gain=4) then convolution (flipped weight).
    y = _torch_upfirdn(_nchw(x), f, 2, (3, 2, 3, 2), 4.0)
    ref = _nhwc(F.conv2d(y, torch.from_numpy(w_oihw).flip([2, 3])))
    assert got.shape == (2, 12, 12, 3)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_conv_custom_weight_gradient_matches_xla():
    import jax

    from jaxhead.ops.upfirdn import _conv, conv2d_general

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 5)).astype(np.float32))
    dy_shape = None
    for w_shape, pad in [((3, 3, 5, 4), ((1, 1), (1, 1))), ((2, 1, 5, 4), ((1, 1), (0, 0))),
                         ((1, 1, 5, 4), ((0, 0), (0, 0)))]:
        w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32))
        dy_shape = _conv(x, w, pad).shape
        dy = jnp.asarray(rng.normal(size=dy_shape).astype(np.float32))
        got = jax.vjp(lambda a, b: conv2d_general(a, b, pad), x, w)[1](dy)  # noqa: B023
        ref = jax.vjp(lambda a, b: _conv(a, b, pad), x, w)[1](dy)  # noqa: B023
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-4)



@pytest.mark.parametrize("tile_elems", [1, 2000, 1 << 20])
@pytest.mark.parametrize("w_shape, pad", [((3, 3, 5, 4), ((1, 1), (1, 1))),
                                          ((2, 2, 5, 4), ((1, 1), (1, 1))),
                                          ((2, 1, 5, 4), ((1, 1), (0, 0)))])
def test_weight_gradient_forms_match_xla(monkeypatch, tile_elems, w_shape, pad):
    """Per-tap GEMMs and row-tiled im2col GEMMs give XLA's weight gradient: tiles of one row,
    of 3 rows (3x3: 8 output rows, last tile padded) or 6 (2x2: 9 rows), or all rows."""
    import jax

    from jaxhead.ops import upfirdn

    monkeypatch.setattr(upfirdn, "_WGRAD_TILE_ELEMS", tile_elems)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 8, 7, 5)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32))
    dy = jnp.asarray(rng.normal(size=upfirdn._conv(x, w, pad).shape).astype(np.float32))
    ref = jax.vjp(lambda b: upfirdn._conv(x, b, pad), w)[1](dy)[0]
    (pt, pb), (pl, pr) = pad
    xt = jnp.transpose(jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))), (3, 0, 1, 2))
    for form in (upfirdn._wgrad_rows, upfirdn._wgrad_taps):
        got = form(xt, dy, w_shape[0], w_shape[1])
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-4)


def test_conv_weight_gradient_of_a_large_image_takes_the_row_tiles(monkeypatch):
    """Many pixels and few channels go through the im2col tiles, and still equal XLA's."""
    import jax

    from jaxhead.ops import upfirdn

    calls = []
    rows = upfirdn._wgrad_rows
    monkeypatch.setattr(upfirdn, "_wgrad_rows", lambda *a: calls.append(1) or rows(*a))
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(1, 256, 256, 2)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 3)).astype(np.float32))
    pad = ((1, 1), (1, 1))
    dy = jnp.asarray(rng.normal(size=(1, 256, 256, 3)).astype(np.float32))
    got = jax.vjp(lambda b: upfirdn.conv2d_general(x, b, pad), w)[1](dy)[0]
    ref = jax.vjp(lambda b: upfirdn._conv(x, b, pad), w)[1](dy)[0]
    assert calls
    scale = float(np.abs(np.asarray(ref)).max())
    assert float(np.abs(np.asarray(got) - np.asarray(ref)).max()) <= 1e-5 * scale


def test_grid_sample_gather_vjp_matches_autodiff_of_the_plain_sum():
    """The trilinear gather's own VJP (one scatter buffer for all 8 corners, repeated
    indices included) gives autodiff's gradients of the plain weighted sum, w.r.t. the
    table and the weights (through which the sample positions get theirs)."""
    import jax

    from jaxhead.ops.grid_sample import _gather_weighted

    rng = np.random.default_rng(2)
    flat = jnp.asarray(rng.normal(size=(30, 4)).astype(np.float32))
    idx = jnp.asarray(rng.integers(0, 30, size=(8, 150)).astype(np.int32))
    wgt = jnp.asarray(rng.uniform(size=(8, 150)).astype(np.float32))
    probe = jnp.asarray(rng.normal(size=(150, 4)).astype(np.float32))

    def plain(f, w):
        return sum(w[k, :, None] * jnp.take(f, idx[k], axis=0) for k in range(8))

    def loss(fn, f, w):
        return jnp.sum(jnp.sin(fn(f, w)) * probe)

    np.testing.assert_allclose(np.asarray(_gather_weighted(flat, idx, wgt)),
                               np.asarray(plain(flat, wgt)), atol=1e-6)
    want = jax.grad(lambda f, w: loss(plain, f, w), argnums=(0, 1))(flat, wgt)
    got = jax.grad(lambda f, w: loss(lambda a, b: _gather_weighted(a, idx, b), f, w),
                   argnums=(0, 1))(flat, wgt)
    for g, w in zip(got, want, strict=True):
        assert float(jnp.abs(w).max()) > 0.1
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-6)


@pytest.mark.parametrize("taps", [(1.0, 3.0, 3.0, 1.0), (1.0, 2.0, 1.0), (1.0, 1.0),
                                  (1.0, 4.0, 6.0, 4.0, 1.0)])
def test_upsample2d_polyphase_equals_zero_insertion(taps):
    """The polyphase up-sampling equals zero insertion + pad + FIR (upfirdn2d), any tap count."""
    import jax

    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 7, 5, 3)).astype(np.float32))
    f = len(taps)
    p = ((f + 1) // 2, (f - 2) // 2) * 2
    ref = upfirdn2d(x, taps, up=2, padding=p, gain=4.0)
    got = upsample2d(x, taps)
    assert got.shape == ref.shape == (2, 14, 10, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-6)
    dy = jnp.asarray(np.random.default_rng(6).normal(size=ref.shape).astype(np.float32))
    g_got = jax.vjp(lambda a: upsample2d(a, taps), x)[1](dy)[0]
    g_ref = jax.vjp(lambda a: upfirdn2d(a, taps, up=2, padding=p, gain=4.0), x)[1](dy)[0]
    np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_ref), atol=1e-5)


def test_checkpoint_recomputes_in_the_backward_and_keeps_gradients():
    """``ops.remat.checkpoint`` on a 16-layer tanh stack in 4 blocks: the same gradients as
    no remat (params, a traced keyword argument; a PRNG key and an integer pass through), and
    XLA's plan holds one block's activations, not all 16 (``jax.checkpoint``'s recomputation
    is scheduled early by XLA:CPU: it planned more than no remat at all)."""
    from jaxhead.ops.remat import checkpoint

    def block(ws, x, key, n, *, scale):
        for w in ws:
            x = jnp.tanh(x @ w)
        return (x + jax.random.uniform(key, (256,)) + n) * scale

    ws = [jnp.full((256, 256), 0.01 * (1 + i), jnp.float32) for i in range(16)]
    x = jnp.linspace(-1.0, 1.0, 4096 * 256, dtype=jnp.float32).reshape(4096, 256)
    key = jax.random.key(3)

    def loss(ws, x, scale, key, b):
        for i in range(0, 16, 4):
            x = b(ws[i:i + 4], x, jax.random.fold_in(key, i), jnp.int32(i), scale=scale)
        return jnp.sum(x ** 2)

    grads, temps = [], []
    for b in (block, checkpoint(block)):
        f = jax.jit(jax.grad(lambda ws, x, s, k, b=b: loss(ws, x, s, k, b), argnums=(0, 1, 2)))
        compiled = f.lower(ws, x, 0.9, key).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
        grads.append(compiled(ws, x, 0.9, key))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    act = 4096 * 256 * 4  # one activation
    assert temps[0] > 20 * act and temps[1] < 10 * act, (temps, act)  # measured 24 and 8


def test_tie_to_keeps_values_and_survives_xla():
    """``tie_to`` changes no value (inf and NaN included) and its dependency is still in the
    optimized program (XLA folds an integer ``0 * x``, and drops optimization barriers)."""
    from jaxhead.ops.depend import tie_to

    w = jnp.asarray([1.5, -0.0, np.inf, np.nan, 3e38], jnp.float32)
    for dep in (jnp.ones((2, 3)), jnp.full((2,), np.nan), jnp.full((1,), np.inf)):
        got = np.asarray(jax.jit(tie_to)(w, dep))
        np.testing.assert_array_equal(got, np.asarray(w))
        assert np.signbit(got[1])  # -0.0 + 0.0 would be +0.0: the zero added is exact
    hlo = jax.jit(lambda a, b: tie_to(a, b) * 2).lower(w, jnp.ones(3)).compile().as_text()
    assert "compare" in hlo


def test_compile_options_route_cpu_convolutions_to_xla_and_keep_values():
    """jaxhead's CPU programs keep YNNPACK for dots only: a convolution compiled with
    ``jaxhead.utils.compile.jit`` is not a YNNPACK fusion, gives jaxlib's default values, and
    off CPU / for "ynnpack" no option is set."""
    from jaxhead.utils import compile as compile_lib

    assert compile_lib.compiler_options("gpu") == {}
    assert compile_lib.compiler_options("cpu", "ynnpack") == {}
    with pytest.raises(ValueError, match="cpu_conv"):
        compile_lib.compiler_options("cpu", "mkl")
    opts = compile_lib.compiler_options("cpu")
    assert opts, "this jaxlib rejected the option: jaxhead compiles with its defaults"

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    rng = np.random.default_rng(0)
    # 32 -> 32 channels: jaxlib 0.10's default hands this convolution to YNNPACK
    x = jnp.asarray(rng.standard_normal((1, 8, 8, 32), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32), np.float32))
    ours = compile_lib.jit(conv).lower(x, w).compile()
    hlo = ours.as_text()
    assert "convolution(" in hlo and "ynn_fusion" not in hlo
    np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(jax.jit(conv)(x, w)),
                               rtol=1e-5, atol=1e-5)
    # called under another trace it is a plain nested jit (JAX refuses options there)
    inner = compile_lib.jit(conv)
    out = jax.jit(lambda x, w: inner(x, w) + 1)(x, w)
    np.testing.assert_allclose(np.asarray(out), np.asarray(inner(x, w)) + 1, rtol=1e-5, atol=1e-5)
    # programs over several devices keep jaxlib's defaults (XLA's convolutions gave run-to-run
    # different sharded train steps with 4 host devices)
    assert not compile_lib._plain_needed((x, w), {})
    if jax.device_count() >= 2:
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
        xs = jax.device_put(jnp.concatenate([x, x]), jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec("data")))
        assert compile_lib._plain_needed((xs, w), {})
        assert compile_lib._plain_needed((x,), {"mesh": mesh})
