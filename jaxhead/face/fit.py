"""One photo -> faces with 3DMM parameters, 68 landmarks and head pose: 3DDFA_V2's
``FaceBoxes`` then ``TDDFA(img, boxes)``, ``recon_vers`` (sparse) and ``calc_pose``.

uint8 images are resized as the reference's ``cv2.resize`` does (bit-exact restatement in
:mod:`jaxhead.ops.cv2_resize`); float images bilinearly at the same sample points. The ROI is
computed in float64 (the reference mixes float32 and float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.face import bfm as bfm_lib
from jaxhead.face.pose import calc_pose, p2srt
from jaxhead.face.roi import crop_roi, crop_to_image, roi_box_from_bbox
from jaxhead.face.weights import TDDFAWeights
from jaxhead.models import faceboxes, tddfa
from jaxhead.ops.cv2_resize import resize_linear_u8
from jaxhead.ops.resize import resize_matrix


@dataclass(frozen=True)
class FaceFit:
    """One face: ``box`` (x1, y1, x2, y2, score) from FaceBoxes, ``roi_box`` (sx, sy, ex, ey),
    ``param`` [62] de-normalised, ``landmarks`` [3, 68] in image pixels (x, y; z relative),
    ``scale`` s, ``rotation`` R [3, 3] and ``t3d`` [3] of ``P2sRt``, ``angles`` (yaw, pitch,
    roll) in degrees."""

    box: np.ndarray
    roi_box: np.ndarray
    param: np.ndarray
    landmarks: np.ndarray
    scale: float
    rotation: np.ndarray
    t3d: np.ndarray
    angles: np.ndarray


def resize_crop(crop: np.ndarray, size: int = tddfa.INPUT_SIZE) -> np.ndarray:
    """ROI crop [h, w, 3] -> [size, size, 3] float32 on the host (the network then compiles
    once whatever the crop's size): a uint8 crop exactly as the reference's ``cv2.resize``
    (:func:`~jaxhead.ops.cv2_resize.resize_linear_u8`), a float crop bilinear at the same
    sample points without OpenCV's fixed-point rounding."""
    if crop.dtype == np.uint8:
        return resize_linear_u8(crop, (size, size)).astype(np.float32)
    mh = resize_matrix(crop.shape[0], size)
    mw = resize_matrix(crop.shape[1], size)
    rows = np.tensordot(mh, np.asarray(crop, np.float32), axes=(1, 0))  # [size, w, 3]
    return np.einsum("iwc,jw->ijc", rows, mw, optimize=True).astype(np.float32)


@jax.jit
def _regress(net: dict, mean: jax.Array, std: jax.Array, bfm: dict, x: jax.Array):
    """Resized crops [B, 120, 120, 3] -> (param [B, 62], landmarks [B, 3, 68] in the crop
    frame, s [B], R [B, 3, 3], t3d [B, 3], angles [B, 3] in degrees)."""
    param = tddfa.denormalize(tddfa.forward(net, tddfa.normalize(x)), mean, std)
    s, r, t3d = p2srt(param[:, :12].reshape(-1, 3, 4))
    _, angles = calc_pose(param)
    return param, bfm_lib.landmarks(bfm, param), s, r, t3d, angles


def fit_box(w: TDDFAWeights, image_bgr: np.ndarray, box: np.ndarray) -> FaceFit:
    """Parameters, landmarks and pose of the face in ``box`` (x1, y1, x2, y2[, score])."""
    roi = roi_box_from_bbox(box)
    x = resize_crop(crop_roi(np.asarray(image_bgr), roi))
    out = _regress(w.mobilenet, w.param_mean, w.param_std, w.bfm, jnp.asarray(x)[None])
    param, lm, s, r, t3d, angles = (np.asarray(a)[0] for a in out)
    full = np.zeros(5, np.float32)
    full[:len(box)] = np.asarray(box, np.float32)[:5]
    return FaceFit(full, roi, param, crop_to_image(lm, roi, tddfa.INPUT_SIZE), float(s), r,
                   t3d, angles)


def fit_faces(w: TDDFAWeights, image_bgr: np.ndarray) -> list[FaceFit]:
    """Every face FaceBoxes finds in ``image_bgr`` [H, W, 3] (BGR, 0..255), best score first."""
    return [fit_box(w, image_bgr, b) for b in faceboxes.detect(w.faceboxes, image_bgr)]
