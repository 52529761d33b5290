"""Joker style with the paper's settings.

    python -m jaxhead.train --config configs/joker.py --config.workdir=runs/joker
"""

from configs import base


def get_config():
    c = base.get_config()
    c.prompt = (
        "A portrait of Joker from the movie The Dark Knight"
    )
    c.workdir = "runs/joker"
    return c
