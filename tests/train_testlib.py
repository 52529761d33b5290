"""Shared pieces of the training tests: the cheap grid-only demo config and parameter diffs."""

import jax
import numpy as np

from configs import demo

# one SGD step with lr 1 over 4 identities: the update is minus the gradient
SHARDED = {"batch_size": 4, "optimizer.name": "sgd", "optimizer.lr": 1.0}


def micro_config(**over):
    """Grid-only demo config (no 512 px SR in the step): the cheap variant for the tests that
    need several runs. ``over``: dotted field -> value."""
    c = demo.get_config()
    c.demo_teacher = "random_sd"  # the real teacher path (random-weight SD stack)
    c.single.enabled = False
    c.final_turntable_identities = 0
    c.preview_every = 0
    c.log_every = 1
    return override(c, **over)


def override(c, **over):
    """Set dotted config fields in place (``override(c, **{"optimizer.lr": 1.0})``); returns
    ``c``."""
    for k, v in over.items():
        target = c
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


def max_err(a, b) -> float:
    """Largest absolute difference over matching leaves of two pytrees."""
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
