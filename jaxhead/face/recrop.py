"""The geometry of PanoHead's photo recropping (``3DDFA_V2_cropping/recrop_images.py`` in
SizheAn/PanoHead): the FFHQ-style crop quad from 68 landmarks, the affine map of a quad onto
the crop, the choice of the face nearest the crop's centre, the pose / scale / offset read
from the 3DDFA parameters with the reference's rejection rules, the refined quad, and the
EG3D camera label. Host-side numpy; points are (x, y) image pixels.

The image crops are in :mod:`jaxhead.face.recrop_image`, the loop in :mod:`jaxhead.align`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxhead.face.pose import matrix2angle, p2srt

CROP_SIZE = 512  # the first crop, on which FaceBoxes + 3DDFA run
CAMERA_DISTANCE = 2.7
FOCAL = 4.2647  # normalised focal length of PanoHead's / EG3D's cameras
MAX_YAW, MAX_PITCH, MAX_ROLL = 90.0, 80.0, 50.0  # degrees; larger poses are skipped
MIN_SCALE, MAX_SCALE = 0.7, 1.3
TDDFA_SIZE = 120


@dataclass(frozen=True)
class Quad:
    """An oriented square: centre ``c`` and half-axes ``x`` (to the right) and ``y`` (down),
    all [2] float64; its corners are ``c - x - y, c - x + y, c + x + y, c + x - y``."""

    c: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def corners(self) -> np.ndarray:
        """[4, 2] float32 corners in the reference's order."""
        c, x, y = self.c, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float32)


def crop_bound(lm: np.ndarray) -> Quad:
    """68 landmarks [68, 2] -> the FFHQ crop square (``get_crop_bound(lm, "ffhq")``): oriented
    by the eyes and mouth, half-side ``max(2 |eye-eye|, 1.8 |eye-mouth|)``, centred a tenth of
    the way from the eyes' mean to the mouth's."""
    lm = np.asarray(lm, np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"crop_bound expects 68 (x, y) landmarks, got shape {lm.shape}")
    left_e, right_e = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_to_eye = right_e - left_e
    eye_avg = (left_e + right_e) * 0.5
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    return Quad(eye_avg + eye_to_mouth * 0.1, x, y)


def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The [2, 3] affine map sending the three points ``src`` [3, 2] to ``dst`` [3, 2],
    computed as ``cv2.getAffineTransform`` does (points as float32, the 6 x 6 system solved by
    OpenCV's Gaussian elimination with partial pivoting in float64), so that the warps that
    round it to fixed point see the same bits. float64."""
    p = np.asarray(src, np.float32)[:3].astype(np.float64)
    q = np.asarray(dst, np.float32)[:3].astype(np.float64)
    a = [[0.0] * 6 for _ in range(6)]
    b = [0.0] * 6
    for i in range(3):
        a[2 * i][:3] = [p[i, 0], p[i, 1], 1.0]
        a[2 * i + 1][3:] = [p[i, 0], p[i, 1], 1.0]
        b[2 * i], b[2 * i + 1] = float(q[i, 0]), float(q[i, 1])
    for i in range(6):
        k = max(range(i, 6), key=lambda j: (abs(a[j][i]), -j))  # first of the largest
        if abs(a[k][i]) < np.finfo(np.float64).eps:
            raise ValueError("the three source points are collinear")
        if k != i:
            a[i][i:], a[k][i:] = a[k][i:], a[i][i:]
            b[i], b[k] = b[k], b[i]
        d = -1.0 / a[i][i]
        for j in range(i + 1, 6):
            alpha = a[j][i] * d
            for c in range(i + 1, 6):
                a[j][c] += alpha * a[i][c]
            b[j] += alpha * b[i]
    for i in range(5, -1, -1):
        acc = b[i]
        for c in range(i + 1, 6):
            acc -= a[i][c] * b[c]
        b[i] = acc / a[i][i]
    return np.array(b).reshape(2, 3)


def crop_corners(size: int) -> np.ndarray:
    """Corners of a ``size`` crop in the quad's corner order: [4, 2] float32."""
    s = size - 1
    return np.array([[0, 0], [0, s], [s, s], [s, 0]], np.float32)


def center_box_index(roi_boxes: Sequence[Sequence[float]], w: int, h: int) -> int:
    """Index of the ROI box whose centre is nearest the image centre ``((w-1)/2, (h-1)/2)``."""
    b = np.asarray(roi_boxes, np.float64)
    d = np.stack([0.5 * (b[:, 0] + b[:, 2]) - 0.5 * (w - 1),
                  0.5 * (b[:, 1] + b[:, 3]) - 0.5 * (h - 1)], 1)
    return int(np.argmin(np.linalg.norm(d, axis=1)))


@dataclass(frozen=True)
class CropPose:
    """What the reference reads from one face's parameters on the first crop: ``scale`` s
    (1 = the crop fits the head), ``t3d`` [3] (x, y offsets normalised to [-1, 1], y up, z 0),
    ``rotation`` R [3, 3] and ``angles`` (yaw, pitch, roll) in degrees."""

    scale: float
    t3d: np.ndarray
    rotation: np.ndarray
    angles: np.ndarray


def crop_pose(param: np.ndarray, roi_box: Sequence[float], w: int, h: int,
              mean_depth: float, size: int = TDDFA_SIZE) -> CropPose:
    """The reference's pose read-out: ``P2sRt`` of the 3x4 camera, the offset moved to the
    head's centre (half the BFM mean shape's mean z along R's z), mapped from the 3DDFA crop
    to the image and normalised to [-1, 1] (y up), and the scale ``s_relative * 2000`` times
    the ROI's size relative to the image. ``roi_box`` is the reference's ``roi_box_lst[0]``
    (the first detected face's ROI, whichever face ``center_box_index`` picked)."""
    p = np.asarray(param, np.float32)
    cam = p[:12].reshape(3, 4)
    _, r, _ = (np.asarray(v) for v in p2srt(cam))
    s_rel = float(np.linalg.norm(cam[0, :3]) + np.linalg.norm(cam[1, :3])) / 2.0
    angles = np.degrees(np.asarray(matrix2angle(r), np.float64))
    # the reference keeps t3d in a float32 view of the parameters: every store rounds to
    # float32; intermediates are float64 (numpy 1.x promotion, PanoHead's environment)
    t = np.array(cam[:, 3], np.float32)
    t += cam[:, :3] @ np.array([0.0, 0.0, 0.5 * mean_depth])
    sx, sy, ex, ey = (float(v) for v in roi_box)
    t[0] = float(t[0] - 1) * ((ex - sx) / size) + sx
    t[1] = float(size - t[1]) * ((ey - sy) / size) + sy
    t[0] = (float(t[0]) - 0.5 * (w - 1)) / (0.5 * (w - 1))
    t[1] = (float(t[1]) - 0.5 * (h - 1)) / (0.5 * (h - 1))
    t[1] *= -1
    t[2] = 0.0
    s = ((ex - sx) / (w - 1) + (ey - sy) / (h - 1)) / 2 * (s_rel * 2000)
    t = t.astype(np.float64)
    return CropPose(s, t, r, angles)


def rejection(pose: CropPose) -> str | None:
    """Why the reference skips this photo (scale outside [0.7, 1.3], |yaw| > 90, |pitch| > 80,
    |roll| > 50 degrees, or the head's centre outside the crop), or None."""
    if not MIN_SCALE <= pose.scale <= MAX_SCALE:
        return f"scale {pose.scale:.3f} outside [{MIN_SCALE}, {MAX_SCALE}]"
    yaw, pitch, roll = pose.angles
    if abs(yaw) > MAX_YAW or abs(pitch) > MAX_PITCH or abs(roll) > MAX_ROLL:
        return f"pose (yaw, pitch, roll) = ({yaw:.1f}, {pitch:.1f}, {roll:.1f}) degrees too large"
    if abs(pose.t3d[0]) > 1 or abs(pose.t3d[1]) > 1:
        return f"head centre ({pose.t3d[0]:.2f}, {pose.t3d[1]:.2f}) outside the crop"
    return None


def refine(quad: Quad, pose: CropPose) -> Quad:
    """The quad re-centred on the head (``t3d`` along its axes) and scaled by ``s``."""
    c = quad.c + quad.x * pose.t3d[0] - quad.y * pose.t3d[1]
    return Quad(c, quad.x * pose.scale, quad.y * pose.scale)


def eg3d_camera(rotation: np.ndarray) -> np.ndarray:
    """World-to-camera rotation [3, 3] -> PanoHead's 25-number label (``eg3dcamparams``):
    cam2world [4, 4] row-major of the camera 2.7 units from the origin in OpenCV axes, then the
    normalised intrinsics [[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]]. float64."""
    r = np.eye(4, dtype=np.float32)
    r[:3, :3] = np.asarray(rotation, np.float32)
    t = np.eye(4, dtype=np.float32)
    t[2, 3] = -CAMERA_DISTANCE
    flip = np.diag(np.array([1, -1, -1, 1], np.float32))
    cam2world = np.linalg.inv(flip @ t @ r)
    k = np.array([[FOCAL, 0, 0.5], [0, FOCAL, 0.5], [0, 0, 1]])
    return np.concatenate([cam2world.reshape(16), k.reshape(9)])
