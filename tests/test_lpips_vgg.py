"""LPIPS-VGG16 in both forms against plain-torch references (tests/vgg_testlib.py): the
``lpips`` package's form, and NVIDIA's ``vgg16.pt`` semantics through a random-weight
TorchScript archive made here and read by the converter's restricted reader."""

import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convert_weights import lpips as conv_lpips  # noqa: E402
from convert_weights import vgg16_nvidia as conv_nv  # noqa: E402
from convert_weights.safe_pickle import UnsafePickleError  # noqa: E402
from jaxhead.errors import DataError, MissingWeightsError  # noqa: E402
from jaxhead.models import lpips_vgg as lv  # noqa: E402
from tests.vgg_testlib import (  # noqa: E402
    SMALL,
    LpipsVGG,
    NvidiaVGG16,
    save_nvidia_archive,
    seeded_images,
    seeded_state_dicts,
)


@pytest.fixture(scope="module")
def weights():
    return seeded_state_dicts(SMALL)


@pytest.fixture(scope="module")
def images():
    return seeded_images(batch=2, size=64)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pt"
    save_nvidia_archive(path, SMALL)
    return path


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def test_lpips_form_matches_plain_torch(weights, images):
    vgg, lin = weights
    params = jax.tree.map(jnp.asarray, conv_lpips.convert_vgg_state_dicts(vgg, lin))
    x, y = images
    ref = LpipsVGG(vgg, lin)(_nchw(x), _nchw(y)).detach().numpy()  # [5, B]
    got = np.asarray(jax.jit(lv.lpips_vgg_layers)(params, x, y))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), (got, ref)
    d = np.asarray(lv.lpips_vgg(params, x, y))
    np.testing.assert_allclose(d, ref.sum(0), rtol=1e-4)
    assert float(lv.lpips_vgg(params, x, x)[0]) < 1e-9 < d.min()


def test_nvidia_archive_matches_scripted_module(archive, images, tmp_path):
    conv_nv.main([str(archive), str(tmp_path / "nv")])
    params = lv.load_lpips_vgg(tmp_path / "nv")
    assert lv.widths_of(params) == SMALL
    m = torch.jit.load(str(archive))  # the test runs the archive; the converter never does
    x, y = images
    imgs = [(a + 1) * 127.5 for a in (x, y)]  # [0, 255] as the projector feeds it
    ref = [m(_nchw(a), resize_images=False, return_lpips=True).detach().numpy() for a in imgs]
    got = [np.asarray(jax.jit(lv.vgg16_lpips_features)(params, a)) for a in imgs]
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max()
    d_ref = np.square(ref[0] - ref[1]).sum(1)
    d_got = np.square(got[0] - got[1]).sum(1)
    np.testing.assert_allclose(d_got, d_ref, rtol=1e-4)
    # the defining identity: the feature distance is the lpips-form distance on [-1, 1] input
    np.testing.assert_allclose(d_got, np.asarray(lv.lpips_vgg(params, x, y)), rtol=1e-4)


def test_both_converters_agree(weights, archive, tmp_path):
    vgg, lin = weights
    tv, linf = tmp_path / "vgg.pth", tmp_path / "lin.pth"
    torch.save({k: torch.from_numpy(v) for k, v in vgg.items()}, tv)
    torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, linf)
    conv_lpips.main(["--net", "vgg", "--vgg", str(tv), "--lin", str(linf), str(tmp_path / "a")])
    conv_nv.main([str(archive), str(tmp_path / "b")])
    a, b = lv.load_lpips_vgg(tmp_path / "a"), lv.load_lpips_vgg(tmp_path / "b")
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


def test_area_downsample_is_torch_area():
    x = np.random.default_rng(0).standard_normal((2, 512, 512, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(_nchw(x), size=(256, 256), mode="area")
    got = lv.area_downsample(jnp.asarray(x), 256)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref.numpy(), atol=1e-6)


def _archive_with(tmp_path, data_pkl: bytes, extra: dict | None = None):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", data_pkl)
        for k, v in (extra or {}).items():
            z.writestr(f"evil/{k}", v)
    return path


def test_converter_refuses_bad_archives(tmp_path, weights):
    class Boom:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
        conv_nv.convert(_archive_with(tmp_path, pickle.dumps(Boom())), tmp_path / "o1")
    # a storage that declares more bytes than the archive holds
    save_nvidia_archive(buf_path := tmp_path / "ok.pt", SMALL)
    with zipfile.ZipFile(buf_path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    root = next(n for n in members if n.endswith("/data.pkl")).split("/")[0]
    with zipfile.ZipFile(bad := tmp_path / "trunc.pt", "w") as z:
        for n, b in members.items():
            z.writestr(n, b[:4] if n == f"{root}/data/9" else b)
    with pytest.raises(UnsafePickleError, match="storage '9' declares"):
        conv_nv.convert(bad, tmp_path / "o2")
    (tmp_path / "plain.pt").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a TorchScript archive"):
        conv_nv.convert(tmp_path / "plain.pt", tmp_path / "o3")
    # a TorchScript archive of some other network
    other = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(other, str(tmp_path / "lin.pt"))
    with pytest.raises(DataError, match="lacks layers.conv1.weight"):
        conv_nv.convert(tmp_path / "lin.pt", tmp_path / "o4")
    assert not (tmp_path / "o4").exists()
    with pytest.raises(MissingWeightsError, match="convert_weights.vgg16_nvidia vgg16.pt"):
        lv.load_lpips_vgg(tmp_path / "nowhere")
    vgg, lin = weights
    with pytest.raises(DataError, match="lin4.model.1.weight"):
        conv_lpips.convert_vgg_state_dicts(vgg, {k: v for k, v in lin.items() if "lin4" not in k})


def test_lpips_cli_flag_errors(tmp_path, capsys):
    from jaxhead.errors import run_cli

    assert run_cli(conv_lpips.main, ["--net", "vgg", str(tmp_path / "o")]) == 2
    assert "--net vgg needs --vgg" in capsys.readouterr().err
    assert run_cli(conv_lpips.main, ["--net", "vgg", "--vgg", "a", "--alexnet", "b",
                                     str(tmp_path / "o")]) == 2
    assert "--alexnet does not go with --net vgg" in capsys.readouterr().err


def test_nvidia_module_is_scriptable_reference(weights):
    """The reference module's eager and scripted forms agree (the archive is what we test)."""
    vgg, lin = weights
    m = NvidiaVGG16(vgg, lin)
    s = torch.jit.script(m)
    x = torch.rand(1, 3, 32, 32) * 255
    torch.testing.assert_close(s(x, False, True), m(x, False, True))
