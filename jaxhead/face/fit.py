"""One photo -> faces with 3DMM parameters, 68 landmarks and head pose: 3DDFA_V2's
``FaceBoxes`` then ``TDDFA(img, boxes)``, ``recon_vers`` (sparse) and ``calc_pose``.

Differences from the reference: images are resized with float bilinear interpolation
(:func:`jaxhead.ops.resize.resize_bilinear`, the same sample positions as ``cv2.resize``
INTER_LINEAR, without OpenCV's rounding to uint8), and the ROI is computed in float64.
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
from jaxhead.ops.resize import resize_bilinear


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


@jax.jit
def _regress(net: dict, mean: jax.Array, std: jax.Array, crop: jax.Array) -> jax.Array:
    """ROI crop [h, w, 3] -> 120x120 -> MobileNet -> de-normalised parameters [62]."""
    size = tddfa.INPUT_SIZE
    x = resize_bilinear(crop[None].astype(jnp.float32), (size, size))
    return tddfa.denormalize(tddfa.forward(net, tddfa.normalize(x))[0], mean, std)


def params_for_box(w: TDDFAWeights, image_bgr: np.ndarray, box: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The 62 de-normalised parameters of the face in ``box`` -> ``(param [62], roi_box)``."""
    roi = roi_box_from_bbox(box)
    crop = crop_roi(np.asarray(image_bgr), roi)
    return np.asarray(_regress(w.mobilenet, w.param_mean, w.param_std, jnp.asarray(crop))), roi


def fit_box(w: TDDFAWeights, image_bgr: np.ndarray, box: np.ndarray) -> FaceFit:
    """Parameters, landmarks and pose of the face in ``box`` (x1, y1, x2, y2[, score])."""
    param, roi = params_for_box(w, image_bgr, box)
    lm = np.asarray(bfm_lib.landmarks(w.bfm, jnp.asarray(param)))
    s, r, t3d = p2srt(jnp.asarray(param[:12]).reshape(3, 4))
    _, angles = calc_pose(jnp.asarray(param))
    full = np.zeros(5, np.float32)
    full[:len(box)] = np.asarray(box, np.float32)[:5]
    return FaceFit(full, roi, param, crop_to_image(lm, roi, tddfa.INPUT_SIZE), float(s),
                   np.asarray(r), np.asarray(t3d), np.asarray(angles))


def fit_faces(w: TDDFAWeights, image_bgr: np.ndarray) -> list[FaceFit]:
    """Every face FaceBoxes finds in ``image_bgr`` [H, W, 3] (BGR, 0..255), best score first."""
    return [fit_box(w, image_bgr, b) for b in faceboxes.detect(w.faceboxes, image_bgr)]
