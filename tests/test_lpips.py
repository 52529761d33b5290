"""LPIPS(alex) against the ``lpips`` package (fixture made by tests/fixtures/lpips/
make_reference.py with seeded weights), and the converter's name layouts and errors."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert_weights import lpips as conv
from jaxhead.models import lpips as lp
from tests.lpips_testlib import seeded_state_dicts

REF = Path(__file__).parent / "fixtures" / "lpips" / "reference.npz"


@pytest.fixture(scope="module")
def ref():
    d = dict(np.load(REF))
    alex, lin = seeded_state_dicts()
    params = jax.tree.map(jnp.asarray, conv.convert_state_dicts(alex, lin))
    return d, params


def test_matches_lpips_package(ref):
    d, params = ref
    layers = jax.jit(lp.lpips_layers)(params, d["x"], d["y"])
    np.testing.assert_allclose(np.asarray(layers), d["layers"], rtol=1e-4, atol=1e-7)
    dist = lp.lpips(params, d["x"], d["y"])
    np.testing.assert_allclose(np.asarray(dist), d["lpips"], rtol=1e-4, atol=1e-7)
    assert float(dist[-1]) < 1e-9 < float(dist[0])  # identical pair vs perturbed pair


def test_gradient_matches_lpips_package(ref):
    d, params = ref
    g = jax.jit(jax.grad(lambda x: jnp.sum(lp.lpips(params, x, d["y"]))))(d["x"])
    scale = np.abs(d["grad_x"]).max()
    err = np.abs(np.asarray(g) - d["grad_x"]).max()
    assert err <= 1e-4 * scale, (err, scale)
    assert np.isfinite(np.asarray(g)).all()


def test_zero_feature_pixels_give_finite_gradients(ref):
    _, params = ref
    x = jnp.full((1, 48, 48, 3), -1.0)  # constant images: many all-zero ReLU columns
    g = jax.grad(lambda a: lp.lpips(params, a, jnp.zeros_like(a))[0])(x)
    assert np.isfinite(np.asarray(g)).all()


def test_normalize_flag_takes_unit_range(ref):
    d, params = ref
    a = lp.lpips(params, d["x"], d["y"])
    b = lp.lpips(params, (d["x"] + 1) / 2, (d["y"] + 1) / 2, normalize=True)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)


def test_converter_layouts_agree_and_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    alex, lin = seeded_state_dicts()
    tv_file, lin_file, full_file = (tmp_path / n for n in ("alex.pth", "lin.pth", "full.pth"))
    torch.save({k: torch.from_numpy(v) for k, v in alex.items()}, tv_file)
    torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, lin_file)
    # A full lpips.LPIPS state dict: net.sliceS.N.*, linK.* and the lins.K.* aliases.
    full = {}
    for s, (k, v) in zip((1, 1, 2, 2, 3, 3, 4, 4, 5, 5), alex.items(), strict=True):
        full["net." + k.replace("features.", f"slice{s}.")] = torch.from_numpy(v)
    for k, v in lin.items():
        full[k] = full["lins." + k[3:]] = torch.from_numpy(v)
    full["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(full, full_file)
    conv.main(["--alexnet", str(tv_file), "--lin", str(lin_file), str(tmp_path / "a")])
    conv.main(["--alexnet", str(full_file), str(tmp_path / "b")])
    a, b = lp.load_lpips(tmp_path / "a"), lp.load_lpips(tmp_path / "b")
    direct = conv.convert_state_dicts(alex, lin)
    for x, y in ((a, b), (a, direct)):
        jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)),
                     x, y)


def test_converter_and_loader_errors(tmp_path):
    alex, lin = seeded_state_dicts()
    bad = dict(alex)
    bad["features.3.weight"] = bad["features.3.weight"][:, :32]
    with pytest.raises(ValueError, match=r"conv1/weight \(5, 5, 32, 192\)"):
        conv.convert_state_dicts(bad, lin)
    with pytest.raises(ValueError, match="lin4.model.1.weight"):
        conv.convert_state_dicts(alex, {k: v for k, v in lin.items() if "lin4" not in k})
    missing = {k: v for k, v in alex.items() if not k.startswith("features.8.")}
    with pytest.raises(ValueError, match=r"features\.8\.weight"):
        conv.convert_state_dicts(missing, lin)
    with pytest.raises(FileNotFoundError, match="convert_weights.lpips"):
        lp.load_lpips(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="one shape"):
        lp.lpips(lp.random_params(jax.random.key(0)), jnp.zeros((1, 64, 64, 3)),
                 jnp.zeros((1, 32, 32, 3)))
