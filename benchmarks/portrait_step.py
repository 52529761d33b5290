"""Seconds per step and memory of the single-portrait mode (configs/portrait.py).

    python -m benchmarks.portrait_step [--configs demo,full] [--steps 2] [--compile-only]

``demo``: the demo generator (SR to 512) with the tiny random CLIP and LPIPS-VGG16 of the
demo; ``full``: the released PanoHead architecture, CLIP ViT-B/32's image tower and the full
VGG16 LPIPS, all with random weights built in code. Both: 1 identity (the anchor ``w*``, given,
so no inversion), 1 sampled view, the spatial LPIPS at the reference camera, remat on.
Each configuration runs in its own subprocess; peak = process max RSS (CPU) or the device's
peak bytes in use (GPU). Compile = lower + compile of the jitted step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(name: str, steps: int, compile_only: bool) -> dict:
    import jax
    import numpy as np
    from PIL import Image

    from benchmarks.stepping import time_step
    from configs import portrait
    from jaxhead.latents import save_ws
    from jaxhead.train import state_shardings
    from jaxhead.training import sharding
    from jaxhead.training.config import validate_config
    from jaxhead.training.demo import demo_models, random_params
    from jaxhead.training.optim import make_optimizer
    from jaxhead.training.step import init_state, train_step
    from jaxhead.training.terms.portrait import Portrait
    from jaxhead.utils.compile import jit

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(tmp / "art.png")
    c = portrait.get_config()
    c.models.generator = c.models.sd = "demo"
    c.reference, c.reference_yaw, c.reference_w = str(tmp / "art.png"), 0.2, str(tmp / "w.npz")
    save_ws(tmp / "w.npz", np.zeros((1, 1, 512)))  # rewritten once num_ws is known
    c = validate_config(c)
    t0 = time.perf_counter()
    size = "full" if name == "full" else "demo"
    models, frozen = demo_models(c, size=size)
    save_ws(tmp / "w.npz", 0.3 * rng.standard_normal((1, models.G.num_ws, models.G.w_dim)))
    if size == "full":  # CLIP ViT-B/32 and VGG16 at their real sizes, random weights
        from jaxhead.models import clip as clip_lib
        from jaxhead.models.lpips_vgg import param_shapes

        cfg = clip_lib.CLIPConfig()
        shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32), param_shapes(),
                              is_leaf=lambda x: isinstance(x, tuple))
        vgg = random_params(shapes, 3)
        vgg["lin"] = jax.tree.map(abs, vgg["lin"])
        frozen["terms"]["portrait"] = {"clip": clip_lib.CLIPParams(cfg, random_params(
            clip_lib.expected_shapes(cfg), 2)), "lpips": vgg}
    frozen["terms"]["portrait"].update(Portrait.prepare(models, frozen, c, tmp, write=False))
    t_build = time.perf_counter() - t0
    mesh = sharding.make_mesh(c)
    opt = make_optimizer(c)
    state = init_state(models, frozen, c, opt)
    st_sh = state_shardings(c, models, frozen, opt, mesh)
    frozen = sharding.place_frozen(frozen, mesh, c)
    state = jax.device_put(state, st_sh)
    step = jit(lambda s, f: train_step(s, f, models=models, config=c, optimizer=opt),
               in_shardings=(st_sh, jax.tree.map(lambda x: x.sharding, frozen)),
               out_shardings=(st_sh, sharding.replicated(mesh)), donate_argnums=0)
    return {"config": name, "build_s": t_build,
            **time_step(step, state, frozen, steps=steps, compile_only=compile_only)}


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default="demo,full")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--compile-only", action="store_true",
                    help="lower + compile and report XLA's memory plan without running")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    from benchmarks import names_arg

    ap = build_parser()
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(measure(args._child, args.steps, args.compile_only)))
        return 0
    rows = []
    for name in names_arg(ap, "--configs", args.configs, ("demo", "full")):
        out = subprocess.run([sys.executable, "-m", "benchmarks.portrait_step", "--steps",
                              str(args.steps), "--_child", name]
                             + (["--compile-only"] if args.compile_only else []),
                             capture_output=True, text=True, check=False, env=dict(os.environ))
        if out.returncode != 0:
            print(f"{name}: failed (exit {out.returncode})\n{out.stderr[-3000:]}",
                  file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2.0 ** 30
    print(f"{'config':<8}{'build s':>9}{'compile s':>11}{'s/step':>9}{'XLA args GiB':>14}"
          f"{'XLA temp GiB':>14}{'peak GiB':>10}  device")
    for r in rows:
        print(f"{r['config']:<8}{r['build_s']:>9.1f}{r['compile_s']:>11.1f}{r['step_s']:>9.1f}"
              f"{(r['arg_bytes'] or 0) / gib:>14.2f}{(r['temp_bytes'] or 0) / gib:>14.2f}"
              f"{r['peak_bytes'] / gib:>10.2f}  {r['device']} ({r['peak_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
