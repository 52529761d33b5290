"""Reading ``.npz`` files from strangers: every array's header is checked before its data is read.

``np.load`` allocates what an array's header declares before reading it, so a 300-byte file whose
header claims ``[1, 1e5, 1e5]`` float32 asks for 37 GiB. :func:`read_npz` reads the headers
first, refuses pickled (object) arrays, a header whose byte count is not what the member holds,
an array above a size limit or of an unexpected shape, and only then reads the data.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jaxhead.errors import DataError

# the largest array read unless a caller allows more (the biggest jaxhead writes, a style bank's
# latents, are a few MB)
MAX_ARRAY_BYTES = 1 << 30


@dataclass(frozen=True)
class ArrayHeader:
    """What an ``.npy`` member of an ``.npz`` declares: shape, dtype, memory order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def _header(f, where: str) -> ArrayHeader:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as e:
        raise DataError(f"{where}: not a readable .npy header ({e})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (a pickle): refused")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise DataError(f"{where}: invalid shape {shape}")
    return ArrayHeader(tuple(shape), dtype, bool(fortran))


def _fits(shape: tuple[int, ...], want: Sequence[int | None]) -> bool:
    return len(shape) == len(want) and all(w is None or w == n for n, w in zip(shape, want,
                                                                              strict=True))


def _open(path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise DataError(f"{os.fspath(path)!r} is not a readable .npz file ({e})") from None


def npz_headers(path: str | os.PathLike) -> dict[str, ArrayHeader]:
    """``{name: header}`` of every array in an ``.npz`` file, reading the headers only."""
    where = os.fspath(path)
    out = {}
    with _open(path) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            try:
                with zf.open(info) as f:
                    out[key] = _header(f, f"{where!r}, array {key!r}")
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"{where!r}, array {key!r}: damaged ({e})") from None
    return out


def read_npz(path: str | os.PathLike, keys: Sequence[str], *,
             shapes: Mapping[str, Sequence[Sequence[int | None]]] | None = None,
             max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of an ``.npz`` file, each checked from its header before it is read.

    ``shapes[key]`` lists the accepted shapes of that array (``None`` entries match any size);
    an array whose shape fits none of them, that is larger than ``max_bytes``, whose header
    declares more or fewer bytes than its member holds, that holds objects, or that is missing,
    and a file that is not a zip: :class:`DataError` naming the file and the array. Nothing is
    allocated beyond what the header declares and the checks allow.
    """
    where = os.fspath(path)
    out: dict[str, np.ndarray] = {}
    with _open(path) as zf:
        names = {n.removesuffix(".npy"): n for n in zf.namelist()}
        for key in keys:
            if key not in names:
                raise DataError(f"{where!r} has no array {key!r} (it has {sorted(names)})")
            what = f"{where!r}, array {key!r}"
            info = zf.getinfo(names[key])
            try:
                with zf.open(info) as f:
                    h = _header(f, what)
                    want = (shapes or {}).get(key)
                    if want is not None and not any(_fits(h.shape, w) for w in want):
                        shown = " or ".join(str(list(w)).replace("None", "*") for w in want)
                        raise DataError(f"{what} is {list(h.shape)}, expected {shown}")
                    if h.nbytes > max_bytes:
                        raise DataError(f"{what} declares {list(h.shape)} {h.dtype} "
                                        f"({h.nbytes} bytes), over the {max_bytes}-byte limit")
                    if h.nbytes != info.file_size - f.tell():
                        raise DataError(f"{what} declares {list(h.shape)} {h.dtype} ("
                                        f"{h.nbytes} bytes) but holds "
                                        f"{info.file_size - f.tell()}: damaged or forged")
                    raw = f.read(h.nbytes)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"{what}: damaged ({e})") from None
            if len(raw) != h.nbytes:
                raise DataError(f"{what}: truncated ({len(raw)} of {h.nbytes} bytes)")
            a = np.frombuffer(raw, h.dtype)
            out[key] = (a.reshape(h.shape[::-1]).T if h.fortran_order
                        else a.reshape(h.shape)).copy()
    return out


__all__ = ["MAX_ARRAY_BYTES", "ArrayHeader", "npz_headers", "read_npz"]
