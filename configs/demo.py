"""The whole pipeline on tiny random-weight models built in code (a small PanoHead and a small
Stable Diffusion stack): runs on a 2-core CPU in minutes, downloads nothing.

    python -m jaxhead.train --config configs/demo.py

Same objective and schedule as the paper's configs (LD, rank weighting, mirror, 2x2 grid,
Tweedie, LPIPS, LDIS); model sizes, step counts, learning rate and the logging cadence differ.
The teacher is analytic (``demo_teacher="gaussian"``, jaxhead/training/demo_teacher.py): the
exact score of a Gaussian over latents centred on a green "zombie" palette, so the heads
visibly turn green in every view within the demo's steps (the run prints how far).
``--config.demo_teacher=random_sd`` swaps in a tiny random-weight Stable Diffusion stack (the
real teacher path; it stylizes nothing meaningful).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.models.generator = "demo"
    c.models.sd = "demo"
    c.prompt = "Portrait of a zombie"
    c.workdir = "runs/demo"
    c.demo_teacher = "gaussian"
    c.steps = 8
    c.optimizer.lr = 5e-3  # tiny random generator: large steps show the restyle in 8 steps
    c.grid.control = "renderer_depth"  # no Depth Anything in the demo
    c.log_every = 1
    c.preview_every = 4
    c.preview_identities = 2
    c.checkpoint_every = 4
    c.final_turntable_identities = 1
    c.final_turntable_frames = 8
    c.style_bank.count = 4  # objective=sas: a small bank (seconds with the demo teachers)
    c.style_bank.steps = 10  # (4 DDIM steps at CFG 7.5 do not converge on the Gaussian)
    return c
