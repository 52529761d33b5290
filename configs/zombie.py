"""Zombie style with the paper's settings.

    python -m jaxhead.train --config configs/zombie.py --config.workdir=runs/zombie
"""

from configs import base


def get_config():
    c = base.get_config()
    c.prompt = (
        "Portrait of a zombie"
    )
    c.workdir = "runs/zombie"
    return c
