"""Diversity of stylized outputs across identities: the "every input becomes the same face"
failure of a stylization. Both are means over all pairs of *distinct* identities (the
diagonal, an identity with itself, is excluded):

    pairwise_id_similarity(face_embeddings(arcface, renders, cameras=cams))   # high = collapse
    pairwise_lpips(lpips_params, renders)                                       # low = collapse

Inputs are one image / embedding per identity, all from the same camera (pose differences
would count as diversity). Compare the stylized set with the frozen generator's on the same
identities: a drop in pairwise LPIPS, or a rise in pairwise ID similarity, is lost diversity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.metrics.identity import l2_normalize
from jaxhead.models.lpips import lpips

Array = jax.Array


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise ValueError(f"pairwise metrics need at least 2 identities, got {n}")
    return np.triu_indices(n, k=1)


def pairwise_id_similarity(embs: Array) -> Array:
    """Mean cosine similarity over all pairs i < j of ``[N, D]`` embeddings (raw or
    normalised), a scalar in [-1, 1]."""
    e = l2_normalize(embs)
    if e.ndim != 2:
        raise ValueError(f"expected [N, D] embeddings, got shape {e.shape}")
    i, j = _pairs(e.shape[0])
    return jnp.mean(jnp.sum(e[i] * e[j], axis=-1))


def pairwise_lpips(params, images: Array, *, normalize: bool = False,
                   chunk: int = 64) -> Array:
    """Mean LPIPS(alex) over all pairs i < j of ``[N, H, W, 3]`` images (in [-1, 1]; in
    [0, 1] with ``normalize=True``), a scalar. The N (N - 1) / 2 pairs go through the network
    ``chunk`` at a time."""
    images = jnp.asarray(images)
    i, j = _pairs(images.shape[0])
    total = jnp.zeros((), jnp.float32)
    for s in range(0, len(i), chunk):
        a, b = images[i[s:s + chunk]], images[j[s:s + chunk]]
        total = total + jnp.sum(lpips(params, a, b, normalize=normalize))
    return total / len(i)


__all__ = ["pairwise_id_similarity", "pairwise_lpips"]
