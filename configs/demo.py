"""The whole pipeline on tiny random-weight models built in code (a small PanoHead and a small
Stable Diffusion stack): runs on a 2-core CPU in minutes, downloads nothing.

    python -m jaxhead.train --config configs/demo.py

Same objective and schedule as the paper's configs; only model sizes, step counts and the
logging cadence differ. Random teachers stylize nothing meaningful: this shows the machinery.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.models.generator = "demo"
    c.models.sd = "demo"
    c.prompt = "Portrait of a zombie"
    c.workdir = "runs/demo"
    c.steps = 4
    c.grid.control = "renderer_depth"  # no Depth Anything in the demo
    c.log_every = 1
    c.preview_every = 2
    c.preview_identities = 2
    c.checkpoint_every = 2
    c.final_turntable_identities = 1
    c.final_turntable_frames = 8
    return c
