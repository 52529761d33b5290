"""Seeded LPIPS(alex) weights in torch layouts, shared by the test and the script that made
``tests/fixtures/lpips/reference.npz`` (so the fixture needs no 10 MB of weights)."""

import numpy as np

from convert_weights.lpips import TV_INDEX
from jaxhead.models.lpips import ALEXNET_CONVS


def seeded_state_dicts(seed: int = 1234) -> tuple[dict, dict]:
    """``(alexnet, lin)``: torchvision ``features.N.*`` and lpips ``linK.model.1.weight``
    tensors as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    alex, lin = {}, {}
    for tv, (cin, cout, k, _, _) in zip(TV_INDEX, ALEXNET_CONVS, strict=True):
        alex[f"features.{tv}.weight"] = (rng.standard_normal((cout, cin, k, k)) *
                                         np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        alex[f"features.{tv}.bias"] = (0.05 * rng.standard_normal(cout)).astype(np.float32)
    for i, (_, cout, _, _, _) in enumerate(ALEXNET_CONVS):
        lin[f"lin{i}.model.1.weight"] = (np.abs(rng.standard_normal((1, cout, 1, 1))) /
                                         np.sqrt(cout)).astype(np.float32)
    return alex, lin


def seeded_images(seed: int = 99, batch: int = 3, size: int = 64) -> tuple[np.ndarray, ...]:
    """Two NHWC batches in [-1, 1]: smooth random images and perturbed copies; the last pair
    is identical (distance 0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    x = np.stack([np.sin(3 * (i + 1) * xx + c) * np.cos(2 * yy - c)
                  for i in range(batch) for c in (0.0, 1.0, 2.0)], -1)
    x = x.reshape(size, size, batch, 3).transpose(2, 0, 1, 3)
    x = np.clip(0.8 * x + 0.1 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y[-1] = x[-1]
    return x, y
