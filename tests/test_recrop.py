"""PanoHead's recropping geometry (``recrop_images.py``) vs numpy restatements of the reference
functions and OpenCV's ``getAffineTransform``."""

import math

import numpy as np
import pytest

from jaxhead.face import recrop
from jaxhead.face.pose import p2srt


def ref_get_crop_bound(lm):
    left_e, right_e = np.mean(lm[36:42], axis=0), np.mean(lm[42:48], axis=0)
    left_m, right_m = lm[48], lm[54]
    eye_to_eye = right_e - left_e
    eye_avg = (left_e + right_e) * 0.5
    mouth_avg = (left_m + right_m) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad.astype(np.float32), c, x, y


def ref_read_pose(param, roi_box0, w, h, u_z_mean, size=120):
    """The loop body of ``recrop_images.main`` from ``P2sRt`` to ``s``: t3d in a float32
    array as the reference keeps it, scalar arithmetic promoted as numpy 1.x did (a numpy
    float32 scalar with a Python float gives float64), PanoHead's environment."""
    param = np.array(param, np.float32)
    p = param[:12].reshape(3, -1)
    t3d = p[:, 3]
    r1, r2 = p[0:1, :3], p[1:2, :3]
    s_relative = float(np.linalg.norm(r1) + np.linalg.norm(r2)) / 2.0
    r1, r2 = r1 / np.linalg.norm(r1), r2 / np.linalg.norm(r2)
    r = np.concatenate((r1, r2, np.cross(r1, r2)), 0)
    if r[2, 0] > 0.998:
        pose = (np.pi / 2, math.atan2(-r[0, 1], -r[0, 2]), 0.0)
    elif r[2, 0] < -0.998:
        pose = (-np.pi / 2, math.atan2(r[0, 1], r[0, 2]), 0.0)
    else:
        x = math.asin(r[2, 0])
        pose = (x, math.atan2(r[2, 1] / math.cos(x), r[2, 2] / math.cos(x)),
                math.atan2(r[1, 0] / math.cos(x), r[0, 0] / math.cos(x)))
    pose = [v * 180 / np.pi for v in pose]
    trans = np.matmul(param[:12].reshape(3, -1)[:, :3],
                      np.array([0, 0, 0.5 * u_z_mean]).reshape(3, 1))
    t3d += trans.reshape(3)
    sx, sy, ex, ey = roi_box0
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    t3d[0] = float(t3d[0] - 1) * scale_x + sx
    t3d[1] = float(size - t3d[1]) * scale_y + sy
    t3d[0] = (float(t3d[0]) - 0.5 * (w - 1)) / (0.5 * (w - 1))
    t3d[1] = (float(t3d[1]) - 0.5 * (h - 1)) / (0.5 * (h - 1))
    t3d[1] *= -1
    t3d[2] = 0
    s_relative = s_relative * 2000
    s = ((ex - sx) / (w - 1) + (ey - sy) / (h - 1)) / 2 * s_relative
    return s, t3d, r, pose


def ref_eg3dcamparams(r_in):
    intrinsics = np.array([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]])
    r = np.array(r_in).astype(np.float32).reshape(4, 4)
    t = np.eye(4, dtype=np.float32)
    t[2, 3] = -2.7
    convert = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], np.float32)
    return np.concatenate([np.linalg.inv(convert @ t @ r).reshape(16), intrinsics.reshape(9)])


def _landmarks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lm = rng.uniform(100, 400, (68, 2))
    lm[36:42] = [180, 200] + rng.normal(0, 5, (6, 2))
    lm[42:48] = [300, 210] + rng.normal(0, 5, (6, 2))
    lm[48], lm[54] = [200, 330], [290, 335]
    return lm


@pytest.mark.parametrize("seed", [0, 1])
def test_crop_bound_and_affine(seed):
    cv2 = pytest.importorskip("cv2")
    lm = _landmarks(seed)
    quad = recrop.crop_bound(lm)
    want, c, x, y = ref_get_crop_bound(lm.copy())
    np.testing.assert_allclose(quad.corners(), want, rtol=1e-6)
    np.testing.assert_allclose(quad.c, c)
    bound = recrop.crop_corners(512)
    mat = recrop.affine_from_points(quad.corners()[:3], bound[:3])
    np.testing.assert_array_equal(mat, cv2.getAffineTransform(want[:3], bound[:3]))
    # the fourth corner lands on the crop's fourth corner too (a square onto a square)
    np.testing.assert_allclose(mat @ [*quad.corners()[3], 1.0], bound[3], atol=1e-3)


def test_affine_from_points_is_opencvs_bit_for_bit():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    for _ in range(50):
        src = rng.uniform(0, 900, (3, 2)).astype(np.float32)
        dst = rng.uniform(0, 600, (3, 2)).astype(np.float32)
        np.testing.assert_array_equal(recrop.affine_from_points(src, dst),
                                      cv2.getAffineTransform(src, dst))
    with pytest.raises(ValueError, match="collinear"):
        recrop.affine_from_points([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 0], [0, 1]])


def test_center_box_index():
    boxes = [[0, 0, 50, 50], [90, 80, 150, 140], [200, 200, 260, 260]]
    assert recrop.center_box_index(boxes, 240, 220) == 1
    assert recrop.center_box_index(boxes[::-1], 240, 220) == 1
    assert recrop.center_box_index([[0, 0, 10, 10]], 240, 220) == 0


def _param(yaw: float, pitch: float, roll: float, scale: float, seed: int) -> np.ndarray:
    cy, sy_, cx, sx_, cz, sz = (f(np.radians(a)) for a in (yaw, pitch, roll)
                                for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx_], [0, sx_, cx]])
    ry = np.array([[cy, 0, sy_], [0, 1, 0], [-sy_, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rng = np.random.default_rng(seed)
    cam = np.concatenate([scale * (rz @ ry @ rx).T, [[61.0], [58.0], [66.67]]], 1)
    return np.concatenate([cam.reshape(-1), rng.normal(0, 1e-2, 50)]).astype(np.float32)


@pytest.mark.parametrize("angles, scale", [((10, -5, 3), 4.5e-4), ((-60, 20, -10), 5.5e-4),
                                           ((85, 5, 2), 3e-4)])
def test_crop_pose_matches_reference(angles, scale):
    param = _param(*angles, scale, seed=3)
    roi0 = (100.3, 80.7, 420.2, 400.6)
    got = recrop.crop_pose(param, roi0, 512, 512, mean_depth=-8.5)
    s, t3d, r, pose = ref_read_pose(param, roi0, 512, 512, -8.5)
    assert got.scale == pytest.approx(s, rel=1e-5)
    np.testing.assert_allclose(got.t3d, t3d, atol=1e-5)
    np.testing.assert_allclose(got.rotation, r, atol=1e-6)
    np.testing.assert_allclose(got.angles, pose, atol=1e-3)
    assert got.t3d[2] == 0.0


def test_rejection_rules():
    ok = recrop.CropPose(1.0, np.array([0.1, -0.2, 0.0]), np.eye(3), np.array([30.0, 10, 5]))
    assert recrop.rejection(ok) is None
    for field, value, needle in (("scale", 0.69, "scale"), ("scale", 1.31, "scale"),
                                 ("angles", np.array([91.0, 0, 0]), "pose"),
                                 ("angles", np.array([0, -81.0, 0]), "pose"),
                                 ("angles", np.array([0, 0, 51.0]), "pose"),
                                 ("t3d", np.array([1.01, 0, 0]), "outside the crop"),
                                 ("t3d", np.array([0, -1.2, 0]), "outside the crop")):
        bad = recrop.CropPose(**{**ok.__dict__, field: value})
        assert needle in recrop.rejection(bad)


def test_refine_matches_reference_update():
    quad = recrop.crop_bound(_landmarks(0))
    pose = recrop.CropPose(1.1, np.array([0.2, -0.1, 0.0]), np.eye(3), np.zeros(3))
    new = recrop.refine(quad, pose)
    c = quad.c + quad.x * 0.2
    c = c - quad.y * -0.1
    x, y = quad.x * 1.1, quad.y * 1.1
    want = np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float32)
    np.testing.assert_allclose(new.corners(), want, rtol=1e-6)


def test_eg3d_camera_matches_reference_and_panohead_layout():
    param = _param(25, -10, 4, 5e-4, seed=1)
    _, r, _ = (np.asarray(v) for v in p2srt(param[:12].reshape(3, 4)))
    p = np.concatenate([np.concatenate([r, np.zeros((3, 1))], 1), [[0, 0, 0, 1.0]]], 0)
    want = ref_eg3dcamparams(p.flatten())
    got = recrop.eg3d_camera(r)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # a frontal head: camera 2.7 units in front of it, OpenCV axes (y down, z forward)
    front = recrop.eg3d_camera(np.eye(3)).reshape(-1)
    np.testing.assert_allclose(front[:16].reshape(4, 4), [[1, 0, 0, 0], [0, -1, 0, 0],
                                                          [0, 0, -1, 2.7], [0, 0, 0, 1]],
                               atol=1e-6)
    np.testing.assert_allclose(front[16:], [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1])
