"""Identity similarity (the paper's ID metric): ArcFace cosine similarity between renders of
the stylized and the frozen generator, with the face crop derived from the camera.

    params = load_arcface("checkpoints/arcface_r50")      # jaxhead.models.arcface
    ea = face_embeddings(params, renders_a, cameras=cams)   # [N, H, W, 3] in [0, 1] -> [N, 512]
    eb = face_embeddings(params, renders_b, cameras=cams)
    id_similarity(ea, eb)                                    # [N] cosines

**The crop** is insightface's ``norm_crop``: the similarity transform (rotation, uniform
scale, translation) that maps five facial landmarks to the ArcFace 112x112 template in the
least-squares sense (Umeyama 1991, as ``skimage.transform.SimilarityTransform.estimate``), and
a bilinear warp with a black border (``cv2.warpAffine``). Landmark order is insightface's:
left eye, right eye, nose tip, left mouth corner, right mouth corner, *as seen in the image*
(the subject's right eye first); pixel coordinates ``(x, y)`` with pixel centres at integers.
Unlike insightface, which warps the uint8 image, the crop stays float (no rounding to 8 bits).

For arbitrary images pass detected landmarks (``landmarks=[N, 5, 2]``). For renders of a
PanoHead generator the landmarks come from the camera (``cameras=[N, 25]``): the canonical 3D
landmarks :data:`PANOHEAD_LANDMARKS_3D` are projected through each camera, so no detector is
needed and the crop follows the head as the camera orbits. Their derivation
(:func:`derive_panohead_landmarks`):

1. The ArcFace template's own points define FFHQ's alignment quad (the FFHQ recipe: ``x`` along
   eye-to-eye minus the rotated eye-to-mouth vector, half-size ``max(2 |eye-to-eye|,
   1.8 |eye-to-mouth|)``, centre ``eye_avg + 0.1 eye-to-mouth``); each point gets coordinates in
   that quad. (In a 512 px FFHQ image this puts them within 2-3 px of the usual FFHQ 512
   5-point template for the eyes and nose, 3-12 px for the mouth corners.)
2. PanoHead's data crop (``3DDFA_V2_cropping/recrop_images.py``, ``crop_final``) maps that quad
   to the 512 px square at (25, 51) of a 563x563 image (5% margin left and right, 10% on top),
   which is then resized to the generator's 512 px. The per-image 3DDFA re-centring and
   re-scaling that precede ``crop_final`` average out over a dataset and are ignored.
3. These 2D points (eyes at (199, 266) and (311, 266), nose (255, 330), mouth corners (209,
   395) and (301, 395) in 512 px) are lifted along the rays of the frontal camera
   (``make_camera(0, 0)``: radius 2.7, FOV 18.837 deg) to depths from average adult
   anthropometry: eyes in one plane 85 mm in front of the camera pivot (the world origin, near
   the centre of the head), the nose tip 25 mm in front of the eyes, the mouth corners in the
   eye plane; the world scale follows from a 63 mm interpupillary distance (0.00205 world
   units per mm: the eyes land 0.129 apart at z = 0.175).

So the frontal crop reproduces the alignment of the training data, and off-frontal crops are
as good as the depth assumptions (placing all five 1 cm too deep moves the crop by about 3 px
of its 112 at 30 degrees of yaw). The crop is meaningful while the face is visible (|yaw|
up to about 60 degrees); behind the head the landmarks are occluded and the ID metric is
undefined. Other generators or framings: pass ``points=`` (3D, world units) or detected
``landmarks=``.

pSp / e4e's ``IDLoss`` instead crops rows 35:223, columns 32:220 of 256 px FFHQ images and
average-pools to 112 px; that fixed crop assumes FFHQ framing and is not reproduced here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.camera import DEFAULT_FOV_DEG, DEFAULT_RADIUS, make_camera
from jaxhead.models.arcface import INPUT_SIZE, ArcFaceParams, embed
from jaxhead.ops.grid_sample import warp_affine

Array = jax.Array

# insightface's ``arcface_dst`` (face_align.py): the 5 landmarks of an aligned 112x112 face.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


# --- the alignment ---------------------------------------------------------------------------

def similarity_transform(src: Array, dst: Array) -> Array:
    """Least-squares similarity transform (no reflection) mapping ``src`` to ``dst``.

    ``src``: ``[..., K, 2]``, ``dst``: ``[K, 2]`` or ``[..., K, 2]`` -> ``[..., 2, 3]``
    matrices ``[[a, -b, tx], [b, a, ty]]``. In 2-D Umeyama's solution is the complex
    least-squares fit ``d = (a + ib) s + t`` over centred points: ``a + ib = sum(conj(s) d) /
    sum(|s|^2)``; the same transform as ``skimage``'s ``SimilarityTransform.estimate``, in
    closed form (no SVD), differentiable and batched.
    """
    src = jnp.asarray(src, jnp.float32)
    dst = jnp.broadcast_to(jnp.asarray(dst, jnp.float32), src.shape)
    ms, md = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
    s, d = src - ms, dst - md
    var = jnp.sum(s * s, axis=(-2, -1))
    a = jnp.sum(s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1], -1) / var
    b = jnp.sum(s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0], -1) / var
    rot = jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)  # [..., 2, 2]
    t = md[..., 0, :] - jnp.einsum("...ij,...j->...i", rot, ms[..., 0, :])
    return jnp.concatenate([rot, t[..., None]], -1)


def align_faces(images: Array, landmarks: Array, *, size: int = INPUT_SIZE) -> Array:
    """insightface's ``norm_crop`` for a batch: ``[N, H, W, C]`` images (float, any range;
    uint8 becomes float32 0..255) and ``[N, 5, 2]`` landmarks in pixels -> ``[N, size, size,
    C]`` aligned faces (the template scaled by ``size / 112``)."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32)
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.shape != (images.shape[0], 5, 2):
        raise ValueError(f"expected landmarks [N, 5, 2] for {images.shape[0]} images, got "
                         f"{landmarks.shape}")
    m = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / INPUT_SIZE))
    return warp_affine(images, m, (size, size))


# --- landmarks of PanoHead renders ---------------------------------------------------------

def _ffhq_quad_coords(points: np.ndarray) -> np.ndarray:
    """Coordinates in [-1, 1]^2 of ``points`` in FFHQ's alignment quad built from the
    points themselves (FFHQ's recipe: eyes = points 0, 1, mouth corners = 3, 4)."""
    eye_avg = (points[0] + points[1]) / 2
    e2e = points[1] - points[0]
    e2m = (points[3] + points[4]) / 2 - eye_avg
    x = e2e - np.array([-e2m[1], e2m[0]])  # FFHQ: eye_to_eye - flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x) * max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + e2m * 0.1
    return np.linalg.solve(np.stack([x, y], 1), (points - c).T).T


def derive_panohead_landmarks(*, interpupillary_mm: float = 63.0, eye_plane_mm: float = 85.0,
                              nose_mm: float = 25.0, mouth_mm: float = 0.0,
                              radius: float = DEFAULT_RADIUS,
                              fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """The canonical 3D landmarks (world units) of a PanoHead head: ``[5, 3]`` float64. See
    the module docstring; ``*_mm``: eye plane in front of the world origin, nose tip and mouth
    corners in front of the eye plane, and the interpupillary distance that sets the scale."""
    uv = _ffhq_quad_coords(ARCFACE_TEMPLATE)
    p563 = np.array([25.0, 51.0]) + (uv + 1) / 2 * 511  # crop_final: int(512 * 0.05), * 0.1
    norm = (p563 + 0.5) / 563  # normalised image coordinates after the resize to 512
    with jax.ensure_compile_time_eval():  # a host constant, also when first asked in a trace
        cam = np.asarray(make_camera(jnp.zeros(1), jnp.zeros(1), radius=radius,
                                     fov_deg=fov_deg), np.float64)[0]
    c2w, k = cam[:16].reshape(4, 4), cam[16:].reshape(3, 3)
    dirs_c = np.concatenate([(norm - k[:2, 2]) / np.diag(k)[:2], np.ones((5, 1))], 1)
    dirs = dirs_c @ c2w[:3, :3].T
    origin = c2w[:3, 3]

    def at_depth(z):  # the points of each ray at world depth z (planes facing the camera)
        t = (np.asarray(z) - origin[2]) / dirs[:, 2]
        return origin + t[:, None] * dirs

    # distance between the eyes grows linearly with the distance from the camera
    d0 = np.linalg.norm(np.subtract(*at_depth(0.0)[:2]))  # at z = 0, distance `radius`
    scale = d0 / (interpupillary_mm + d0 / radius * eye_plane_mm)  # world units per mm
    z_eye = eye_plane_mm * scale
    offsets = np.array([0.0, 0.0, nose_mm, mouth_mm, mouth_mm]) * scale
    return at_depth(z_eye + offsets)


@functools.cache
def panohead_landmarks_3d() -> np.ndarray:
    """:func:`derive_panohead_landmarks` with its defaults, computed once on first use (not at
    import: importing must not start the JAX backend, e.g. before ``jax.distributed``)."""
    return derive_panohead_landmarks()


def __getattr__(name: str):
    if name == "PANOHEAD_LANDMARKS_3D":  # the module constant, made lazily
        return panohead_landmarks_3d()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def project_points(points: Array, cameras: Array, image_size: int) -> Array:
    """World points ``[K, 3]`` (or ``[N, K, 3]``) through cameras ``[N, 25]`` (cam2world +
    normalised intrinsics, OpenCV axes, as rendered by :mod:`jaxhead.models.panohead`) ->
    pixel coordinates ``[N, K, 2]`` in an ``image_size`` render (pixel centres at integers)."""
    cameras = jnp.asarray(cameras, jnp.float32)
    c2w = cameras[:, :16].reshape(-1, 4, 4)
    k = cameras[:, 16:25].reshape(-1, 3, 3)
    p = jnp.broadcast_to(jnp.asarray(points, jnp.float32), (cameras.shape[0],
                                                             *np.shape(points)[-2:]))
    rel = p - c2w[:, None, :3, 3]
    cam = jnp.einsum("nji,nkj->nki", c2w[:, :3, :3], rel,
                     precision=jax.lax.Precision.HIGHEST)  # R^T (p - t)
    uv = jnp.einsum("nij,nkj->nki", k, cam / cam[..., 2:3],
                    precision=jax.lax.Precision.HIGHEST)[..., :2]
    return uv * image_size - 0.5


def render_landmarks(cameras: Array, image_size: int, *,
                     points: Array | None = None) -> Array:
    """The 5 landmarks ``[N, 5, 2]`` (pixels) of renders from ``cameras`` ``[N, 25]``
    (``points``: the 3D landmarks ``[5, 3]``, default ``PANOHEAD_LANDMARKS_3D``)."""
    points = panohead_landmarks_3d() if points is None else points
    return project_points(points, cameras, image_size)


def crop_renders(images: Array, cameras: Array, *, points: Array | None = None,
                 size: int = INPUT_SIZE) -> Array:
    """Aligned face crops ``[N, size, size, C]`` of square renders ``[N, H, H, C]`` made with
    ``cameras`` ``[N, 25]``."""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square renders [N, H, H, C], got shape {images.shape}")
    return align_faces(images, render_landmarks(cameras, images.shape[1], points=points),
                       size=size)


# --- embeddings and the metric -------------------------------------------------------------

def face_embeddings(params: ArcFaceParams, images: Array, *, landmarks: Array | None = None,
                    cameras: Array | None = None,
                    points: Array | None = None) -> Array:
    """Raw ArcFace embeddings ``[N, D]`` of the faces in ``images`` (``[N, H, W, 3]`` RGB,
    uint8 or float in [0, 1]; renders in [-1, 1] must be mapped with ``(x + 1) / 2`` first),
    cropped with detected ``landmarks`` ``[N, 5, 2]`` or, for renders, from ``cameras``
    ``[N, 25]`` (exactly one of the two)."""
    if (landmarks is None) == (cameras is None):
        raise ValueError("pass exactly one of landmarks= (detected, [N, 5, 2] pixels) and "
                         "cameras= (renders, [N, 25])")
    images = jnp.asarray(images)
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
    if landmarks is not None:
        faces = align_faces(x, landmarks)
    else:
        faces = crop_renders(x, cameras, points=points)
    return embed(params, 2.0 * faces - 1.0)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Unit vectors along the last axis."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def id_similarity(emb_a: Array, emb_b: Array) -> Array:
    """Cosine similarity of paired embeddings ``[N, D]`` x ``[N, D]`` -> ``[N]`` (1: same
    direction; the embeddings are L2-normalised here, so raw ones are fine)."""
    emb_a, emb_b = jnp.asarray(emb_a), jnp.asarray(emb_b)
    if emb_a.shape != emb_b.shape or emb_a.ndim != 2:
        raise ValueError(f"expected two [N, D] embeddings of one shape, got {emb_a.shape} "
                         f"and {emb_b.shape}")
    return jnp.sum(l2_normalize(emb_a) * l2_normalize(emb_b), axis=-1)



__all__ = ["ARCFACE_TEMPLATE", "LANDMARK_NAMES", "align_faces", "panohead_landmarks_3d",
           "crop_renders", "derive_panohead_landmarks", "face_embeddings", "id_similarity",
           "l2_normalize", "project_points", "render_landmarks", "similarity_transform"]
