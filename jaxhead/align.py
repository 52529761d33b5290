"""Align your own photos for inversion: PanoHead's ``3DDFA_V2_cropping/recrop_images.py`` with
the first 68 landmarks taken from 3DDFA_V2 itself instead of dlib.

    python -m jaxhead.align PHOTOS... --out DIR [--tddfa checkpoints/tddfa]

PHOTOS are image files or folders of them. For each photo: FaceBoxes + 3DDFA on the photo, the
68 BFM landmarks of the face nearest its centre, the FFHQ quad of those landmarks, a 512 px
crop of the quad, FaceBoxes + 3DDFA again on the crop (the face nearest the crop's centre),
the pose read-out and the reference's rejection rules, the quad re-centred and re-scaled by
the pose, the final 563 x 563 crop, and the EG3D camera of the rotation. DIR gets the crops
(``<stem>.jpg``, JPEG quality 95 as ``cv2.imwrite``) and ``dataset.json`` =
``{"labels": [[file, [25 numbers]]]}``, the layout ``python -m jaxhead.invert`` reads.
Photos that cannot be aligned are reported one line each on stderr and skipped.
Convert the weights first: ``python -m convert_weights.tddfa PATH/TO/3DDFA_V2
checkpoints/tddfa``. See docs/alignment.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.face import recrop, recrop_image
from jaxhead.face.bfm import mean_depth
from jaxhead.face.fit import fit_faces
from jaxhead.face.weights import TDDFAWeights, load_tddfa
from jaxhead.utils.image_io import read_rgb

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Aligned:
    """One aligned photo: the final crop (BGR uint8), its camera label [25], the refined quad."""

    crop: np.ndarray
    camera: np.ndarray
    quad: recrop.Quad


class AlignmentSkipped(DataError):
    """This photo cannot be aligned (no face, pose out of range, face too small)."""


def read_bgr(path: Path) -> np.ndarray:
    """An image file as BGR uint8 [H, W, 3] (as ``cv2.imread(path, IMREAD_COLOR)``; decoded by
    Pillow, EXIF orientation applied, at most :data:`jaxhead.utils.image_io.MAX_PIXELS`).
    Raises :class:`DataError` naming an unreadable or oversized file."""
    rgb = np.asarray(read_rgb(path))
    return np.ascontiguousarray(rgb[..., ::-1])


def _centre_face(faces: list, w: int, h: int):
    return faces[recrop.center_box_index([f.roi_box for f in faces], w, h)]


def align(w: TDDFAWeights, img: np.ndarray, size: int = recrop.CROP_SIZE) -> Aligned:
    """One BGR photo -> its aligned crop and camera. ``size``: the first crop's side and the
    final crop's inner square (the reference's 512; the final crop is ``int(1.1 size)``).
    Raises :class:`AlignmentSkipped` saying why the reference would skip it."""
    h, wd = img.shape[:2]
    faces = fit_faces(w, img)
    if not faces:
        raise AlignmentSkipped("no face detected")
    lm = _centre_face(faces, wd, h).landmarks[:2].T.astype(np.float64)
    quad = recrop.crop_bound(lm)
    crop = recrop_image.first_crop(img, quad, size)
    faces = fit_faces(w, crop)
    if not faces:
        raise AlignmentSkipped("no face detected in the first crop")
    face = _centre_face(faces, size, size)
    # the reference maps the chosen face's offset with the first face's ROI (roi_box_lst[0])
    pose = recrop.crop_pose(face.param, faces[0].roi_box, size, size,
                            float(mean_depth(w.bfm)))
    why = recrop.rejection(pose)
    if why:
        raise AlignmentSkipped(why)
    quad = recrop.refine(quad, pose)
    final = recrop_image.final_crop(img, quad, size)
    if final is None:
        raise AlignmentSkipped(f"the face is too small (crop side under "
                               f"{recrop_image.MIN_QUAD} px)")
    return Aligned(final, recrop.eg3d_camera(pose.rotation), quad)


def list_photos(paths: Sequence[str]) -> list[Path]:
    """Image files named or inside the named folders (sorted). Raises :class:`DataError` for
    a path that does not exist or when there is no image at all."""
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*")
                          if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{s!r} does not exist")
    if not out:
        raise DataError(f"no images in {', '.join(map(repr, paths))} "
                        f"({', '.join(IMAGE_EXTS)})")
    return out


def write_outputs(out: Path, results: dict[str, Aligned]) -> None:
    """Crops as ``<name>`` (JPEG quality 95) and ``dataset.json`` with "%.6f" strings, as
    ``recrop_images.py`` writes them."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    labels = []
    for name, a in results.items():
        Image.fromarray(np.ascontiguousarray(a.crop[..., ::-1])).save(out / name, quality=95)
        labels.append([name, [format(float(v), ".6f") for v in a.camera]])
    (out / "dataset.json").write_text(json.dumps({"labels": labels}, indent="\t"),
                                      encoding="utf-8")


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m jaxhead.align", description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+", help="image files or folders of images")
    ap.add_argument("--out", required=True, help="output folder (crops + dataset.json)")
    ap.add_argument("--tddfa", default="checkpoints/tddfa",
                    help="converted 3DDFA_V2 (python -m convert_weights.tddfa)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    photos = list_photos(a.photos)
    w = load_tddfa(a.tddfa)
    results: dict[str, Aligned] = {}
    for p in photos:
        name = p.stem + ".jpg"
        if name in results:
            print(f"skipped {p}: another photo already gives the crop name {name!r}",
                  file=sys.stderr)
            continue
        try:
            results[name] = align(w, read_bgr(p))
        except DataError as e:
            print(f"skipped {p}: {e}", file=sys.stderr)
    if not results:
        raise DataError(f"none of the {len(photos)} photo(s) could be aligned")
    write_outputs(Path(a.out), results)
    print(f"aligned {len(results)} of {len(photos)} photo(s) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
