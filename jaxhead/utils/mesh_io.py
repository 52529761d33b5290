"""Triangle meshes to and from ``.ply`` (binary little-endian) and ``.obj`` (text).

PLY: ``vertex`` with float ``x y z`` (+ uchar ``red green blue``), ``face`` with
``list uchar int vertex_indices``. OBJ: ``v x y z`` (+ ``r g b`` in [0, 1], the common
vertex-colour extension), ``f a b c`` (1-based). Writes go through a temporary file and a
rename, so a failed write keeps an earlier file of that name.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from jaxhead.errors import DataError

_FACE = np.dtype([("n", "u1"), ("i", "<i4", (3,))])  # packed: 13 bytes per face


def _atomic_write(path: Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclasses.dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices [V, 3]`` float32, ``faces [F, 3]`` int32 (counter-clockwise
    seen from outside), optional ``colors [V, 3]`` uint8."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None


def _check(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    v = np.asarray(mesh.vertices, np.float32).reshape(-1, 3)
    f = np.asarray(mesh.faces, np.int64).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError("face indices outside the vertex array")
    c = None if mesh.colors is None else np.asarray(mesh.colors, np.uint8).reshape(-1, 3)
    if c is not None and len(c) != len(v):
        raise ValueError(f"{len(c)} colours for {len(v)} vertices")
    return v, f.astype(np.int32), c


def ply_bytes(mesh: Mesh) -> bytes:
    """The mesh as a binary little-endian PLY file."""
    v, f, c = _check(mesh)
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if c is not None:
        props += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    head = ["ply", "format binary_little_endian 1.0", "comment jaxhead mesh",
            f"element vertex {len(v)}"]
    head += [f"property {'float' if t == '<f4' else 'uchar'} {n}" for n, t in props]
    head += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    verts = np.empty(len(v), np.dtype(props))
    verts["x"], verts["y"], verts["z"] = v[:, 0], v[:, 1], v[:, 2]
    if c is not None:
        verts["red"], verts["green"], verts["blue"] = c[:, 0], c[:, 1], c[:, 2]
    faces = np.empty(len(f), _FACE)
    faces["n"], faces["i"] = 3, f
    return ("\n".join(head) + "\n").encode("ascii") + verts.tobytes() + faces.tobytes()


def obj_bytes(mesh: Mesh) -> bytes:
    """The mesh as a Wavefront OBJ file (``%.9g``: float32 values round-trip exactly)."""
    v, f, c = _check(mesh)
    if c is None:
        vl = _rows("v %.9g %.9g %.9g", v)
    else:
        vl = _rows("v %.9g %.9g %.9g %.6g %.6g %.6g",
                   np.concatenate([v.astype(np.float64), c / 255.0], axis=1))
    fl = _rows("f %d %d %d", f.astype(np.int64) + 1)
    return ("# jaxhead mesh\n" + vl + fl).encode("ascii")


def _rows(fmt: str, a: np.ndarray) -> str:
    if not len(a):
        return ""
    return "\n".join(fmt % tuple(r) for r in a.tolist()) + "\n"


def write_ply(path: str | os.PathLike, mesh: Mesh) -> Path:
    return _atomic_write(Path(path), ply_bytes(mesh))


def write_obj(path: str | os.PathLike, mesh: Mesh) -> Path:
    return _atomic_write(Path(path), obj_bytes(mesh))


def read_ply(path: str | os.PathLike) -> Mesh:
    """Read a PLY file written by :func:`write_ply` (binary little-endian, triangles)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise DataError(f"{os.fspath(path)!r} is not a PLY file")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise DataError(f"{os.fspath(path)!r}: only binary little-endian PLY is read")
    nv = nf = 0
    props: list[tuple[str, str]] = []
    for ln in lines:
        p = ln.split()
        if p[:2] == ["element", "vertex"]:
            nv = int(p[2])
        elif p[:2] == ["element", "face"]:
            nf = int(p[2])
        elif p[0] == "property" and p[1] != "list":
            props.append((p[2], {"float": "<f4", "uchar": "u1"}[p[1]]))
    vdt = np.dtype(props)
    off = end + len(b"end_header\n")
    verts = np.frombuffer(data, vdt, nv, off)
    faces = np.frombuffer(data, _FACE, nf, off + nv * vdt.itemsize)
    if np.any(faces["n"] != 3):
        raise DataError(f"{os.fspath(path)!r}: only triangles are read")
    v = np.stack([verts["x"], verts["y"], verts["z"]], -1)
    c = None
    if "red" in vdt.names:
        c = np.stack([verts["red"], verts["green"], verts["blue"]], -1)
    return Mesh(v.astype(np.float32), faces["i"].astype(np.int32), c)


def read_obj(path: str | os.PathLike) -> Mesh:
    """Read ``v`` / ``f`` lines of an OBJ file (triangles; colours when every ``v`` has
    them)."""
    vs, fs = [], []
    for ln in Path(path).read_text().splitlines():
        p = ln.split()
        if p and p[0] == "v":
            vs.append([float(x) for x in p[1:]])
        elif p and p[0] == "f":
            fs.append([int(x.split("/")[0]) - 1 for x in p[1:]])
    va = np.array(vs, np.float64).reshape(len(vs), -1)
    c = np.rint(va[:, 3:6] * 255).astype(np.uint8) if va.shape[1] >= 6 else None
    return Mesh(va[:, :3].astype(np.float32), np.array(fs, np.int32).reshape(-1, 3), c)
