"""Shapes of a 3D generator: density on a voxel grid, marching cubes, vertex colours.

The extraction follows PanoHead's ``gen_samples.py --shapes``: the density is queried on an
``N^3`` lattice spanning the generator's box (a cube of side ``box_size`` centred at the
origin, voxel ``box_size / (N - 1)``, x the slowest index), the grid is flipped on axis 0,
borders of ``int(30 * N / 256)`` voxels are set to -1000, and marching cubes (scikit-image)
runs on the ``(2, 1, 0)`` transpose at level 10 of the raw density. PanoHead writes the vertices
in voxel units of that flipped, transposed grid (``frame="panohead"``); by default they are
mapped back to world coordinates (``frame="world"``: the generator's units and axes, y up), a
rotation, so faces keep their outward winding.

One deliberate difference: PanoHead computes the lattice with float division
(``(i / N) % N``), which offsets its y and x sample positions by a fraction of a voxel (and by
float32 rounding of ``i`` at 512^3); here every sample is exactly on the lattice.

The grid is evaluated in chunks of ``chunk`` points by one compiled function (the points of a
chunk are made from its start index inside it, so nothing of size ``N^3 x 3`` exists), which
bounds device memory by the chunk; the host holds the ``N^3`` float32 grid (64 MiB at 256, 512
MiB at 512).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead.errors import DataError
from jaxhead.utils.compile import jit
from jaxhead.utils.mesh_io import Mesh

PANOHEAD_LEVEL = 10.0  # iso level of the raw density in gen_samples.py --shapes
TRIM_VOXELS_AT_256 = 30  # border trimmed, in voxels of a 256 grid (scaled with N)
TRIM_VALUE = -1000.0
DEFAULT_CHUNK = 1 << 18  # points per compiled call (~0.3 GiB of temporaries for PanoHead)

# A field: ``(args, points [M, 3]) -> density [M]``, traced with ``args`` as a pytree.
Field = Callable[[Any, jax.Array], jax.Array]


def voxel_size(resolution: int, box_size: float) -> float:
    """Distance between lattice points: ``box_size / (N - 1)`` (PanoHead's ``create_samples``)."""
    return box_size / (resolution - 1)


def trim_voxels(resolution: int) -> int:
    """Border trimmed on each face of the grid: ``int(30 * N / 256)`` voxels."""
    return int(TRIM_VOXELS_AT_256 * resolution / 256)


def lattice_points(index: jax.Array, resolution: int, box_size: float) -> jax.Array:
    """Flat lattice indices ``[M]`` (x slowest, z fastest) -> world points ``[M, 3]``."""
    n = resolution
    ijk = jnp.stack([index // (n * n), (index // n) % n, index % n], axis=-1)
    return ijk.astype(jnp.float32) * np.float32(voxel_size(n, box_size)) \
        - np.float32(box_size / 2)


@functools.partial(jax.jit, static_argnames=("field", "resolution", "box_size", "chunk"))
def _density_chunk(field: Field, args: Any, start: jax.Array, *, resolution: int,
                   box_size: float, chunk: int) -> jax.Array:
    index = jnp.minimum(start + jnp.arange(chunk, dtype=jnp.int32), resolution ** 3 - 1)
    return field(args, lattice_points(index, resolution, box_size))


def density_grid(field: Field, args: Any, *, resolution: int, box_size: float,
                 chunk: int = DEFAULT_CHUNK, progress: bool = True,
                 desc: str = "density") -> np.ndarray:
    """The field on the ``N^3`` lattice over the box -> float32 ``[N, N, N]`` indexed
    ``[x, y, z]`` (world axes). ``field`` must be hashable (the same object across calls
    reuses the compiled chunk); ``args`` is its pytree of arrays. One compiled call per chunk
    of ``chunk`` points (the last one padded)."""
    n = int(resolution)
    if n < 2:
        raise ValueError(f"resolution must be >= 2, got {n}")
    total = n ** 3
    if total >= 2 ** 31:
        raise ValueError(f"resolution {n} is too large (N^3 must fit int32)")
    chunk = int(min(chunk, total))
    out = np.empty(total, np.float32)
    run = functools.partial(_density_chunk, field, args, resolution=n,
                            box_size=float(box_size), chunk=chunk)
    with tqdm(total=total, unit="pt", unit_scale=True, desc=desc, disable=not progress,
              dynamic_ncols=True, leave=False) as bar:
        pending = None  # dispatch the next chunk before reading the last one back
        for start in range(0, total, chunk):
            cur = (start, run(jnp.int32(start)))
            if pending is not None:
                _store(out, pending, bar)
            pending = cur
        if pending is not None:
            _store(out, pending, bar)
    return out.reshape(n, n, n)


def _store(out: np.ndarray, pending: tuple[int, jax.Array], bar: tqdm) -> None:
    start, vals = pending
    m = min(vals.shape[0], out.shape[0] - start)
    out[start:start + m] = np.asarray(vals)[:m]
    bar.update(m)


def panohead_volume(grid: np.ndarray) -> np.ndarray:
    """PanoHead's marching-cubes input from a ``[x, y, z]`` grid: flipped on axis 0, borders
    of :func:`trim_voxels` set to -1000, transposed ``(2, 1, 0)`` -> contiguous float32."""
    # one copy (the caller's grid is left as it was); trimming every face commutes with the
    # flip and the transposition
    vol = np.ascontiguousarray(grid[::-1].transpose(2, 1, 0), np.float32)
    p = trim_voxels(grid.shape[0])
    if p > 0:
        vol[:p] = vol[-p:] = TRIM_VALUE
        vol[:, :p] = vol[:, -p:] = TRIM_VALUE
        vol[:, :, :p] = vol[:, :, -p:] = TRIM_VALUE
    return vol


def panohead_to_world(vertices: np.ndarray, resolution: int, box_size: float) -> np.ndarray:
    """Vertices in PanoHead's frame (voxel units of the flipped, transposed grid: ``(z, y,
    N - 1 - x)`` indices) -> world points ``(x, y, z)``."""
    s = voxel_size(resolution, box_size)
    h = box_size / 2
    v = np.asarray(vertices, np.float64)
    return np.stack([h - v[:, 2] * s, v[:, 1] * s - h, v[:, 0] * s - h], -1).astype(np.float32)


def marching_cubes(grid: np.ndarray, *, box_size: float, level: float = PANOHEAD_LEVEL,
                   frame: str = "world") -> Mesh:
    """Iso-surface of a ``[x, y, z]`` density grid (from :func:`density_grid`) at ``level``,
    extracted as PanoHead does (:func:`panohead_volume`; scikit-image's Lewiner marching
    cubes). ``frame``: ``"world"`` (generator units) or ``"panohead"`` (its voxel units).
    Raises :class:`DataError` when no surface crosses ``level`` (naming the density range)."""
    if frame not in ("world", "panohead"):
        raise ValueError(f"frame must be 'world' or 'panohead', got {frame!r}")
    measure = _skimage_measure()
    vol = panohead_volume(grid)
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < level < hi:
        t, n = trim_voxels(grid.shape[0]), grid.shape[0]
        inner = grid[t:n - t, t:n - t, t:n - t]
        raise DataError(f"no surface at density level {level:g}: inside the trimmed box the "
                        f"density lies in [{float(inner.min()):.4g}, {float(inner.max()):.4g}]"
                        " (choose a level in that range)")
    # "ascent": faces wound counter-clockwise seen from outside (where the density is below
    # the level); PanoHead keeps scikit-image's default "descent", whose faces face inwards
    verts, faces, _, _ = measure.marching_cubes(vol, level=level, gradient_direction="ascent")
    if frame == "world":
        verts = panohead_to_world(verts, grid.shape[0], box_size)
    return Mesh(np.asarray(verts, np.float32), np.asarray(faces, np.int32))


def _skimage_measure():
    try:
        from skimage import measure
    except ImportError:
        raise DataError("meshes need scikit-image (marching cubes): pip install -e '.[mesh]' "
                        "or pip install 'scikit-image>=0.22'") from None
    return measure


# --- a generator as a field ----------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def generator_field(G) -> Field:
    """``G.density`` as a :data:`Field` over ``args = {"params", "ws" [1, ...], "rep"}``
    (one object per generator, so its compiled chunk is reused across identities)."""

    def field(args, points):
        return G.density(args["params"], args["ws"], points[None], rep=args["rep"])[0]

    return field


@functools.lru_cache(maxsize=16)
def representation_fn(G, noise_mode: str):
    """jitted ``(params, ws [B, num_ws, w_dim]) -> G's representation`` (one per generator
    configuration and noise mode; shared by meshes, turntables and the evaluation renders).
    Eager, the backbone would run op by op, compiling each primitive on its first use."""
    return jit(lambda params, ws: G.representation(params, ws, noise_mode=noise_mode))


@functools.lru_cache(maxsize=16)
def _color_fn(G):
    @jit
    def colors(params, ws, rep, points):
        return G.point_colors(params, ws, points[None], rep=rep)[0]

    return colors


def vertex_colors(G, params, ws: jax.Array, rep: jax.Array, vertices: np.ndarray, *,
                  chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """The generator's colour at world ``vertices [V, 3]`` -> uint8 ``[V, 3]`` (its [-1, 1]
    colour mapped as images are: ``rint(127.5 x + 128)``, clipped)."""
    fn = _color_fn(G)
    v = np.asarray(vertices, np.float32)
    chunk = max(1, min(chunk, len(v)))
    out = np.empty((len(v), 3), np.float32)
    for s in range(0, len(v), chunk):
        part = v[s:s + chunk]
        pad = np.pad(part, ((0, chunk - len(part)), (0, 0)), mode="edge")  # one compilation
        out[s:s + len(part)] = np.asarray(fn(params, ws, rep, jnp.asarray(pad)))[:len(part)]
    return np.clip(np.rint(out * 127.5 + 128), 0, 255).astype(np.uint8)


def generator_mesh(G, params, ws: jax.Array, *, resolution: int = 256,
                   level: float = PANOHEAD_LEVEL, colors: bool = False,
                   chunk: int = DEFAULT_CHUNK, frame: str = "world", noise_mode: str = "const",
                   progress: bool = True) -> Mesh:
    """The mesh of one identity ``ws [1, num_ws, w_dim]``: its density on the ``N^3`` grid
    over ``G.box_size`` (:func:`density_grid`), marching cubes at ``level``
    (:func:`marching_cubes`), and with ``colors`` the generator's colour at the vertices."""
    if ws.shape[0] != 1:
        raise ValueError(f"one identity at a time: ws [1, num_ws, w_dim], got {ws.shape}")
    rep = representation_fn(G, noise_mode)(params, ws)
    grid = density_grid(generator_field(G), {"params": params, "ws": ws, "rep": rep},
                        resolution=resolution, box_size=G.box_size, chunk=chunk,
                        progress=progress)
    mesh = marching_cubes(grid, box_size=G.box_size, level=level, frame=frame)
    del grid
    if colors:
        world = mesh.vertices if frame == "world" else panohead_to_world(
            mesh.vertices, resolution, G.box_size)
        mesh = dataclasses.replace(mesh, colors=vertex_colors(G, params, ws, rep, world,
                                                              chunk=chunk))
    return mesh
