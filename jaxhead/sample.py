"""Sample Stable Diffusion (DDIM + classifier-free guidance) from a converted folder.

    python -m jaxhead.sample --sd checkpoints/sd --prompt "Portrait of a werewolf" \
        [--image head.png --strength 0.5] [--control depth=depth.png] --seeds 0-3 --out OUT

Writes ``OUT/seedXXXX.png`` per seed (text-to-image, or with ``--image`` an SDEdit of it:
noised to step ``(1 - strength) * steps`` and denoised from there). Seed s draws its noise
from ``jax.random.key(s)`` alone, so an image does not depend on the batch it was made in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead import sampling as S
from jaxhead.errors import ArgumentParser, DataError, UsageError, finite_float, run_cli
from jaxhead.latents import parse_seeds
from jaxhead.render import check_writable
from jaxhead.utils.image_io import image_size, read_rgb, write_image


def load_image(path: str, size: int | None) -> np.ndarray:
    """An image file -> float32 [H, W, 3] in [0, 1], resized (Lanczos) to ``size`` if given."""
    from PIL import Image

    im = read_rgb(path)
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, np.float32) / 255.0


def parse_control(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UsageError(f"--control expects NAME=PATH (e.g. depth=depth.png), got {spec!r}")
    return name, path


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m jaxhead.sample", description=__doc__)
    ap.add_argument("--sd", required=True, help="converted SD folder (convert_weights.diffusers)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--image", help="input image for image-to-image (SDEdit)")
    ap.add_argument("--strength", type=finite_float, default=None,
                    help="img2img strength in (0, 1]: fraction of the steps run (default 0.5)")
    ap.add_argument("--control", action="append", default=[], metavar="NAME=PATH",
                    help="ControlNet NAME (DIR/controlnet_NAME) with its control image")
    ap.add_argument("--control-scale", type=finite_float, default=1.0)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule")
    ap.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance")
    ap.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta (0: deterministic)")
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0"))
    ap.add_argument("--batch", type=int, default=1, help="seeds per call")
    ap.add_argument("--size", type=int, default=None,
                    help="image side (default: the input image's, else 512)")
    ap.add_argument("--bf16", action="store_true", help="UNet and ControlNet in bfloat16")
    ap.add_argument("--no-verify", action="store_true", help="skip the weights' hash check")
    ap.add_argument("--out", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    if args.eta < 0:
        ap.error("--eta must be >= 0")
    if args.strength is not None and args.image is None:
        ap.error("--strength needs --image")
    strength = 0.5 if args.strength is None else args.strength
    if args.image is not None and not 0 < strength <= 1:
        ap.error("--strength must be in (0, 1]")
    if len(args.control) > 1:
        ap.error("one --control at a time")
    controls = [parse_control(c) for c in args.control]
    for _, path in controls:
        if not Path(path).is_file():
            raise DataError(f"control image not found: {path!r}")
    if args.image is not None and not Path(args.image).is_file():
        raise DataError(f"image not found: {args.image!r}")

    out_dir = Path(args.out)
    check_writable(out_dir)
    sd, params = S.load_sd(args.sd, controlnets=[n for n, _ in controls],
                           dtype=jnp.bfloat16 if args.bf16 else jnp.float32,
                           verify=not args.no_verify)
    size = args.size
    if size is None:
        size = 512
        if args.image is not None:
            size = min(image_size(args.image)) // sd.size_multiple * sd.size_multiple
    if size < sd.size_multiple or size % sd.size_multiple:
        raise UsageError(f"image size {size} must be a positive multiple of {sd.size_multiple}")
    image = None if args.image is None else load_image(args.image, size) * 2 - 1
    control = None if not controls else load_image(controls[0][1], size)
    start = S.start_index_for_strength(args.steps, strength) if image is not None else 0
    if start >= args.steps:
        ap.error(f"--strength {strength} runs no step of {args.steps}")

    text = S.encode_prompts(sd, params, [args.prompt])
    neg = S.encode_prompts(sd, params, [args.negative_prompt])
    lat = size // sd.downscale
    run_steps = args.steps - start
    seeds = list(args.seeds)
    kind = "image-to-image" if image is not None else "text-to-image"
    print(f"{kind}: {len(seeds)} seed(s), {run_steps} of {args.steps} DDIM steps, "
          f"{size} px, CFG {args.guidance}" + (f", ControlNet {controls[0][0]}" if controls
                                                 else ""))
    written = []
    calls = -(-len(seeds) // args.batch)
    with tqdm(total=calls * run_steps, unit="step", dynamic_ncols=True) as bar, \
            S.progress_hook(lambda _i: bar.update(1)):
        for i in range(0, len(seeds), args.batch):
            chunk = seeds[i:i + args.batch]
            b = len(chunk)
            padded = chunk + [chunk[-1]] * (args.batch - b) if len(seeds) > args.batch else chunk
            n = len(padded)
            bar.set_description(f"seeds {chunk[0]}-{chunk[-1]}")
            noise = S.draw_noise(sd, S.seed_keys(padded), (lat, lat), num_steps=args.steps,
                                 start_index=start, eta=args.eta,
                                 posterior_sample=image is not None)
            out = S.sample(
                sd, params, noise, text, neg, num_steps=args.steps, start_index=start,
                image=None if image is None else jnp.broadcast_to(image, (n,) + image.shape),
                eta=args.eta, guidance_scale=args.guidance,
                control=None if control is None else jnp.broadcast_to(control,
                                                                      (n,) + control.shape),
                controlnet=controls[0][0] if controls else None,
                control_scale=args.control_scale, progress=True)
            imgs = np.clip(np.rint(np.asarray(out.images[:b]) * 255), 0, 255).astype(np.uint8)
            for seed, img in zip(chunk, imgs, strict=True):
                written.append(write_image(out_dir / f"seed{seed:04d}.png", img))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
