"""Image files in and out: reading files from strangers (the size is checked from the header
before decoding), generator images to uint8, atomic writes.

A 2.6 MB PNG can declare 30000 x 30000 pixels (2.7 GB decoded) and a 74-byte PNG can hold a
header and no pixels. :func:`read_rgb` checks the declared size against :data:`MAX_PIXELS`
before any pixel is decoded and turns every decoding failure into one :class:`DataError` that
names the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from jaxhead.errors import DataError

# the largest image read: 64 megapixels (an 8192 x 8192 image; phone photos are 12-50 MP)
MAX_PIXELS = 8192 * 8192


def image_size(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the file's header (no pixel is decoded); a missing file, one
    that is not an image, of zero size or larger than ``max_pixels``: :class:`DataError`."""
    from PIL import Image, UnidentifiedImageError

    where = os.fspath(path)
    if not Path(path).is_file():
        raise DataError(f"image not found: {where!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise DataError(f"{where!r} is not a readable image (Pillow cannot identify "
                            "it)") from None
        raise DataError(f"{where!r} declares more than {max_pixels} pixels (the limit; a "
                        "decompression bomb?): refused") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{where!r} is not a readable image ({e})") from None
    if w < 1 or h < 1 or w * h > max_pixels:
        raise DataError(f"{where!r} is {w}x{h} pixels: images of 1 to {max_pixels} pixels are "
                        "read (the limit guards against decompression bombs)")
    return w, h


def read_rgb(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS):
    """The image at ``path`` decoded as an RGB ``PIL.Image.Image`` (its EXIF orientation
    applied), its size checked first (:func:`image_size`); a truncated or corrupt file is a
    :class:`DataError` naming it."""
    from PIL import Image, ImageOps

    image_size(path, max_pixels=max_pixels)
    where = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                # a phone photo's orientation tag applied; grayscale, RGBA, CMYK, 16-bit -> RGB
                return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise DataError(f"{where!r} is not a readable image ({e})") from None


def to_uint8(img: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Image values in ``[lo, hi]`` (generator images: [-1, 1]) -> uint8, rounding half up as
    the official PanoHead / EG3D scripts save images (``(x * 127.5 + 128).clamp(0, 255)``
    truncated to uint8)."""
    x = (np.asarray(img, np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def write_image(path: Path, data: np.ndarray, **kwargs) -> Path:
    """``imageio.v3.imwrite`` through a temporary file and a rename: a failed write (disk
    full, ...) keeps an earlier file of that name and removes the temporary one."""
    import imageio.v3 as iio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # ffmpeg picks the format by suffix
    try:
        iio.imwrite(tmp, data, extension=path.suffix, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path



__all__ = ["MAX_PIXELS", "image_size", "read_rgb", "to_uint8", "write_image"]
