"""The three image sets of the paper's protocol and the metrics between them.

Set #3: the reference (frozen) generator's renders of each identity from every view; set #2:
each generator's renders of the same ``w`` and cameras; set #1: SD edits (SDEdit) of the
reference renders of the ``views.edit`` views. Renders and edits go through the content-hash
:class:`~jaxhead.evaluation.cache.Cache`.

Shapes: renders ``image`` [N, V, S, S, 3] uint8, ``depth`` / ``acc`` [N, V, r, r, 1] float32;
edits [N, E, S, S, 3] uint8 (N identities, V views, E edited views).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead import sampling
from jaxhead.camera import make_camera
from jaxhead.evaluation.assets import Identity, LoadedGenerator
from jaxhead.evaluation.cache import Cache, array_digest
from jaxhead.mesh import representation_fn
from jaxhead.metrics.clip import image_embeds
from jaxhead.metrics.identity import face_embeddings
from jaxhead.turntable import make_renderer
from jaxhead.utils.compile import jit
from jaxhead.utils.image_io import to_uint8

RENDER_VERSION = 1  # bump when the render path changes what it produces
EDIT_VERSION = 1


def view_cameras(config, radius: float) -> jax.Array:
    """[V, 25] cameras of the configured views."""
    return make_camera(jnp.asarray(config.views.yaw, jnp.float32),
                       jnp.asarray(config.views.pitch, jnp.float32), radius=radius)


RENDER_ARRAYS = ("image", "depth", "acc")


def render_inputs(gen: LoadedGenerator, ident: Identity, config) -> dict[str, Any]:
    """What one identity's renders are made from (their cache key's description)."""
    v = config.views
    return {"kind": "render", "v": RENDER_VERSION, "generator": gen.digest,
            "w": ident.digest, "yaw": list(v.yaw), "pitch": list(v.pitch),
            "background": v.background, "noise_mode": v.noise_mode}


@functools.cache
def _render_fns(G: Any, noise_mode: str, background: str) -> tuple[Any, Any]:
    """Jitted (representation, render) of a generator configuration, shared by every
    generator of that configuration (their params differ only in value: one compile)."""
    return (representation_fn(G, noise_mode),
            make_renderer(G, noise_mode=noise_mode, background=background))


def render_set(gen: LoadedGenerator, identities: Sequence[Identity], config, cache: Cache,
               bar: tqdm | None = None) -> dict[str, np.ndarray]:
    """One generator's renders of every identity and view (cached per identity)."""
    G, v = gen.G, config.views
    cams = view_cameras(config, G.camera_radius)
    nv, b = cams.shape[0], min(v.batch, cams.shape[0])
    out: dict[str, list[np.ndarray]] = {k: [] for k in RENDER_ARRAYS}
    for ident in identities:
        key = render_inputs(gen, ident, config)
        got = cache.get("renders", key, RENDER_ARRAYS)
        if got is None:
            rep_fn, render = _render_fns(G, v.noise_mode, v.background)
            ws = jnp.asarray(ident.w)
            planes = rep_fn(gen.params, ws)
            parts = []
            for s in range(0, nv, b):
                c = cams[s:s + b]
                k = c.shape[0]
                c = jnp.concatenate([c, jnp.repeat(c[-1:], b - k, 0)])  # one compiled shape
                img, dep, acc = render(gen.params, jnp.repeat(planes, b, 0),
                                       jnp.repeat(ws, b, 0), c)
                parts.append((to_uint8(np.asarray(img)[:k]), np.asarray(dep)[:k],
                              np.asarray(acc)[:k]))
            got = {"image": np.concatenate([p[0] for p in parts]),
                   "depth": np.concatenate([p[1] for p in parts]),
                   "acc": np.concatenate([p[2] for p in parts])}
            cache.put("renders", key, got, {"identity": ident.name, "generator": gen.digest,
                                            "views": {"yaw": list(v.yaw),
                                                      "pitch": list(v.pitch)}})
        for k in out:
            out[k].append(got[k])
        if bar is not None:
            bar.update(1)
    return {k: np.stack(a) for k, a in out.items()}


def edit_inputs(sd_digest: str, image: np.ndarray, prompt: str, config) -> dict[str, Any]:
    """What one SD edit is made from (its cache key's description)."""
    e = config.edit
    return {"kind": "edit", "v": EDIT_VERSION, "sd": sd_digest,
            "image": array_digest(image), "prompt": prompt,
            "negative_prompt": config.negative_prompt, "strength": e.strength,
            "steps": e.steps, "guidance": e.guidance_scale, "eta": e.eta,
            "seed": e.seed, "dtype": e.dtype}


def edit_seed_key(seed: int, image_digest: str) -> jax.Array:
    """The edit's noise key: a function of the seed and the image (not of its position in
    the set), so adding identities never changes another one's edit."""
    return jax.random.fold_in(jax.random.key(seed), int(image_digest[:7], 16))


def edit_set(sd: sampling.StableDiffusion, sd_params: Any, sd_digest: str,
             renders: np.ndarray, prompt: str, config, cache: Cache) -> np.ndarray:
    """SDEdit of reference renders [N, E, S, S, 3] uint8 -> edits of the same shape
    (cached per image)."""
    e = config.edit
    n, ne = renders.shape[:2]
    flat = renders.reshape((n * ne,) + renders.shape[2:])
    keys = [edit_inputs(sd_digest, img, prompt, config) for img in flat]
    out: list[np.ndarray | None] = []
    for k in keys:
        got = cache.get("edits", k, ("image",))
        out.append(None if got is None else got["image"])
    todo = [i for i, o in enumerate(out) if o is None]
    if todo:
        size = flat.shape[1]
        if size % sd.size_multiple:
            from jaxhead.errors import DataError

            raise DataError(f"renders of {size} px cannot be edited: the SD stack needs a "
                            f"multiple of {sd.size_multiple}")
        start = sampling.start_index_for_strength(e.steps, e.strength)
        text = sampling.encode_prompts(sd, sd_params, [prompt])
        neg = sampling.encode_prompts(sd, sd_params, [config.negative_prompt])
        lat = size // sd.downscale
        b = min(e.batch, len(todo))
        calls = -(-len(todo) // b)
        with tqdm(total=calls * (e.steps - start), unit="step", dynamic_ncols=True,
                  desc=f"SD edits ({len(todo)} images)") as bar, \
                sampling.progress_hook(lambda _i: bar.update(1)):
            for s in range(0, len(todo), b):
                idx = todo[s:s + b]
                idx_p = idx + [idx[-1]] * (b - len(idx))
                keys_b = jnp.stack([edit_seed_key(e.seed, array_digest(flat[i]))
                                    for i in idx_p])
                noise = sampling.draw_noise(sd, keys_b, (lat, lat), num_steps=e.steps,
                                            start_index=start, eta=e.eta,
                                            posterior_sample=True)
                image = jnp.asarray(flat[idx_p], jnp.float32) / 127.5 - 1.0
                res = sampling.sample(sd, sd_params, noise, text, neg, num_steps=e.steps,
                                      start_index=start, image=image, eta=e.eta,
                                      guidance_scale=e.guidance_scale, progress=True)
                imgs = np.clip(np.rint(np.asarray(res.images) * 255), 0, 255).astype(np.uint8)
                for j, i in enumerate(idx):
                    cache.put("edits", keys[i], {"image": imgs[j]},
                              {"prompt": prompt, "render": array_digest(flat[i])})
                    out[i] = imgs[j]
    return np.stack(out).reshape(renders.shape)


# --- metrics --------------------------------------------------------------------------------


def _batched(fn, arrays: Sequence[np.ndarray], batch: int) -> np.ndarray:
    """``fn(*chunks)`` over the first axis of ``arrays`` in fixed-size batches (the last one
    padded by repeating its final row, so one compiled shape serves all) -> stacked numpy."""
    n = len(arrays[0])
    outs = []
    for s in range(0, n, batch):
        chunks = [a[s:s + batch] for a in arrays]
        k = len(chunks[0])
        chunks = [np.concatenate([c, np.repeat(c[-1:], batch - k, 0)]) for c in chunks]
        outs.append(np.asarray(fn(*chunks))[:k])
    return np.concatenate(outs)


@functools.cache
def _jit(fn):
    return jit(fn)


def _clip_embed(params, images):
    return image_embeds(params, images)


def _face_embed(params, images, cameras):
    return face_embeddings(params, images, cameras=cameras)


def clip_embeddings(clip_params: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """CLIP image embeddings [N, D] of uint8 images [N, H, W, 3]."""
    f = _jit(_clip_embed)
    return _batched(lambda x: f(clip_params, x), [images], batch)


def arcface_embeddings(arcface: Any, images: np.ndarray, cameras: np.ndarray,
                       batch: int) -> np.ndarray:
    """ArcFace embeddings [N, D] of renders [N, S, S, 3] uint8 made from cameras [N, 25]
    (camera-derived face crop)."""
    f = _jit(_face_embed)
    return _batched(lambda x, c: f(arcface, x, c), [images, np.asarray(cameras, np.float32)],
                    batch)


def compute_metrics(config, nets: dict[str, Any], *, renders: dict[str, np.ndarray],
                    reference: dict[str, np.ndarray], edits: np.ndarray | None,
                    cameras: np.ndarray, prompt: str, depth_range: float,
                    text_embedding: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Every configured metric of one generator's renders (set #2) against the edits (#1) and
    the reference renders (#3): ``{metric: {"value", "n_identities", "n_views", ...}}``."""
    import time

    from jaxhead.metrics import fid as fid_lib

    clock = [time.perf_counter()]

    def lap() -> float:  # seconds since the previous lap (recorded per metric)
        now = time.perf_counter()
        dt, clock[0] = now - clock[0], now
        return round(dt, 3)

    n, nv = renders["image"].shape[:2]
    ev = list(config.views.edit)
    bs = config.metric_batch
    out: dict[str, dict[str, Any]] = {}
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    gen_edit_views = flat(renders["image"][:, ev])
    if "fid" in config.metrics or "kid" in config.metrics:
        from jaxhead.metrics.inception import features_in_batches

        f1 = features_in_batches(nets["inception"], flat(edits), batch_size=bs)
        f2 = features_in_batches(nets["inception"], gen_edit_views, batch_size=bs)
        t_inception = lap()
        if "fid" in config.metrics:
            # same number as fid_lib.fid; through the samples when they are fewer than D
            fid_fn = fid_lib.fid_low_rank if min(len(f1), len(f2)) < f1.shape[1] else fid_lib.fid
            out["fid"] = {"value": fid_fn(f1, f2), "n_identities": n, "n_views": len(ev),
                          "images": len(f1), "seconds": t_inception + lap()}
        if "kid" in config.metrics:
            m, s = fid_lib.kid(f1, f2, num_subsets=config.kid_subsets,
                               subset_size=min(config.kid_subset_size, len(f1)), seed=0)
            out["kid"] = {"value": float(m), "std": float(s), "n_identities": n,
                          "n_views": len(ev), "images": len(f1), "seconds": lap()}
    if "clip" in config.metrics or "clip_score" in config.metrics:
        from jaxhead.metrics.clip import HESSEL_W, clip_image_similarity, clip_score

        clip_params = nets["clip"][0]
        e2 = clip_embeddings(clip_params, gen_edit_views, bs)
        t_clip = lap()
        if "clip" in config.metrics:
            e1 = clip_embeddings(clip_params, flat(edits), bs)
            sim = np.asarray(clip_image_similarity(e1, e2))
            out["clip"] = {"value": float(sim.mean()), "n_identities": n, "n_views": len(ev),
                           "seconds": t_clip + lap()}
        if "clip_score" in config.metrics:
            s = np.asarray(clip_score(e2, jnp.asarray(text_embedding), w=HESSEL_W))
            out["clip_score"] = {"value": float(s.mean()), "w": HESSEL_W, "n_identities": n,
                                 "n_views": len(ev), "seconds": lap()}
    cams = np.broadcast_to(cameras, (n,) + cameras.shape).reshape(-1, 25)
    emb_gen = None
    lap()
    if "id" in config.metrics or "diversity" in config.metrics:
        emb_gen = arcface_embeddings(nets["arcface"], flat(renders["image"]), cams, bs)
    t_arc = lap()
    if "id" in config.metrics:
        from jaxhead.metrics.identity import id_similarity

        emb_ref = arcface_embeddings(nets["arcface"], flat(reference["image"]), cams, bs)
        sim = np.asarray(id_similarity(emb_gen, emb_ref))
        out["id"] = {"value": float(sim.mean()), "n_identities": n, "n_views": nv,
                     "per_view": [float(x) for x in sim.reshape(n, nv).mean(0)],
                     "seconds": t_arc + lap()}
    if "depth" in config.metrics:
        from jaxhead.metrics.depth import depth_difference

        dd = np.asarray(depth_difference(flat(renders["depth"]), flat(reference["depth"]),
                                         flat(reference["acc"]), depth_range=depth_range))
        out["depth"] = {"value": float(np.nanmean(dd)), "n_identities": n, "n_views": nv,
                        "depth_range": depth_range,
                        "per_view": [float(x) for x in np.nanmean(dd.reshape(n, nv), 0)],
                        "seconds": lap()}
    if "diversity" in config.metrics:
        from jaxhead.metrics.diversity import pairwise_id_similarity, pairwise_lpips

        front = renders["image"][:, 0].astype(np.float32) / 127.5 - 1.0
        lp = float(pairwise_lpips(nets["lpips"], jnp.asarray(front)))
        pid = float(pairwise_id_similarity(emb_gen.reshape(n, nv, -1)[:, 0]))
        out["diversity"] = {"value": lp, "pairwise_id": pid, "n_identities": n, "n_views": 1,
                            "seconds": lap() + (0.0 if "id" in out else t_arc)}
    return out
