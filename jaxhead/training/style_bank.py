"""The style bank of the SAS objective: teacher samples of the prompt and their latent channel
statistics, sampled once per workdir and cached in ``<workdir>/style_bank.npz``.

The SAS paper (Jiang et al., Sec. III-B.2 and IV-A.3) samples 20 images of the target style
with Stable Diffusion (CFG 7.5, 20 inference steps) before training and takes "the mean and
covariance of these images in the latent space". Here the run's own teacher (its UNet, the
style prompt and negative prompt embeddings, its noise schedule) samples ``style_bank.count``
latents text-to-image with :func:`jaxhead.sampling.sample` (DDIM, eta 0, no ControlNet: the
paper's bank uses none) at the trained views' latent size; the statistics are the mean ``[4]``
and covariance ``[4, 4]`` (population: divided by the number of values) of the 4 latent
channels over every sample and pixel. Sample ``i``'s noise is drawn from
``fold_in(key(style_bank.seed), i)`` alone.

With the demo's analytic teacher (``demo_teacher="gaussian"``) the same sampler runs its exact
Gaussian score: the bank holds DDIM samples of the classifier-free-guided Gaussian centred on
the palette's pooled colours (the demo VAE's latents), so ``mean`` is near the palette's
channel means and ``cov`` is the palette's spatial colour variation plus the teacher's width.

The file stores the latents, ``mean``, ``cov`` and the settings they were made with (prompt,
negative prompt, count, steps, guidance, seed, teacher, latent size). A bank whose settings
differ from the run's is resampled (with a message saying which differ), never reused; a
resumed run finds its own bank and reuses it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead import losses
from jaxhead.errors import DataError
from jaxhead.utils.npz_io import read_npz

BANK_FILE = "style_bank.npz"


def needs_style_bank(config) -> bool:
    """The selected objective takes ``style_stats`` (``sas``)."""
    obj = losses.OBJECTIVES.get(config.objective)
    return obj is not None and obj.takes("style_stats")


def bank_settings(config, models: Any) -> dict[str, Any]:
    """What a bank depends on (JSON values): compared with a cached bank's before reuse."""
    b = config.style_bank
    demo = bool(getattr(models, "demo", False))
    teacher = (f"demo:{config.demo_teacher}:seed{int(config.seed)}" if demo
               else str(config.models.sd))
    return {"prompt": str(config.prompt), "negative_prompt": str(config.negative_prompt),
            "count": int(b.count), "steps": int(b.steps),
            "guidance_scale": float(b.guidance_scale), "seed": int(b.seed),
            "teacher": teacher, "teacher_dtype": str(config.models.teacher_dtype),
            "latent_size": int(models.latent_size)}


def bank_statistics(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channel mean ``[C]`` and covariance ``[C, C]`` (float64; population, divided by the
    number of values) over every sample and pixel of ``latents`` ``[N, h, w, C]``."""
    x = np.asarray(latents, np.float64).reshape(-1, latents.shape[-1])
    mean = x.mean(0)
    d = x - mean
    return mean, d.T @ d / len(x)


def _sampler(models: Any, config):
    """The run's teacher as a :class:`jaxhead.sampling.StableDiffusion` (no text encoder: the
    prompt embeddings are the run's)."""
    from jaxhead.sampling import StableDiffusion, read_scheduler

    if models.schedule is None:
        raise ValueError("the style bank needs the teacher's noise schedule (Models.schedule)")
    clip = None
    if not models.demo:  # DDIM's clip_sample of the converted scheduler (and its checks)
        clip = read_scheduler(Path(config.models.sd) / "scheduler")[1]
    return StableDiffusion(models.teacher, models.vae, None, None, models.schedule, clip)


def sample_bank(models: Any, frozen: dict[str, Any], config, *, progress: bool = True
                ) -> np.ndarray:
    """``style_bank.count`` teacher samples of the prompt: final latents ``[N, h, w, 4]``
    (float32, the VAE's scaled latent space), in batches of ``style_bank.batch`` (the last
    padded by repeating its final seed, so one compiled shape serves all)."""
    from jaxhead import sampling

    b = config.style_bank
    n, steps, batch = int(b.count), int(b.steps), min(int(b.batch), int(b.count))
    sd = _sampler(models, config)
    params = {"teacher": frozen["teacher"], "vae": frozen["vae"]}
    text, neg = frozen["text"]["cond"], frozen["text"]["neg"]
    root = jax.random.key(int(b.seed))
    size = (models.latent_size, models.latent_size)
    calls = -(-n // batch)
    out = []
    with tqdm(total=calls * steps, unit="step", dynamic_ncols=True, disable=not progress,
              desc=f"style bank ({n} samples, {steps} DDIM steps)") as bar, \
            sampling.progress_hook(lambda _i: bar.update(1)):
        for s in range(0, n, batch):
            idx = list(range(s, min(s + batch, n)))
            idx_p = idx + [idx[-1]] * (batch - len(idx))
            keys = jnp.stack([jax.random.fold_in(root, i) for i in idx_p])
            noise = sampling.draw_noise(sd, keys, size, num_steps=steps)
            res = sampling.sample(sd, params, noise, text, neg, num_steps=steps,
                                  guidance_scale=float(b.guidance_scale), decode=False,
                                  progress=progress)
            out.append(np.asarray(res.latents, np.float32)[:len(idx)])
    return np.concatenate(out)


def read_bank(path: Path) -> tuple[dict[str, Any] | None, dict[str, np.ndarray] | None, str]:
    """``(settings, {"latents", "mean", "cov"}, "")`` of a bank file, or ``(None, None,
    why it cannot be used)``."""
    try:
        arrays = read_npz(path, ["settings", "latents", "mean", "cov"])
        settings = json.loads(str(arrays.pop("settings")))
    except (DataError, ValueError) as e:
        return None, None, f"unreadable ({type(e).__name__}: {e})"
    c = arrays["latents"].shape[-1]
    if arrays["mean"].shape != (c,) or arrays["cov"].shape != (c, c):
        return None, None, (f"malformed (mean {arrays['mean'].shape}, cov "
                            f"{arrays['cov'].shape} for {c} channels)")
    return settings, arrays, ""


def write_bank(path: Path, latents: np.ndarray, mean: np.ndarray, cov: np.ndarray,
               settings: dict[str, Any]) -> None:
    """Write a bank atomically (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, latents=latents, mean=mean, cov=cov, settings=np.array(json.dumps(settings)))
    tmp.replace(path)


def load_or_make(path: str | Path, models: Any, frozen: dict[str, Any], config, *,
                 write: bool = True, progress: bool = True) -> dict[str, np.ndarray]:
    """The style statistics ``{"mean": [4], "cov": [4, 4]}`` (float32) of the run: from the
    bank at ``path`` when it was made with this run's settings, else sampled (and, with
    ``write``, saved there, replacing a bank of other settings with a message naming them)."""
    path = Path(path)
    want = bank_settings(config, models)
    if path.is_file():
        got, arrays, why = read_bank(path)
        if got == want:
            print(f"jaxhead.train: style bank: reusing {path} ({want['count']} samples)")
            return {"mean": arrays["mean"].astype(np.float32),
                    "cov": arrays["cov"].astype(np.float32)}
        if got is not None:
            keys = sorted(set(got) | set(want))
            why = "made with " + ", ".join(f"{k}={got.get(k)!r}" for k in keys
                                           if got.get(k) != want.get(k)) + \
                " (this run: " + ", ".join(f"{k}={want.get(k)!r}" for k in keys
                                           if got.get(k) != want.get(k)) + ")"
        print(f"jaxhead.train: style bank {path} is {why}: sampling a new one",
              file=sys.stderr)
    latents = sample_bank(models, frozen, config, progress=progress)
    mean, cov = bank_statistics(latents)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise DataError("the style bank's latents are not finite (check the teacher weights "
                        "and style_bank settings); nothing was written")
    if write:
        write_bank(path, latents, mean, cov, want)
    return {"mean": mean.astype(np.float32), "cov": cov.astype(np.float32)}
