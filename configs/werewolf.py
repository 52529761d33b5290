"""Werewolf style with the paper's settings.

    python -m jaxhead.train --config configs/werewolf.py --config.workdir=runs/werewolf
"""

from configs import base


def get_config():
    c = base.get_config()
    c.prompt = (
        "Portrait of a werewolf"
    )
    c.workdir = "runs/werewolf"
    return c
