"""Which generator parameters train, and the optimizer that trains them."""

from __future__ import annotations

import re
from typing import Any

import optax

from jaxhead.utils import params_io

Params = dict[str, Any]


def split_trainable(variables: Params, trainable: tuple[str, ...]) -> Params:
    """Nested subtree of ``variables`` whose "/"-joined paths match a ``trainable`` regex."""
    flat = params_io.flatten(variables)
    pats = [re.compile(p) for p in trainable]
    sel = {k: v for k, v in flat.items() if any(p.search(k) for p in pats)}
    if not sel:
        raise ValueError(f"no parameter matches optimizer.trainable={trainable}")
    return params_io.unflatten(sel)


def merge(variables: Params, trainable: Params) -> Params:
    """``variables`` with the leaves present in ``trainable`` replaced."""
    flat = params_io.flatten(variables)
    flat.update(params_io.flatten(trainable))
    return params_io.unflatten(flat)


OPTIMIZERS = {
    "adam": lambda o: optax.adam(o.lr, b1=o.b1, b2=o.b2, eps=o.eps),
    "sgd": lambda o: optax.sgd(o.lr),
}


def make_optimizer(config) -> optax.GradientTransformation:
    """``config.optimizer.name`` (:data:`OPTIMIZERS`) on the trainable leaves; leaves matching
    ``optimizer.frozen`` (biases) get no update."""
    o = config.optimizer
    frozen = [re.compile(p) for p in o.frozen]

    def labels(tree):
        flat = params_io.flatten(tree)
        lab = {k: ("freeze" if any(p.search(k) for p in frozen) else "train") for k in flat}
        return params_io.unflatten(lab)

    return optax.multi_transform({"train": OPTIMIZERS[o.name](o),
                                  "freeze": optax.set_to_zero()}, labels)
