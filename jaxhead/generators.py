"""The 3D generator interface the trainer, previews, export and rendering use.

A generator is an object with a static configuration and pure methods over an explicit
``params`` pytree. PanoHead (:class:`jaxhead.models.panohead.PanoHead`) implements it; another
tri-plane generator (EG3D has the same structure) plugs in by implementing the same methods
and registering a loader for the ``format`` string its ``config.json`` carries.

Shapes: latents ``z [N, z_dim]``; cameras ``c [N, 25]`` (cam2world 4x4 row-major + normalized
intrinsics 3x3, :mod:`jaxhead.camera`); ``ws [N, num_ws, w_dim]``; the 3D representation is
an array ``[N, ...]`` computed once per identity and shared by all its views; renders are dicts
of NHWC arrays (see :meth:`Generator3D.render`).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array
Params = dict[str, Any]


@runtime_checkable
class Generator3D(Protocol):
    """What jaxhead needs from a 3D-aware generator."""

    z_dim: int  # latent size
    image_size: int  # side of the final (super-resolved) image, px
    camera_radius: float  # distance of the average camera from the pivot (world units)
    num_ws: int  # rows of ws
    w_dim: int  # width of each w
    box_size: float  # side of the cube centred at the origin that holds the 3D content

    def mapping(self, params: Params, z: Array, c: Array, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> Array:
        """z ``[N, z_dim]``, conditioning camera c ``[N, 25]`` -> ws ``[N, num_ws, w_dim]``."""
        ...

    def representation(self, params: Params, ws: Array, *, noise_mode: str = "const",
                       rng: Array | None = None) -> Array:
        """ws -> the 3D representation ``[N, ...]`` (PanoHead: tri-grid planes NHWC)."""
        ...

    def render(self, params: Params, ws: Array, c: Array, rep: Array, *,
               noise_mode: str = "const", rng: Array | None = None,
               deterministic: bool = False, background: str = "none",
               superresolution: bool = True) -> dict[str, Array]:
        """Render ``rep`` (one row per camera) from cameras ``c [N, 25]``: a dict with ``image``
        ``[N, S, S, 3]`` in about [-1, 1] (only with ``superresolution``), ``image_raw``
        ``[N, r, r, 3]``, ``image_depth`` ``[N, r, r, 1]`` (world units) and ``image_acc``
        ``[N, r, r, 1]`` (accumulated opacity in [0, 1]) at the neural resolution ``r``."""
        ...

    def feature_planes(self, rep: Array) -> Array:
        """The representation as feature planes ``[N, H, W, P, C]`` (P planes of C channels),
        the layout the relative-distance (LDIS) term compares."""
        ...

    def density(self, params: Params, ws: Array, points: Array, *, rep: Array | None = None,
                noise_mode: str = "const") -> Array:
        """Density at world points ``[N, M, 3]`` -> ``[N, M]`` (the generator's raw density,
        the quantity its shapes are extracted from); ``rep`` reuses :meth:`representation`."""
        ...

    def point_colors(self, params: Params, ws: Array, points: Array, *,
                     rep: Array | None = None, noise_mode: str = "const") -> Array:
        """Colour at world points ``[N, M, 3]`` -> ``[N, M, 3]`` in about [-1, 1]."""
        ...

    def save(self, directory: str | os.PathLike, params: Params,
             extra: dict[str, Any] | None = None) -> None:
        """Write ``params`` + configuration so that :func:`load_generator` reads them back."""
        ...


Loader = Callable[..., tuple[Generator3D, Params]]

# config.json "format" -> loader(directory, verify=...) -> (generator, params), or the loader's
# "module:function" path, imported on first use (so no generator module imports this one and
# no import circle forms). The format a directory with no config.json is read as comes first.
LOADERS: dict[str, Loader | str] = {
    "jaxhead.panohead/1": "jaxhead.models.panohead:load_panohead",
}
DEFAULT_FORMAT = "jaxhead.panohead/1"


def register_generator(fmt: str, loader: Loader | str) -> None:
    """Make :func:`load_generator` read directories whose ``config.json`` has ``format``;
    ``loader(directory, verify=bool)`` (``verify``: check the stored content hash), or its
    ``"module:function"`` path."""
    LOADERS[fmt] = loader


def _loader(fmt: str) -> Loader:
    entry = LOADERS[fmt]
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = LOADERS[fmt] = getattr(importlib.import_module(module), name)
    return entry


def load_generator(directory: str | os.PathLike, *,
                   verify: bool = True) -> tuple[Generator3D, Params]:
    """Load a saved generator of any registered format (PanoHead by default); ``verify``
    checks its content hash and finiteness (:func:`jaxhead.utils.params_io.load_params`)."""
    from jaxhead.errors import DataError

    cfg_path = Path(directory) / "config.json"
    if not cfg_path.is_file():  # the default loader names what is missing and how to make it
        return _loader(DEFAULT_FORMAT)(directory, verify=verify)
    try:
        fmt = json.loads(cfg_path.read_text()).get("format")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(f"{os.fspath(cfg_path)!r} is not a JSON object: {e}") from None
    if fmt not in LOADERS:
        raise DataError(f"{os.fspath(cfg_path)!r}: unknown generator format {fmt!r} "
                        f"(known: {sorted(LOADERS)})")
    return _loader(fmt)(directory, verify=verify)
