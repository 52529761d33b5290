"""What an evaluation reads: its validated config, the generators, the identities, the Stable
Diffusion stack and the metric networks (converted weights, or demo stand-ins), with every
missing piece listed, with its convert command, before anything is computed."""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxhead.camera import make_camera
from jaxhead.errors import DataError, MissingWeightsError, UsageError
from jaxhead.evaluation.cache import array_digest, content_key, directory_digest
from jaxhead.generators import Generator3D, load_generator
from jaxhead.models.panohead import RELEASED_CONVERT
from jaxhead.utils.compile import jit
from jaxhead.utils.npz_io import read_npz
from jaxhead.utils.params_io import is_converted

STYLES = ("pixar", "statue", "joker", "sketch", "werewolf", "zombie")
METRICS = ("fid", "kid", "clip", "clip_score", "id", "depth", "diversity")
EDIT_METRICS = ("fid", "kid", "clip")  # need set #1 (the SD edits)
# metric -> the networks it needs (config.models fields)
NETWORKS = {"fid": ("inception",), "kid": ("inception",), "clip": ("clip",),
            "clip_score": ("clip",), "id": ("arcface",), "depth": (),
            "diversity": ("lpips", "arcface")}
CONVERT = {
    "inception": "python -m convert_weights.inception pt_inception-2015-12-05-6726825d.pth {p}",
    "clip": "python -m convert_weights.clip clip-vit-base-patch32 {p}",
    "arcface": "python -m convert_weights.arcface w600k_r50.onnx {p}",
    "lpips": "python -m convert_weights.lpips --alexnet alexnet-owt-7be5be79.pth "
             "--lin <site-packages>/lpips/weights/v0.1/alex.pth {p}",
}


# --- config ---------------------------------------------------------------------------------


def parse_generators(spec: str) -> dict[str, str]:
    """``"frozen=DIR,pixar=DIR2"`` -> ordered {name: DIR}."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, path = part.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"generators: expected NAME=DIR pairs separated by commas, got "
                             f"{part!r}")
        if name in out:
            raise UsageError(f"generators: name {name!r} given twice")
        out[name] = path
    if not out:
        raise UsageError("generators is empty (NAME=DIR pairs)")
    return out


def parse_identity_seeds(spec: str) -> list[int] | None:
    """``"seeds:0-99"`` / ``"seeds:1,5,7-9"`` -> seeds; anything else (a directory) -> None."""
    if not spec.startswith("seeds:"):
        return None
    from jaxhead.latents import parse_seeds

    try:
        return parse_seeds(spec[len("seeds:"):])
    except Exception as e:  # argparse's ArgumentTypeError or int()
        raise UsageError(f"identities={spec!r}: {e}") from None


def resolve_prompt(config) -> str:
    if config.prompt:
        return config.prompt
    return importlib.import_module(f"configs.{config.style}").get_config().prompt


def validate(config) -> ml_collections.FrozenConfigDict:
    """Every problem of the config in one :class:`UsageError`; returns it frozen."""
    errs = []
    try:
        gens = parse_generators(config.generators)
        for name, spec in gens.items():
            if _is_demo(spec):
                demo_scale(spec, name)
        if config.reference not in gens:
            errs.append(f"reference={config.reference!r} is not one of the generators "
                        f"{list(gens)}")
    except UsageError as e:
        errs.append(str(e))
    try:
        seeds = parse_identity_seeds(config.identities)
        if seeds is not None and len(seeds) < 2:
            errs.append("identities: at least 2 are needed (diversity, FID)")
    except UsageError as e:
        errs.append(str(e))
    if not config.prompt and config.style not in STYLES:
        errs.append(f"style={config.style!r} (choose from {STYLES}, or set prompt)")
    bad = [m for m in config.metrics if m not in METRICS]
    if bad or not config.metrics:
        errs.append(f"metrics={tuple(config.metrics)} (any of {METRICS})")
    v = config.views
    if len(v.yaw) != len(v.pitch) or not v.yaw:
        errs.append(f"views.yaw and views.pitch need one entry per view, got {len(v.yaw)} and "
                    f"{len(v.pitch)}")
    if not v.edit or any(not 0 <= i < len(v.yaw) for i in v.edit):
        errs.append(f"views.edit={tuple(v.edit)}: indices of views (0..{len(v.yaw) - 1})")
    if not all(_finite_number(x) for x in (*v.yaw, *v.pitch)):
        errs.append(f"views.yaw={tuple(v.yaw)} / views.pitch={tuple(v.pitch)}: every angle "
                    "must be a finite number (radians)")
    if v.background not in ("white", "none", "network"):
        errs.append(f"views.background={v.background!r} (white, none, network)")
    if v.noise_mode not in ("const", "none"):
        errs.append(f"views.noise_mode={v.noise_mode!r} (const, none)")
    e = config.edit
    if not 0 < e.strength <= 1:
        errs.append(f"edit.strength={e.strength} (in (0, 1])")
    elif e.steps >= 1 and int(e.steps * e.strength) < 1:
        errs.append(f"edit.strength={e.strength} of edit.steps={e.steps} runs no step")
    if e.steps < 1:
        errs.append(f"edit.steps={e.steps} (>= 1)")
    if not (_finite_number(e.eta) and e.eta >= 0 and _finite_number(e.guidance_scale)):
        errs.append("edit.eta must be >= 0 and edit.guidance_scale finite")
    if e.dtype not in ("float32", "bfloat16"):
        errs.append(f"edit.dtype={e.dtype!r} (float32, bfloat16)")
    for name, val in (("views.batch", v.batch), ("edit.batch", e.batch),
                      ("metric_batch", config.metric_batch), ("kid_subsets", config.kid_subsets),
                      ("kid_subset_size", config.kid_subset_size)):
        if val < 1:
            errs.append(f"{name}={val} (>= 1)")
    if config.sheet_identities < 0:
        errs.append(f"sheet_identities={config.sheet_identities} (>= 0)")
    if errs:
        if len(errs) == 1:  # one problem: one line
            raise UsageError(f"invalid evaluation config: {errs[0]}")
        raise UsageError("invalid evaluation config:\n  - " + "\n  - ".join(errs))
    return ml_collections.FrozenConfigDict(config)


def needs_edits(config) -> bool:
    return any(m in EDIT_METRICS for m in config.metrics)


def networks_needed(config) -> list[str]:
    out: list[str] = []
    for m in config.metrics:
        for n in NETWORKS[m]:
            if n not in out:
                out.append(n)
    return out


def missing_weights(config) -> list[str]:
    """Every missing converted model the config needs, each with the command that makes it."""
    from jaxhead.sampling import missing_sd

    out = []
    for name, path in parse_generators(config.generators).items():
        if not _is_demo(path) and not is_converted(Path(path)):
            out.append(f"generator {name!r}: {path}/{{params.safetensors,config.json}}\n    "
                       + RELEASED_CONVERT.replace("DST", str(path))
                       + " (the frozen PanoHead) or the trainer's <workdir>/generator")
    if needs_edits(config) and config.sd != "demo":
        out += missing_sd(config.sd)
    for net in networks_needed(config):
        p = config.models[net]
        if p != "demo" and not is_converted(Path(p)):
            out.append(f"{net} (for {', '.join(m for m in config.metrics if net in NETWORKS[m])})"
                       f": {p}\n    " + CONVERT[net].format(p=p)
                       + ("\n    (the tokenizer/ folder too: the converter copies it)"
                          if net == "clip" else ""))
    if parse_identity_seeds(config.identities) is None:
        d = Path(config.identities)
        if not d.is_dir() or not any(d.glob("*.npz")):
            out.append(f"identities: {d} holds no inverted identities (<stem>.npz with key 'w')"
                       "; invert photos first, or use identities='seeds:0-99'")
    return out


# --- generators and identities --------------------------------------------------------------


def _is_demo(spec: str) -> bool:
    return spec == "demo" or spec.startswith("demo:")


def _finite_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def demo_scale(spec: str, name: str = "") -> float:
    """The perturbation ``S`` of ``demo:S`` (0 for ``demo``): a finite number >= 0, else
    :class:`UsageError` naming the generator."""
    if ":" not in spec:
        return 0.0
    text = spec.split(":", 1)[1]
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale >= 0):
        raise UsageError(f"generators: {name or 'a generator'}={spec!r}: demo:S takes a finite "
                         f"number S >= 0 (the perturbation), got {text!r}")
    return scale


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedGenerator:
    G: Generator3D
    params: Any
    digest: str  # content hash (cache key part)


def load_generator_spec(spec: str) -> LoadedGenerator:
    """A converted directory, ``demo`` (the tiny demo generator) or ``demo:S`` (it with the
    synthesis and super-resolution weights perturbed by ``S`` times each tensor's RMS,
    a fixed draw)."""
    if not _is_demo(spec):
        G, params = load_generator(spec)
        return LoadedGenerator(G, params, directory_digest(spec))
    from jaxhead.models.panohead.demo import demo_generator

    G, params = demo_generator(0)
    scale = demo_scale(spec)
    if scale:
        rng = np.random.default_rng(1234)

        def perturb(path, x):
            name = jax.tree_util.keystr(path)
            if ("synthesis" in name or "superresolution" in name) and x.ndim > 1:
                x = np.asarray(x)
                rms = float(np.sqrt(np.mean(x ** 2))) or 1.0
                return jnp.asarray(x + scale * rms * rng.standard_normal(x.shape)
                                   .astype(np.float32))
            return x

        params = jax.tree_util.tree_map_with_path(perturb, params)
    # version 2: the demo generator's narrow SR (sr_channels 32 / 16)
    return LoadedGenerator(G, params, content_key({"demo_generator": spec, "version": 2}))


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    w: np.ndarray  # [1, num_ws, w_dim] float32

    @property
    def digest(self) -> str:
        return array_digest(self.w)


def load_identities(config, ref: LoadedGenerator) -> list[Identity]:
    """Inverted ``*.npz`` (sorted by name) or mapped seeds; shapes checked against ``ref``."""
    from jaxhead.latents import seed_to_z

    G = ref.G
    probe = jax.eval_shape(lambda p, z, c: G.mapping(p, z, c), ref.params,
                           jax.ShapeDtypeStruct((1, G.z_dim), jnp.float32),
                           jax.ShapeDtypeStruct((1, 25), jnp.float32))
    want = tuple(probe.shape)
    seeds = parse_identity_seeds(config.identities)
    if seeds is not None:
        mapping = jit(lambda p, z, c: G.mapping(p, z, c, config.truncation_psi,
                                                    config.truncation_cutoff))
        c = make_camera(jnp.full((1,), config.cond_yaw), jnp.full((1,), config.cond_pitch),
                        radius=G.camera_radius)
        return [Identity(f"seed{s:04d}", np.asarray(mapping(ref.params,
                                                            jnp.asarray(seed_to_z(s, G.z_dim)),
                                                            c)))
                for s in seeds]
    out = []
    for p in sorted(Path(config.identities).glob("*.npz")):
        # the shape is checked from the header, before anything is read
        w = read_npz(p, ["w"], shapes={"w": [want, want[1:]]})["w"].astype(np.float32)
        w = w.reshape(want)
        if not np.isfinite(w).all():
            raise DataError(f"{p}: w holds NaN/inf")
        out.append(Identity(p.stem, w))
    if len(out) < 2:
        raise DataError(f"{config.identities}: at least 2 identities are needed, found "
                        f"{len(out)}")
    return out


# --- Stable Diffusion and metric networks ---------------------------------------------------


def load_sd_stack(config) -> tuple[Any, Any, str]:
    """(StableDiffusion, params, content digest) for the edits."""
    from jaxhead import sampling

    if config.sd == "demo":
        from jaxhead.evaluation.demo import demo_sd

        sd, params = demo_sd(seed=0)
        return sd, params, content_key({"demo_sd": 0, "version": 1})
    dtype = jnp.bfloat16 if config.edit.dtype == "bfloat16" else jnp.float32
    sd, params = sampling.load_sd(config.sd, dtype=dtype)
    root = Path(config.sd)
    digest = content_key({p: directory_digest(root / p) for p in
                          ("unet", "vae", "text_encoder", "tokenizer", "scheduler")})
    return sd, params, digest


def load_networks(config) -> dict[str, Any]:
    """The metric networks the config's metrics need: {"inception", "clip" (params,
    tokenizer), "arcface", "lpips"}; "demo" paths give random-weight stand-ins."""
    out: dict[str, Any] = {}
    for net in networks_needed(config):
        path = config.models[net]
        if path == "demo":
            from jaxhead.evaluation import demo

            out[net] = demo.demo_network(net)
        elif net == "inception":
            from jaxhead.metrics.inception import load_inception

            out[net] = load_inception(path)
        elif net == "clip":
            from jaxhead.metrics.clip import load_clip, load_clip_tokenizer

            out[net] = (load_clip(path), load_clip_tokenizer(path))
        elif net == "arcface":
            from jaxhead.models.arcface import load_arcface

            out[net] = load_arcface(path)
        elif net == "lpips":
            from jaxhead.models.lpips import load_lpips

            out[net] = load_lpips(path)
    return out


def check_weights(config) -> None:
    missing = missing_weights(config)
    if missing:
        raise MissingWeightsError("missing inputs of the evaluation:\n  - "
                                  + "\n  - ".join(missing))
