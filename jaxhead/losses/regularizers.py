"""Auxiliary terms of the official training: Tweedie MSE and LDIS (relative distances)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def tweedie_mse(x0_hat: Array, image: Array) -> Array:
    """``mean((x0_hat - (image + 1) / 2)^2)``: the teacher's decoded one-step x0 estimate
    (``[B, H, W, 3]`` in [0, 1], no gradient) pulls the render (in [-1, 1])."""
    return jnp.mean(jnp.square(jax.lax.stop_gradient(x0_hat) - 0.5 * (image + 1)))


def ldis(ti_prime: Array, tj_prime: Array, ti: Array, tj: Array, *, plane_axis: int = -2,
         eps: float = 1e-8) -> Array:
    """Relative-distance loss on tri-planes of two batches (arXiv 2312.16837):
    ``mean | |T'i - T'j|^2 / (|Ti - Tj|^2 + eps) - 1 |`` with the norm over ``plane_axis``.

    Primes are the trainable generator's planes, the others the frozen generator's. With
    jaxhead's planes ``[N, H, W, 288]`` reshape to ``[N, H, W, 3, 96]`` (plane axis -2).
    """
    num = jnp.sum(jnp.square(ti_prime - tj_prime), axis=plane_axis)
    den = jnp.sum(jnp.square(ti - tj), axis=plane_axis) + eps
    return jnp.mean(jnp.abs(num / den - 1))
