"""ArcFace networks against references with seeded weights (BatchNorm running statistics
included): insightface's iresnet exported to ONNX by torch and run by onnxruntime (converted
from the ONNX file by ``convert_weights.arcface``, folded and unfolded exports, and from the
arcface_torch state dict), TreB1eN's IR-SE against the plain-torch reference of
tests/arcface_testlib.py. Small networks of the same layout in the fast tier; full-size
iresnet50 / IR-SE50 marked slow. Converter errors and the loader."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import arcface_testlib as A  # noqa: E402

from convert_weights import arcface as conv  # noqa: E402
from jaxhead.errors import DataError, MissingWeightsError, run_cli  # noqa: E402
from jaxhead.models import arcface as M  # noqa: E402


def _faces(seed, n=2):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


def _export(model, **kw):
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        return A.export_onnx(model, **kw)


def _ort(onnx_bytes, x_nhwc):
    s = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: np.ascontiguousarray(
        x_nhwc.transpose(0, 3, 1, 2))})[0]


def _check(out, ref, what):
    scale = float(np.abs(ref).max())
    err = float(np.abs(np.asarray(out) - ref).max())
    print(f"{what}: max-abs {err:.3g}, embedding scale {scale:.3g}, relative {err / scale:.3g}")
    assert out.shape == ref.shape and out.dtype == np.float32
    assert 0.5 < scale < 1e3 and ref.std() > 0.05 * scale  # a non-degenerate test
    assert err <= 1e-4 * scale, (err, scale)  # fp32 tier


@pytest.fixture(scope="module")
def small_iresnet():
    return A.randomize(A.IResNet(**A.SMALL), 0)


def test_iresnet_onnx_cli_matches_onnxruntime(small_iresnet, tmp_path):
    """The file a user has: an ONNX export (BatchNorms after convs folded by the exporter) ->
    the converter CLI -> ``load_arcface`` -> jitted ``embed``, against onnxruntime on the same
    file (and the torch model it came from)."""
    src = tmp_path / "w600k_r50.onnx"
    src.write_bytes(_export(small_iresnet))
    assert run_cli(conv.main, [str(src), str(tmp_path / "out")]) == 0
    params = M.load_arcface(tmp_path / "out")
    assert params.config == M.ArcFaceConfig("iresnet", A.SMALL["layers"], A.SMALL["widths"],
                                            A.SMALL["stem"], A.SMALL["dim"])
    x = _faces(1, 3)
    out = np.asarray(jax.jit(M.embed)(params, x))
    _check(out, _ort(src.read_bytes(), x), "small iresnet vs onnxruntime")
    _check(out, A.run_torch(small_iresnet, x), "small iresnet vs torch")


def test_iresnet_unfolded_onnx_and_state_dict_agree(small_iresnet):
    """An export that keeps every BatchNorm (and PRelu slopes behind Constant/Unsqueeze), and
    arcface_torch's state dict, convert to the same params as the folded export."""
    _, folded = conv.convert_onnx(onnx.load_from_string(_export(small_iresnet)))
    b = _export(small_iresnet, fold=False)
    assert "BatchNormalization" in [n.op_type for n in onnx.load_from_string(b).graph.node[:3]]
    _, unfolded = conv.convert_onnx(onnx.load_from_string(b))
    _, from_state = conv.convert_iresnet_state(A.state_dict_numpy(small_iresnet))
    for other in (unfolded, from_state):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-6, atol=2e-6),
                     folded, other)


def test_ir_se_cli_matches_torch(tmp_path):
    model = A.randomize(A.IRSEBackbone(**A.SMALL), 1)
    src = tmp_path / "model_ir_se50.pth"
    torch.save(model.state_dict(), src)
    assert run_cli(conv.main, [str(src), str(tmp_path / "out")]) == 0
    params = M.load_arcface(tmp_path / "out")
    assert params.config.arch == "ir_se" and params.config.layers == A.SMALL["layers"]
    x = _faces(2, 3)
    _check(np.asarray(jax.jit(M.embed)(params, x)), A.run_torch(model, x), "small IR-SE")


def test_embed_is_batched_and_vmappable():
    """One function of the batch: vmap over single faces equals the batched call."""
    cfg = M.ArcFaceConfig("ir_se", (1, 1, 1, 1), (16, 16, 32, 32), 16, 8)
    params = M.random_params(cfg, seed=0)
    x = _faces(3, 3)
    batched = jax.jit(M.embed)(params, x)
    single = jax.jit(jax.vmap(lambda f: M.embed(params, f[None])[0]))(x)
    np.testing.assert_allclose(np.asarray(single), np.asarray(batched), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[N, 112, 112, 3\]"):
        M.embed(params, jnp.zeros((1, 96, 96, 3)))


@pytest.mark.slow
def test_full_iresnet50_onnx_matches_onnxruntime():
    model = A.randomize(A.IResNet(**A.FULL), 2)
    b = _export(model)
    cfg, w = conv.convert_onnx(onnx.load_from_string(b))
    assert cfg == M.IRESNET50
    x = _faces(4)
    _check(np.asarray(jax.jit(M.embed)(M.ArcFaceParams(cfg, w), x)), _ort(b, x),
           "iresnet50 vs onnxruntime")


@pytest.mark.slow
def test_full_ir_se50_matches_torch():
    model = A.randomize(A.IRSEBackbone(**A.FULL), 3)
    cfg, w = conv.convert_irse_state(A.state_dict_numpy(model))
    assert cfg == M.IR_SE50
    x = _faces(5)
    _check(np.asarray(jax.jit(M.embed)(M.ArcFaceParams(cfg, w), x)), A.run_torch(model, x),
           "IR-SE50 vs torch")


def test_converter_and_loader_errors(small_iresnet, tmp_path, capsys):
    state = A.state_dict_numpy(A.IRSEBackbone(**A.SMALL))
    bad = dict(state)
    bad["body.1.res_layer.3.weight"] = bad["body.1.res_layer.3.weight"][..., :2]
    del bad["output_layer.4.running_var"]
    bad["body.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(DataError) as e:
        conv.convert_irse_state(bad)
    msg = str(e.value)
    assert "body.1.res_layer.3.weight (24, 24, 3, 2) != expected (24, 24, 3, 3)" in msg
    assert "missing (1): output_layer.4.running_var" in msg
    assert "unexpected (1): body.0.extra.weight" in msg
    # an ONNX graph that is not an iresnet: a ReLU where the stem's PRelu should be
    m = onnx.load_from_string(_export(small_iresnet))
    node = next(n for n in m.graph.node if n.op_type == "PRelu")
    node.op_type, node.input[:] = "Relu", node.input[:1]
    with pytest.raises(DataError, match="expected PRelu, found Relu"):
        conv.convert_onnx(m)
    with pytest.raises(MissingWeightsError, match="python -m convert_weights.arcface"):
        M.load_arcface(tmp_path / "nowhere")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    for src, rc in (("missing.onnx", 1), ("junk.onnx", 1)):
        assert run_cli(conv.main, [str(tmp_path / src), str(tmp_path / "o")]) == rc
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and src in err and "\n" not in err
