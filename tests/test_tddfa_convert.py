"""``python -m convert_weights.tddfa`` end to end on a fake 3DDFA_V2 clone (random reference
weights saved with torch.save, numpy pickles with a reduced BFM), then ``load_tddfa`` and the
whole photo -> faces pipeline against the reference; and its answers to bad input."""

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tddfa_testlib import (  # noqa: E402
    cv2_resize,
    fake_bfm,
    ref_crop_img,
    ref_detect,
    ref_landmarks,
    ref_matrix2angle,
    ref_p2srt,
    ref_parse_roi_box_from_bbox,
    ref_similar_transform,
    write_fake_clone,
)

from convert_weights import tddfa as conv  # noqa: E402
from jaxhead.errors import DataError, MissingWeightsError, run_cli  # noqa: E402
from jaxhead.face.bfm import mean_depth as bfm_mean_depth  # noqa: E402
from jaxhead.face.fit import fit_faces  # noqa: E402
from jaxhead.face.weights import load_tddfa  # noqa: E402


def _one_error_line(capsys, argv, code=1) -> str:
    capsys.readouterr()
    rc = run_cli(conv.main, [str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    root = tmp_path_factory.mktemp("3DDFA_V2")
    fb, net, bfm, ms = write_fake_clone(root, arch="mb05", seed=11)
    return root, fb, net, bfm, ms


def test_convert_load_and_run_matches_reference(clone, tmp_path, capsys):
    root, fb, net, bfm, ms = clone
    out = tmp_path / "tddfa"
    assert run_cli(conv.main, [str(root), str(out), "--arch", "mb05"]) == 0
    assert "converted 3DDFA_V2" in capsys.readouterr().out
    w = load_tddfa(out)
    assert w.config["arch"] == "mb05" and w.config["bfm_vertices"] == 300
    np.testing.assert_array_equal(np.asarray(w.bfm["u"]), bfm["u"].reshape(-1))
    assert float(bfm_mean_depth(w.bfm)) == pytest.approx(
        bfm["u"].reshape(3, -1, order="F")[2].mean(), rel=1e-5)
    assert set(w.config["sources"]) == set(conv.source_files("mb05").values())

    img = np.random.default_rng(6).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    faces = fit_faces(w, img)
    dets = ref_detect(fb, img)
    assert 0 < len(faces) == len(dets)
    for face, det in zip(faces[:3], dets[:3], strict=False):
        np.testing.assert_allclose(face.box, det, rtol=1e-4, atol=1e-3)
        roi_box = ref_parse_roi_box_from_bbox([float(v) for v in det])
        x = (cv2_resize(ref_crop_img(img, roi_box), 120, 120) - 127.5) / 128
        with torch.no_grad():
            out_t = net(torch.from_numpy(np.float32(x).transpose(2, 0, 1))[None]).numpy()[0]
        param = out_t * ms["std"] + ms["mean"]
        assert np.abs(face.param - param).max() < 1e-4 * np.abs(param).max()
        lm = ref_similar_transform(ref_landmarks(bfm["u"], bfm["w_shp"], bfm["w_exp"],
                                                 bfm["keypoints"], param), roi_box, 120)
        assert np.abs(face.landmarks[:2] - lm[:2]).max() < 1e-4 * np.abs(lm[:2]).max()
        s, r, _ = ref_p2srt(param[:12].reshape(3, 4))
        assert face.scale == pytest.approx(s, rel=1e-4)
        np.testing.assert_allclose(face.angles, np.degrees(ref_matrix2angle(r)), atol=0.05)


def test_missing_files_are_named_with_their_place_in_the_clone(clone, tmp_path, capsys):
    root = tmp_path / "partial"
    (root / "configs").mkdir(parents=True)
    (root / "configs/param_mean_std_62d_120x120.pkl").write_bytes(
        (clone[0] / "configs/param_mean_std_62d_120x120.pkl").read_bytes())
    err = _one_error_line(capsys, [root, tmp_path / "o"])
    for rel in ("FaceBoxes/weights/FaceBoxesProd.pth", "weights/mb1_120x120.pth",
                "configs/bfm_noneck_v3.pkl"):
        assert f"{rel} (at {root / rel})" in err
    assert "param_mean_std" not in err
    assert not (tmp_path / "o").exists()
    _one_error_line(capsys, [tmp_path / "nowhere", tmp_path / "o"])


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def _clone_with(clone, tmp_path, rel: str, data: bytes):
    """A copy of the fake clone (mb05) with the file ``rel`` replaced by ``data``."""
    root = tmp_path / "clone"
    for r in conv.source_files("mb05").values():
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        (root / r).write_bytes((clone[0] / r).read_bytes())
    (root / rel).write_bytes(data)
    return root


@pytest.mark.parametrize("obj, needle", [
    ({"mean": _System(), "std": np.ones(62, np.float32)}, "refusing to load global 'posix.system'"),
    ({"mean": torch.zeros(62), "std": np.ones(62, np.float32)}, "refusing to load global 'torch"),
])
def test_pickle_with_disallowed_global_is_refused(clone, tmp_path, capsys, obj, needle):
    rel = conv.MEAN_STD_FILE
    root = _clone_with(clone, tmp_path, rel, pickle.dumps(obj))
    err = _one_error_line(capsys, [root, tmp_path / "o", "--arch", "mb05"])
    assert needle in err.replace("nt.system", "posix.system") and rel in err
    assert not (tmp_path / "o").exists()


def _bad_bfm(kind: str) -> dict:
    b = fake_bfm(n_vertices=200, seed=1)
    if kind == "rows":
        b["w_exp"] = b["w_exp"][:-3]
    elif kind == "dims":
        b["w_shp"] = b["w_shp"][:, :39]
    elif kind == "u":
        b["u"] = b["u"][:-1]
    elif kind == "range":
        b["keypoints"] = b["keypoints"] + 3 * 200
    elif kind == "count":
        b["keypoints"] = b["keypoints"][:-3]
    elif kind == "missing":
        del b["w_exp"]
    return b


@pytest.mark.parametrize("kind, needle", [
    ("rows", "'w_exp' has shape (597, 12), expected [600, >=10]"),
    ("dims", "'w_shp' has shape (600, 39), expected [600, >=40]"),
    ("u", "'u' has 599 rows, expected 3 per vertex"),
    ("range", "'keypoints' index rows outside 0..599"),
    ("count", "'keypoints' has 201 indices, expected 204"),
    ("missing", "no 'w_exp' array"),
])
def test_inconsistent_bfm_is_refused(clone, tmp_path, capsys, kind, needle):
    root = _clone_with(clone, tmp_path, conv.BFM_FILE, pickle.dumps(_bad_bfm(kind)))
    err = _one_error_line(capsys, [root, tmp_path / "o", "--arch", "mb05"])
    assert needle in err and conv.BFM_FILE in err


def test_reduced_bfm_with_consistent_shapes_converts(tmp_path):
    b = fake_bfm(n_vertices=100, seed=2, dims=(40, 10))
    b["u"] = b["u"].reshape(-1)  # [3N] as well as [3N, 1]
    out, n = conv.bfm_params(b, "x")
    assert n == 100 and out["w_shp_base"].shape == (204, 40)
    np.testing.assert_array_equal(out["u_base"], b["u"][b["keypoints"]])
    np.testing.assert_array_equal(out["u"], b["u"])


def test_wrong_arch_and_loader_errors(clone, tmp_path, capsys):
    root = _clone_with(clone, tmp_path, "weights/mb1_120x120.pth",
                       (clone[0] / "weights/mb05_120x120.pth").read_bytes())
    capsys.readouterr()
    assert run_cli(conv.main, [str(root), str(tmp_path / "o"), "--arch", "mb1"]) == 1
    err = capsys.readouterr().err
    assert "widen factor 1.0" in err and "wrong shape" in err and "Traceback" not in err
    _one_error_line(capsys, [root, tmp_path / "o", "--arch", "mb2"], code=2)
    with pytest.raises(MissingWeightsError, match="convert_weights.tddfa"):
        load_tddfa(tmp_path / "absent")
    with pytest.raises(DataError, match="has 61 values, expected 62"):
        conv.mean_std_params({"mean": np.zeros(61), "std": np.ones(62)}, "ms.pkl")
