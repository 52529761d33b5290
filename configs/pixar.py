"""Pixar style with the paper's settings.

    python -m jaxhead.train --config configs/pixar.py --config.workdir=runs/pixar
"""

from configs import base


def get_config():
    c = base.get_config()
    c.prompt = (
        "Portrait a person in Pixar style, cute, big eyes, Disney, sharp, 8K, skin "
        "detail, best quality, realistic lighting, good-looking, uniform light, extremely "
        "detailed"
    )
    c.workdir = "runs/pixar"
    return c
