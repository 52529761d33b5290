"""3DDFA_V2's MobileNet regressor vs a PyTorch restatement (random weights, converted from its
checkpoint-style state dict), and the geometry (ROI, crop, BFM landmarks, P2sRt,
matrix2angle, the mapping back to the image) vs numpy restatements of the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tddfa_testlib import (  # noqa: E402
    TorchMobileNet,
    cv2_resize,
    fake_bfm,
    fake_mean_std,
    randomize,
    ref_crop_img,
    ref_landmarks,
    ref_matrix2angle,
    ref_p2srt,
    ref_parse_roi_box_from_bbox,
    ref_similar_transform,
)

from convert_weights.tddfa import bfm_params, mobilenet_params  # noqa: E402
from jaxhead.face import bfm as bfm_lib  # noqa: E402
from jaxhead.face import fit, pose, roi  # noqa: E402
from jaxhead.face.weights import TDDFAWeights  # noqa: E402
from jaxhead.models import tddfa  # noqa: E402


def _checkpoint_state(net: TorchMobileNet) -> dict:
    """The released checkpoints' naming: ``module.`` prefix, ``fc_param``, an unused ``fc_lm``."""
    sd = {"module." + k.replace("fc.", "fc_param."): v.numpy()
          for k, v in net.state_dict().items()}
    sd["module.fc_lm.weight"] = np.zeros((136, net.fc.in_features), np.float32)
    return sd


@pytest.mark.parametrize("wf", [1.0, 0.5])
def test_mobilenet_matches_reference(wf):
    net = randomize(TorchMobileNet(wf), seed=5)
    params = mobilenet_params(_checkpoint_state(net), wf)
    assert tddfa.widen_factor_of(params) == wf
    x = np.random.default_rng(0).uniform(-1, 1, (2, 120, 120, 3)).astype(np.float32)
    x[1] = np.linspace(-1, 1, 120)[:, None, None] * [1.0, 0.2, -0.6]  # a different image
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(tddfa.forward)(params, jnp.asarray(x)))
    assert got.shape == (2, 62)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    assert np.abs(want[0] - want[1]).max() > 0.1 * np.abs(want).max()  # input-dependent


def test_denormalize_and_normalize():
    ms = fake_mean_std(1)
    p = np.random.default_rng(0).standard_normal(62).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tddfa.denormalize(p, ms["mean"], ms["std"])),
                               p * ms["std"] + ms["mean"], rtol=1e-6)
    img = np.array([[[0, 127.5, 255]]], np.float32)
    np.testing.assert_allclose(np.asarray(tddfa.normalize(img)),
                               [[[-127.5 / 128, 0.0, 127.5 / 128]]])


def _random_param(rng) -> np.ndarray:
    """Plausible 62-d parameters: a scaled rotation + translation, small shape / expression."""
    a = rng.uniform(-0.6, 0.6, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a[0]), -np.sin(a[0])], [0, np.sin(a[0]), np.cos(a[0])]])
    ry = np.array([[np.cos(a[1]), 0, np.sin(a[1])], [0, 1, 0], [-np.sin(a[1]), 0, np.cos(a[1])]])
    rz = np.array([[np.cos(a[2]), -np.sin(a[2]), 0], [np.sin(a[2]), np.cos(a[2]), 0], [0, 0, 1]])
    cam = np.concatenate([1e-3 * (rz @ ry @ rx), rng.uniform(40, 80, (3, 1))], 1)
    return np.concatenate([cam.reshape(-1), rng.standard_normal(40) * 1e-2,
                           rng.standard_normal(10) * 1e-2]).astype(np.float32)


def test_landmarks_match_reference():
    raw = fake_bfm(n_vertices=500, seed=2)
    bfm, n = bfm_params(raw, "fake")
    assert n == 500
    rng = np.random.default_rng(3)
    params = np.stack([_random_param(rng) for _ in range(3)])
    got = np.asarray(bfm_lib.landmarks({k: jnp.asarray(v) for k, v in bfm.items()},
                                       jnp.asarray(params)))
    assert got.shape == (3, 3, 68)
    for i in range(3):
        want = ref_landmarks(raw["u"], raw["w_shp"], raw["w_exp"], raw["keypoints"], params[i])
        assert np.abs(got[i] - want).max() < 1e-4 * np.abs(want).max()


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(t) for t in (pitch, yaw, roll) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.mark.parametrize("angles", [(0.3, -0.2, 0.1), (-1.2, 0.5, -0.7), (1.5, 0.3, 0.2),
                                    (-1.56, -0.4, 0.6), (0.0, 0.0, 0.0)])
def test_p2srt_and_matrix2angle_match_reference(angles):
    rng = np.random.default_rng(7)
    cam = np.concatenate([1.3e-3 * _rot(*angles).T, rng.uniform(-50, 50, (3, 1))], 1)
    cam[1, :3] *= 1.05  # rows of different norms, as regressed
    cam = cam.astype(np.float32)
    s, r, t3d = (np.asarray(v) for v in pose.p2srt(jnp.asarray(cam)))
    s_ref, r_ref, t_ref = ref_p2srt(cam)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    np.testing.assert_allclose(r, r_ref, atol=1e-5)
    np.testing.assert_allclose(t3d, t_ref)
    want = np.array(ref_matrix2angle(r_ref.astype(np.float64)))
    got = np.asarray(pose.matrix2angle(jnp.asarray(r_ref)))
    assert np.abs(got - want).max() < 1e-4  # radians
    param = np.concatenate([cam.reshape(-1), np.zeros(50, np.float32)])
    p_wo_s, deg = (np.asarray(v) for v in pose.calc_pose(jnp.asarray(param)))
    np.testing.assert_allclose(p_wo_s, np.concatenate([r_ref, t_ref[:, None]], 1), atol=1e-5)
    np.testing.assert_allclose(deg, want * 180 / np.pi, atol=1e-2)


def test_matrix2angle_gimbal_branches():
    for sign in (1.0, -1.0):
        r = _rot(0.2, 0.3, 0.1)
        r[2, 0] = sign * 0.999
        want = np.array(ref_matrix2angle(r))
        np.testing.assert_allclose(np.asarray(pose.matrix2angle(jnp.asarray(r))), want,
                                   atol=1e-6)
        assert want[0] == pytest.approx(sign * np.pi / 2) and want[2] == 0.0


@pytest.mark.parametrize("bbox", [(30.2, 40.7, 130.9, 160.3, 0.9), (-20, -35, 60, 70),
                                  (150, 100, 250.5, 199.5)])
def test_roi_crop_and_inverse_mapping(bbox):
    want = ref_parse_roi_box_from_bbox([float(v) for v in bbox])
    got = roi.roi_box_from_bbox(bbox)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    img = np.random.default_rng(0).integers(0, 256, (200, 220, 3), dtype=np.uint8)
    crop = roi.crop_roi(img, got)
    np.testing.assert_array_equal(crop, ref_crop_img(img, want))
    pts = np.random.default_rng(1).uniform(0, 120, (3, 68)).astype(np.float32)
    np.testing.assert_allclose(roi.crop_to_image(pts, got, 120),
                               ref_similar_transform(pts, want, 120), rtol=1e-6, atol=1e-4)


def test_fit_box_matches_reference_pipeline():
    """``TDDFA.__call__`` + ``recon_vers`` + ``calc_pose`` for one box: ROI, crop, resize to
    120 (the reference's cv2.resize), MobileNet, de-normalisation,
    landmarks, similar_transform, angles."""
    net = randomize(TorchMobileNet(0.5), seed=9)
    raw, ms = fake_bfm(seed=4), fake_mean_std(4)
    bfm, _ = bfm_params(raw, "fake")
    w = TDDFAWeights(faceboxes={}, mobilenet=mobilenet_params(_checkpoint_state(net), 0.5),
                     bfm={k: jnp.asarray(v) for k, v in bfm.items() if k != "keypoints"},
                     param_mean=jnp.asarray(ms["mean"]), param_std=jnp.asarray(ms["std"]),
                     config={})
    img = np.random.default_rng(5).integers(0, 256, (180, 160, 3), dtype=np.uint8)
    box = np.array([20.5, 30.25, 120.75, 150.5, 0.97], np.float32)
    face = fit.fit_box(w, img, box)

    roi_box = ref_parse_roi_box_from_bbox([float(v) for v in box])
    crop = cv2_resize(ref_crop_img(img, roi_box), 120, 120)
    x = (crop - 127.5) / 128
    with torch.no_grad():
        out = net(torch.from_numpy(np.float32(x).transpose(2, 0, 1))[None]).numpy()[0]
    param = out * ms["std"] + ms["mean"]
    assert np.abs(face.param - param).max() < 1e-4 * np.abs(param).max()
    lm = ref_similar_transform(ref_landmarks(raw["u"], raw["w_shp"], raw["w_exp"],
                                             raw["keypoints"], param), roi_box, 120)
    assert np.abs(face.landmarks[:2] - lm[:2]).max() < 1e-4 * np.abs(lm[:2]).max()
    _, r_ref, t_ref = ref_p2srt(param[:12].reshape(3, 4))
    np.testing.assert_allclose(face.rotation, r_ref, atol=1e-4)
    np.testing.assert_allclose(face.t3d, t_ref, rtol=1e-4)
    np.testing.assert_allclose(face.roi_box, roi_box)
