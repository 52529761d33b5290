"""Evaluate generators like the paper (§4): one command, one Table-1-style report.

    python -m jaxhead.evaluate --config configs/eval.py \
        --config.generators=frozen=checkpoints/panohead,pixar=runs/pixar/generator
    python -m jaxhead.evaluate --config configs/eval_demo.py      # demo models, CPU, minutes

Writes into ``config.workdir``: ``metrics.json`` (per generator, per metric, with the number
of identities and views), ``report.md`` (FID↓ KID↓ CLIP↑ CLIP-S↑ ID↑ ΔD↓ Div↑, best in bold),
``metrics.png`` (bar chart), ``sheets/`` (reference | SD edit | generators, front and side)
and ``cache/`` (renders and SD edits keyed by content hashes of their inputs: adding a
generator recomputes nothing else, and an interrupted run resumes). Every config field is
documented in ``configs/eval.py``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead.evaluation import assets, protocol, report
from jaxhead.evaluation.cache import Cache


def _depth_range(G: Any) -> float | None:
    cfg = getattr(G, "config", None)
    if cfg is not None and hasattr(cfg, "ray_end") and hasattr(cfg, "ray_start"):
        return float(cfg.ray_end - cfg.ray_start)
    return None


def _prompt_embedding(nets: dict[str, Any], prompt: str) -> np.ndarray | None:
    if "clip" not in nets:
        return None
    from jaxhead.metrics.clip import text_embeds, tokenize

    params, tok = nets["clip"]
    ids = tokenize(tok, [prompt], max_length=params.config.text.max_position_embeddings)
    return np.asarray(text_embeds(params, jnp.asarray(ids)))[0]


def evaluate(config, *, verbose: bool = True, notes: str = "") -> dict[str, Any]:
    """Run the protocol of ``config`` (see ``configs/eval.py``); returns ``{"results":
    {generator: {metric: {...}}}, "info": {...}, "paths": [...]}``. Missing weights are
    reported (``MissingWeightsError``, every piece with its convert command) before any
    compute. ``notes`` (markdown) is appended to ``report.md`` (``jaxhead.compare``: the
    methods and their runs)."""
    from jaxhead.config_cli import check_workdir
    from jaxhead.render import check_writable

    check_workdir(config.workdir)
    config = assets.validate(config)
    assets.check_weights(config)
    workdir = Path(config.workdir)
    check_writable(workdir)
    prompt = assets.resolve_prompt(config)
    cache = Cache(workdir / "cache")
    nets = assets.load_networks(config)
    gens = {name: assets.load_generator_spec(spec)
            for name, spec in assets.parse_generators(config.generators).items()}
    ref = gens[config.reference]
    identities = assets.load_identities(config, ref)
    n = len(identities)
    log = print if verbose else (lambda *a, **k: None)
    log(f"evaluating {list(gens)} on {n} identities x {len(config.views.yaw)} views; prompt "
        f"{prompt!r}")

    t0 = time.perf_counter()
    renders = {}
    with tqdm(total=len(gens) * n, unit="identity", dynamic_ncols=True,
              disable=not verbose) as bar:
        for name, g in gens.items():
            bar.set_description(f"render {name}")
            renders[name] = protocol.render_set(g, identities, config, cache, bar)
    seconds = {"render": time.perf_counter() - t0}
    t0 = time.perf_counter()
    edit_views = list(config.views.edit)
    edits = None
    if assets.needs_edits(config):
        sd, sd_params, sd_digest = assets.load_sd_stack(config)
        edits = protocol.edit_set(sd, sd_params, sd_digest,
                                  renders[config.reference]["image"][:, edit_views], prompt,
                                  config, cache)
        del sd_params
    seconds["edit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cams = np.asarray(protocol.view_cameras(config, ref.G.camera_radius))
    text_emb = _prompt_embedding(nets, prompt)
    results = {}
    for name in tqdm(gens, desc="metrics", unit="generator", disable=not verbose):
        results[name] = protocol.compute_metrics(
            config, nets, renders=renders[name], reference=renders[config.reference],
            edits=edits, cameras=cams, prompt=prompt, depth_range=_depth_range(gens[name].G),
            text_embedding=text_emb)
    seconds["metrics"] = time.perf_counter() - t0
    info = {"prompt": prompt, "negative_prompt": config.negative_prompt,
            "identities": config.identities, "n_identities": n,
            "identity_names": [i.name for i in identities],
            "views": {"yaw": list(config.views.yaw), "pitch": list(config.views.pitch),
                      "edit": edit_views},
            "edit": (f"SD {config.sd}: strength {config.edit.strength} of {config.edit.steps} "
                     f"DDIM steps, CFG {config.edit.guidance_scale}, eta {config.edit.eta}, "
                     f"seed {config.edit.seed}, {config.edit.dtype}"),
            "generator_dirs": assets.parse_generators(config.generators),
            "metrics": list(config.metrics), "backend": jax.default_backend(),
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}  # this run (cache hits)
    paths = report.write_report(workdir, results=results, info=info,
                                reference=config.reference, metrics=config.metrics,
                                notes=notes)
    k = min(config.sheet_identities, n)
    if k:
        yaws = list(config.views.yaw)
        side = next((i for i, y in enumerate(yaws) if abs(y) > 1e-6 and i != 0), None)
        views = [0] + ([side] if side is not None else [])
        paths += report.write_sheets(
            workdir / "sheets", [i.name for i in identities[:k]], reference=config.reference,
            renders={g: r["image"][:k] for g, r in renders.items()},
            edits=None if edits is None else edits[:k], edit_views=edit_views, views=views)
    log(report.markdown_table(results, config.metrics, config.reference))
    log(f"wrote {workdir / 'report.md'}, metrics.json, metrics.png"
        + (f", sheets/ ({k})" if k else ""))
    return {"results": results, "info": info, "paths": paths}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``--config FILE [--config.field=value ...]``; errors are one line on stderr
    (exit 2 for usage, 1 for data / missing weights)."""
    from jaxhead.config_cli import config_main

    return config_main(argv, doc=__doc__, prog="jaxhead.evaluate",
                       documented_in="configs/eval.py", validate=assets.validate,
                       run=evaluate)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())
