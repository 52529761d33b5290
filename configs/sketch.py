"""Sketch style with the paper's settings.

    python -m jaxhead.train --config configs/sketch.py --config.workdir=runs/sketch
"""

from configs import base


def get_config():
    c = base.get_config()
    c.prompt = (
        "Charcoal pencil sketch of human face, lower third, high contrast, black and "
        "white"
    )
    c.workdir = "runs/sketch"
    return c
