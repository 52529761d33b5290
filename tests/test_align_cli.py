"""``python -m jaxhead.align``: the orchestration of PanoHead's ``recrop_images.py`` loop
against the reference steps (restated with OpenCV), with the face fits stubbed by designed
results (the networks and the fit are tested against the reference in test_tddfa*.py), and
the CLI's output read back by ``jaxhead.inversion_data``."""

import functools
import io
import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from test_recrop import ref_eg3dcamparams, ref_get_crop_bound, ref_read_pose  # noqa: E402
from test_recrop_image import ref_crop_final  # noqa: E402

from jaxhead import align as align_cli  # noqa: E402
from jaxhead import inversion_data  # noqa: E402
from jaxhead.errors import run_cli  # noqa: E402
from jaxhead.face.fit import FaceFit  # noqa: E402
from jaxhead.face.weights import TDDFAWeights  # noqa: E402

ALIGN = align_cli.align
U = np.tile(np.array([0.0, 0.0, -12.0], np.float32), 50)  # mean depth -12


def _face(lm_xy: np.ndarray, param: np.ndarray, roi: tuple) -> FaceFit:
    lm = np.concatenate([lm_xy.T, np.zeros((1, 68))]).astype(np.float32)
    return FaceFit(np.zeros(5, np.float32), np.array(roi, np.float64), param, lm, 1.0,
                   np.eye(3), np.zeros(3), np.zeros(3))


def _landmarks(cx: float, cy: float, s: float) -> np.ndarray:
    lm = np.tile([cx, cy], (68, 1)).astype(np.float64)
    lm[36:42] = [cx - 0.35 * s, cy - 0.1 * s]
    lm[42:48] = [cx + 0.35 * s, cy - 0.08 * s]
    lm[48], lm[54] = [cx - 0.25 * s, cy + 0.55 * s], [cx + 0.27 * s, cy + 0.56 * s]
    return lm


def _param(yaw_deg: float, scale: float, roll_deg: float = 0.0) -> np.ndarray:
    a, b = np.radians(yaw_deg), np.radians(roll_deg)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    r = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]]) @ r
    cam = np.concatenate([scale * r, [[62.0], [58.0], [66.67]]], 1)
    return np.concatenate([cam.reshape(-1), np.zeros(50)]).astype(np.float32)


SIZE = 160  # first crop side (the reference's 512, smaller to keep the numpy warps quick)
ROI_CROP = (37.0, 32.0, 123.0, 118.0)  # the 3DDFA ROI of the face in the first crop


@pytest.fixture
def stubbed(monkeypatch):
    """fit_faces: on the photo, one face with designed landmarks; on the first crop, two faces,
    the second nearer the centre (so roi_box_lst[0] != the chosen face's ROI). The chosen
    face's scale is such that s ~ 1 with the first face's 30 px ROI, as the reference reads
    it."""
    param = _param(20.0, 2.65e-3)

    def fake_fit(w, img):
        if img.shape[:2] == (SIZE, SIZE):
            return [_face(_landmarks(30, 30, 15), _param(0, 1e-3), (5, 5, 35, 35)),
                    _face(_landmarks(80, 80, 30), param, ROI_CROP)]
        h, wd = img.shape[:2]
        return [_face(_landmarks(wd / 2, h / 2 - 10, 150), param, (0, 0, 10, 10))]

    monkeypatch.setattr(align_cli, "fit_faces", fake_fit)
    w = TDDFAWeights({}, {}, {"u": U}, np.zeros(62), np.ones(62), {})
    monkeypatch.setattr(align_cli, "load_tddfa", lambda path: w)
    monkeypatch.setattr(align_cli, "align", functools.partial(ALIGN, size=SIZE))
    return w, param


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127 + 90 * np.sin(xx / 23.0)[..., None] * np.cos(yy / 31.0)[..., None]
    return np.clip(img + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def test_align_follows_the_reference_loop(stubbed):
    w, param = stubbed
    img = _photo(700, 640)
    got = ALIGN(w, img, size=SIZE)

    # the landmarks as the stub gives them to the reference: float32 rows of FaceFit
    lm = _face(_landmarks(320, 340, 150), param, (0, 0, 1, 1)).landmarks[:2].T.astype(float)
    quad, c, x, y = ref_get_crop_bound(lm)
    u_z = U.reshape(-1, 1).reshape(3, -1, order="F")[2].mean()
    s, t3d, r, pose = ref_read_pose(param, (5, 5, 35, 35), SIZE, SIZE, u_z)
    assert 0.7 <= s <= 1.3 and abs(t3d[0]) <= 1 and abs(t3d[1]) <= 1  # not skipped
    c = c + x * t3d[0]
    c = c - y * t3d[1]
    x, y = x * s, y * s
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float32)
    np.testing.assert_array_equal(got.quad.corners(), quad)
    want = ref_crop_final(img, quad, size=SIZE)
    assert got.crop.shape == want.shape == (176, 176, 3)
    d = np.abs(got.crop.astype(int) - want)
    assert d.max() <= 1 and np.mean(d > 0) < 1e-4  # the mask warp: within 1 level
    p = np.concatenate([np.concatenate([r, np.zeros((3, 1))], 1), [[0, 0, 0, 1.0]]], 0)
    np.testing.assert_allclose(got.camera, ref_eg3dcamparams(p.flatten()), atol=1e-5)


def test_cli_writes_panohead_layout(stubbed, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), _photo(700, 640, seed=i))
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "aligned"
    assert run_cli(align_cli.main, [str(photos), "--out", str(out)]) == 0
    assert "aligned 2 of 2" in capsys.readouterr().out
    targets = inversion_data.list_targets(out)
    assert [t.name for t in targets] == ["p0.jpg", "p1.jpg"]
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert all(len(v) == 25 and all(isinstance(s, str) for s in v) for _, v in labels)
    direct = ALIGN(stubbed[0], cv2.imread(str(photos / "p0.png")), size=SIZE)
    np.testing.assert_allclose(targets[0].camera, direct.camera, atol=1e-6)
    from PIL import Image

    buf = io.BytesIO()  # the file is the aligned crop, RGB, JPEG quality 95
    Image.fromarray(np.ascontiguousarray(direct.crop[..., ::-1])).save(buf, "JPEG", quality=95)
    assert (out / "p0.jpg").read_bytes() == buf.getvalue()
    assert cv2.imread(str(out / "p0.jpg")).shape == (176, 176, 3)


def test_skipped_photos_and_bad_input(stubbed, tmp_path, capsys, monkeypatch):
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), _photo(700, 640))
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"not a jpeg")
    monkeypatch.setattr(align_cli, "fit_faces", lambda w, img: [])
    capsys.readouterr()
    rc = run_cli(align_cli.main, [str(photo), str(broken), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and not (tmp_path / "o").exists()
    assert err[0].startswith("skipped") and "no face detected" in err[0]
    assert err[1].startswith("skipped") and "not a readable image" in err[1]
    assert err[2] == "error: none of the 2 photo(s) could be aligned"
    rc = run_cli(align_cli.main, [str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_pose_out_of_range_is_skipped(stubbed, monkeypatch):
    w, _ = stubbed
    monkeypatch.setattr(align_cli, "fit_faces", lambda _, img: [
        _face(_landmarks(80, 80, 30), _param(10.0, 9.3e-4, roll_deg=60.0), ROI_CROP)])
    with pytest.raises(align_cli.AlignmentSkipped, match="pose"):
        ALIGN(w, _photo(600, 600), size=SIZE)
