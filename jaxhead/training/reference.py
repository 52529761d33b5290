"""The single-portrait mode's reference (3DArtmator, Zheng et al. 2024): one aligned art
portrait with its camera, and its W+ inversion ``w*`` into the frozen generator (the paper's
"content-analogous subspace localization", Eq. 2-3).

    ref = read_reference(config)        # Reference: image [512, 512, 3] in [-1, 1], camera [25]
    w = reference_w(config, workdir, G, g_params, lpips_params, ref)   # [1, num_ws, w_dim]

``config.reference``: a folder in PanoHead's preprocessed layout (``dataset.json``) holding
exactly one image, or one image file with ``reference_yaw`` (required: the paper's manually
specified view) and ``reference_pitch`` (radians), as :mod:`jaxhead.invert` takes them.

``w*``: ``config.reference_w`` (an ``.npz`` with ``w`` ``[1, num_ws, w_dim]``, as
:mod:`jaxhead.invert` writes) when set; else ``<workdir>/reference_w.npz`` when it was made
from the same image bytes, camera, generator and inversion settings (a resumed run); else the
projector (:mod:`jaxhead.projector`, PanoHead's ``projector_withseg``: LPIPS-VGG16 + 0.1 MSE,
the official schedule) runs ``reference_invert_steps`` steps and the result is cached there
with its settings. A cache made from anything else is refused with the differences named
(never silently reused, never overwritten).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.errors import DataError, UsageError
from jaxhead.inversion_data import LAYOUT, frontal_camera, list_targets, load_image
from jaxhead.latents import check_fit, read_ws
from jaxhead.utils.compile import jit
from jaxhead.utils.npz_io import read_npz

CACHE_FILE = "reference_w.npz"


@dataclasses.dataclass(frozen=True)
class Reference:
    """The art portrait: ``image`` ``[512, 512, 3]`` float32 in [-1, 1] (centre square, LANCZOS
    resize as the official projector), ``camera`` ``[25]`` (its label, before the generator's
    ``t_mapping`` correction), ``name`` and the sha256 of the image file's bytes."""

    image: np.ndarray
    camera: np.ndarray
    name: str
    sha256: str


def read_reference(config) -> Reference:
    """Read ``config.reference`` (see the module doc). A missing path, a folder without a
    label file or with other than one image, an image without a camera, or an unreadable /
    non-square image is one :class:`DataError` (or :class:`UsageError` for the missing yaw)."""
    path = Path(config.reference)
    if not path.exists():
        raise DataError(f"reference {str(path)!r} does not exist (an aligned portrait crop "
                        f"with a camera: one image + reference_yaw, or a folder in {LAYOUT})")
    if path.is_file():
        if config.reference_yaw is None:
            raise UsageError(f"reference {str(path)!r} is one image without a camera: set "
                             "--config.reference_yaw (and reference_pitch; radians) or give a "
                             "folder with dataset.json")
        cam = frontal_camera(float(config.reference_yaw), float(config.reference_pitch))
        targets = list_targets(path, camera=cam)
    else:
        targets = list_targets(path)  # a missing dataset.json or label: DataError
        if len(targets) != 1:
            raise DataError(f"reference folder {str(path)!r} holds {len(targets)} images; the "
                            "single-portrait mode takes exactly one")
    t = targets[0]
    image = load_image(t.path)
    return Reference(image, np.asarray(t.camera, np.float32), t.name,
                     hashlib.sha256(t.path.read_bytes()).hexdigest())


def generator_id(config) -> str:
    """What identifies the frozen generator: its ``params_sha256`` (or path), or the demo's
    seed."""
    g = str(config.models.generator)
    if g == "demo":
        return f"demo:seed{int(config.seed)}"
    try:
        meta = json.loads((Path(g) / "config.json").read_text(encoding="utf-8"))
        return str(meta.get("params_sha256") or Path(g).resolve())
    except (OSError, ValueError):
        return str(Path(g).resolve())


def inversion_settings(config, ref: Reference) -> dict[str, Any]:
    """What a cached inversion depends on (JSON values), compared before reuse."""
    p = config.terms.portrait
    return {"image_sha256": ref.sha256, "camera": [round(float(v), 6) for v in ref.camera],
            "generator": generator_id(config), "steps": int(config.reference_invert_steps),
            "seed": int(config.seed), "render_output": str(p.render_output)}


def read_cache(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(w, settings)`` of a cached inversion; an unreadable file is a :class:`DataError`."""
    w = read_ws(path)
    try:
        settings = json.loads(str(read_npz(path, ["settings"], max_bytes=1 << 20)["settings"]))
    except (DataError, ValueError) as e:
        raise DataError(f"{str(path)!r} has no readable inversion settings ({e}): delete it "
                        "to invert the reference again") from None
    return w, settings


def write_cache(path: Path, w: np.ndarray, settings: dict[str, Any]) -> None:
    """Write ``w`` (readable by :func:`jaxhead.latents.read_ws` and ``render --ws``) and its
    settings atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, w=np.asarray(w, np.float32), settings=np.array(json.dumps(settings)))
    tmp.replace(path)


def corrected_camera(G: Any, params: Any, camera: np.ndarray, *, samples: int = 10_000,
                     seed: int = 123) -> np.ndarray:
    """The camera ``[1, 25]`` the inversion renders with: shifted by PanoHead's
    ``t_mapping(mean z, c)`` (the projector's correction, mean over the official 10,000 z of
    ``RandomState(123)``) when the generator has it, else unchanged."""
    c = jnp.asarray(camera, jnp.float32).reshape(1, 25)
    if not (hasattr(G, "has_t_mapping") and G.has_t_mapping(params)):
        return np.asarray(c)
    z = np.random.RandomState(seed).randn(samples, G.z_dim).mean(0)
    delta = G.camera_offset(params, jnp.asarray(z, jnp.float32)[None], c, 1.0)
    return np.asarray(c.at[:, jnp.array([3, 7, 11])].add(delta))


def invert(G: Any, params: Any, lpips_params: Any, ref: Reference, config, *,
           progress: bool = True) -> np.ndarray:
    """W+ projection of the reference into the frozen generator (``reference_invert_steps``
    projector steps, seed ``config.seed``) -> ``w`` ``[1, num_ws, w_dim]``."""
    from tqdm import tqdm

    from jaxhead.projector import Projector, ProjectorConfig, Targets

    p = config.terms.portrait
    raw = p.render_output == "image_raw"
    size = G.config.neural_rendering_resolution if raw else G.image_size
    cfg = ProjectorConfig(num_steps=int(config.reference_invert_steps), render_output=str(
        p.render_output), perceptual_size=min(256, size))
    proj = Projector(G, params, lpips_params, cfg)
    stats = proj.w_stats()
    image = jnp.asarray(reference_image(ref, size))[None]
    cam = jnp.asarray(corrected_camera(G, params, ref.camera))
    tgt = Targets(image, jit(proj.features)(lpips_params, image), cam)
    state = proj.init(stats, 1)
    key = jax.random.key(int(config.seed))
    with tqdm(total=cfg.num_steps, desc="invert the reference", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        for i in range(cfg.num_steps):
            state, terms = proj.step(state, tgt, stats, jax.random.fold_in(key, i))
            bar.set_postfix({k: f"{float(jnp.mean(v)):.4f}" for k, v in terms.items()})
            bar.update()
    w = np.asarray(state.w_opt, np.float32)
    if not np.all(np.isfinite(w)):
        raise DataError("the reference's inversion is not finite (check the generator and "
                        "LPIPS weights); nothing was written")
    return w


def reference_image(ref: Reference, size: int) -> np.ndarray:
    """The reference at ``size`` px (area-averaged down from 512; ``size`` divides 512)."""
    from jaxhead.models.lpips_vgg import area_downsample

    return np.asarray(area_downsample(jnp.asarray(ref.image)[None], size)[0])


def reference_w(config, workdir: str | Path, G: Any, params: Any, lpips_params: Any,
                ref: Reference, *, write: bool = True, invert_fn: Any = None) -> np.ndarray:
    """``w*`` ``[1, num_ws, w_dim]`` of the reference (module doc: ``config.reference_w``, the
    workdir's cache, or a new inversion cached there with ``write``). A ``w`` that does not fit
    the generator, or a cache of other settings, is a :class:`DataError`. ``invert_fn``
    replaces :func:`invert` (tests)."""
    if config.reference_w:
        w = read_ws(config.reference_w)
        check_fit(w, G.num_ws, G.w_dim, where=str(config.reference_w))
        return w
    path = Path(workdir) / CACHE_FILE
    want = inversion_settings(config, ref)
    if path.is_file():
        w, got = read_cache(path)
        if got != want:
            keys = sorted(set(got) | set(want))
            diff = ", ".join(f"{k}: {got.get(k)!r} -> {want.get(k)!r}" for k in keys
                             if got.get(k) != want.get(k))
            raise DataError(f"{str(path)!r} is the inversion of another reference or setting "
                            f"({diff}); delete it to invert again, or use another workdir")
        check_fit(w, G.num_ws, G.w_dim, where=str(path))
        print(f"jaxhead.train: reusing the reference's inversion {path}", file=sys.stderr)
        return w
    w = (invert_fn or invert)(G, params, lpips_params, ref, config)
    check_fit(w, G.num_ws, G.w_dim, where="the reference's inversion")
    if write:
        write_cache(path, w, want)
    return w


__all__ = ["CACHE_FILE", "Reference", "corrected_camera", "invert", "inversion_settings",
           "read_reference", "reference_image", "reference_w"]
