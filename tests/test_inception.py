"""FID Inception-v3 against a plain-torch reference of pytorch-fid's network (tests/
inception_testlib.py) with seeded weights that go through the converter; the converter's
layouts and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convert_weights import inception as conv  # noqa: E402
from jaxhead.errors import DataError, MissingWeightsError, run_cli  # noqa: E402
from jaxhead.metrics import inception as inc  # noqa: E402
from tests.inception_testlib import seeded_state_dict, torch_model  # noqa: E402


@pytest.fixture(scope="module")
def nets():
    state = seeded_state_dict()
    params = jax.tree.map(jnp.asarray, conv.convert_state_dict(state))
    return state, params, torch_model(state)


def _images(seed, n, size):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def _torch_features(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _check(out, ref, what):
    scale = np.abs(ref).max()
    err = np.abs(out - ref).max()
    print(f"{what}: max-abs {err:.3g}, feature scale {scale:.3g}, relative {err / scale:.3g}")
    assert out.shape == ref.shape and out.dtype == np.float32
    assert 0.1 < scale < 1e3 and ref.std() > 1e-2 * scale  # a non-degenerate test
    assert err <= 1e-4 * scale, (err, scale)  # fp32 tier


@pytest.mark.slow
def test_features_match_torch_reference(nets):
    """Whole network in fp32: the pure function under jit on a 299 px image (no-op resize),
    and uint8 64 px images (read as x / 255, like ``ToTensor``; resized to 299) through the
    batch loop, whose last batch is padded."""
    _, params, model = nets
    x = _images(1, 1, 299)
    _check(np.asarray(jax.jit(inc.inception_features)(params, x)), _torch_features(model, x),
           "299 px float")
    x8 = np.random.default_rng(3).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    _check(inc.features_in_batches(params, x8, batch_size=2),
           _torch_features(model, x8.astype(np.float32) / 255), "64 px uint8 (resized)")


@pytest.mark.parametrize("name,hw", [("Mixed_5b", (9, 8)), ("Mixed_6a", (9, 8)),
                                     ("Mixed_6e", (5, 6)), ("Mixed_7a", (9, 8)),
                                     ("Mixed_7b", (4, 3)), ("Mixed_7c", (3, 4))])
def test_each_block_kind_matches(nets, name, hw):
    """Per-block tier on small non-square maps: border windows of the no-padding average pool
    and the padded max-pool dominate there."""
    _, params, model = nets
    kind, spec = next((k, s) for n, k, s in inc.LAYERS if n == name)
    cin = next(iter(spec.values()))[0]
    x = np.random.default_rng(2).standard_normal((2, *hw, cin)).astype(np.float32)
    with torch.no_grad():
        ref = getattr(model, name)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    out = jax.jit(lambda p, a: inc._mixed(kind, p, a, spec))(params[name], x)
    ref = ref.numpy().transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_converter_layouts_and_roundtrip(nets, tmp_path):
    state, params, _ = nets
    src = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, src)
    assert run_cli(conv.main, [str(src), str(tmp_path / "out")]) == 0
    loaded = inc.load_inception(tmp_path / "out")
    fidelity = conv.convert_state_dict(seeded_state_dict(batches_tracked=False))
    for other in (loaded, fidelity):
        jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)),
                     params, other)
    f = np.random.default_rng(4).standard_normal((2, 2048)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(inc.logits(loaded, f)),
                               f @ state["fc.weight"].T + state["fc.bias"], rtol=1e-5, atol=1e-5)


def test_converter_and_loader_errors(nets, tmp_path, capsys):
    state, _, _ = nets
    bad = dict(state)
    bad["Mixed_6b.branch7x7_2.conv.weight"] = bad["Mixed_6b.branch7x7_2.conv.weight"][..., :5]
    del bad["Mixed_7c.branch_pool.bn.running_var"]
    bad["Mixed_7c.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(DataError) as e:
        conv.convert_state_dict(bad)
    msg = str(e.value)
    assert "Mixed_6b.branch7x7_2.conv.weight (128, 128, 1, 5) != expected (128, 128, 1, 7)" in msg
    assert "missing (1): Mixed_7c.branch_pool.bn.running_var" in msg
    assert "unexpected (1): Mixed_7c.extra.weight" in msg
    tv = dict(state)
    tv["fc.weight"] = tv["fc.weight"][:1000]
    with pytest.raises(DataError, match="torchvision"):
        conv.convert_state_dict(tv)
    with pytest.raises(MissingWeightsError, match="python -m convert_weights.inception"):
        inc.load_inception(tmp_path / "nowhere")
    assert run_cli(conv.main, [str(tmp_path / "missing.pth"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.pth" in err and "\n" not in err
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        inc.inception_features({}, jnp.zeros((2, 64, 64)))
