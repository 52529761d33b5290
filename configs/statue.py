"""Statue style with the paper's settings.

    python -m jaxhead.train --config configs/statue.py --config.workdir=runs/statue
"""

from configs import base


def get_config():
    c = base.get_config()
    c.prompt = (
        "Portrait of a Greek statue, closeup, elegant and timeless, intricate and "
        "detailed carving, smooth marble texture, ancient Greek aesthetics"
    )
    c.workdir = "runs/statue"
    return c
