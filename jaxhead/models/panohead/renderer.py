"""Tri-grid volume renderer of PanoHead: ray sampling, tri-grid features, importance sampling,
MipRayMarcher2 compositing. Pure JAX functions, rays flattened row-major (``m = i * res + j``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.ops.grid_sample import grid_sample_3d

# Inverses of the three plane axes (P0 = I, P1 = [[1,0,0],[0,0,1],[0,1,0]],
# P2 = [[0,1,0],[0,0,1],[1,0,0]]); points are row vectors, projections = xyz @ inv(P).
_PLANE_AXES = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                        [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                        [[0, 1, 0], [0, 0, 1], [1, 0, 0]]], np.float64)
_INV_PLANE_AXES = np.linalg.inv(_PLANE_AXES).astype(np.float32)


def ray_sampler(cam2world: jax.Array, intrinsics: jax.Array,
                resolution: int) -> tuple[jax.Array, jax.Array]:
    """Rays through pixel centres (OpenCV camera, normalized intrinsics).

    cam2world ``[N, 4, 4]``, intrinsics ``[N, 3, 3]`` -> origins, unit directions ``[N, R*R, 3]``.
    """
    n = cam2world.shape[0]
    cam_loc = cam2world[:, :3, 3]
    fx, fy = intrinsics[:, 0, 0:1], intrinsics[:, 1, 1:2]
    cx, cy = intrinsics[:, 0, 2:3], intrinsics[:, 1, 2:3]
    sk = intrinsics[:, 0, 1:2]
    idx = (np.arange(resolution, dtype=np.float32) * np.float32(1.0 / resolution)
           + np.float32(0.5 / resolution))
    y_cam = jnp.asarray(np.repeat(idx, resolution))[None]  # row index i
    x_cam = jnp.asarray(np.tile(idx, resolution))[None]  # column index j
    x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx
    y_lift = (y_cam - cy) / fy
    ones = jnp.ones_like(x_lift)
    pts = jnp.stack([x_lift, y_lift, ones, ones], axis=-1)  # [N, M, 4]
    world = jnp.einsum("nij,nmj->nmi", cam2world, pts,
                       precision=jax.lax.Precision.HIGHEST)[..., :3]
    dirs = world - cam_loc[:, None]
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = jnp.broadcast_to(cam_loc[:, None], dirs.shape)
    del n
    return origins, dirs


def planes_to_volumes(planes: jax.Array, triplane_depth: int) -> jax.Array:
    """Backbone output ``[N, H, W, 3*32*D]`` -> tri-grid ``[N, 3, D, H, W, 32]``.

    Channel order as PyTorch's ``view(N, 3, 32, D, H, W)``: ch = plane*32*D + c*D + d.
    """
    n, h, w, _ = planes.shape
    v = planes.reshape(n, h, w, 3, 32, triplane_depth)
    return v.transpose(0, 3, 5, 1, 2, 4)


def sample_from_planes(volumes: jax.Array, coords: jax.Array, box_warp: float) -> jax.Array:
    """Trilinear features of each plane at world points.

    volumes ``[N, 3, D, H, W, C]``, coords ``[N, M, 3]`` -> ``[N, 3, M, C]``.
    """
    n, p = volumes.shape[:2]
    coords = (2.0 / box_warp) * coords
    proj = jnp.einsum("nmk,pkj->npmj", coords, jnp.asarray(_INV_PLANE_AXES),
                      precision=jax.lax.Precision.HIGHEST)
    out = grid_sample_3d(volumes.reshape((n * p,) + volumes.shape[2:]),
                         proj.reshape(n * p, -1, 3))
    return out.reshape(n, p, -1, volumes.shape[-1])


def triplane_crop_mask(xyz: jax.Array, thresh: float, box_warp: float) -> jax.Array:
    """True where a point lies outside the |x|, |z| <= box_warp/2 - thresh column."""
    lim = box_warp / 2 - thresh
    inside = (jnp.abs(xyz[..., 0]) <= lim) & (jnp.abs(xyz[..., 2]) <= lim)
    return ~inside


def ray_marcher(colors: jax.Array, densities: jax.Array, depths: jax.Array,
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MipRayMarcher2 (softplus clamp mode).

    colors ``[N, M, S, C]``, densities / depths ``[N, M, S, 1]`` ->
    (rgb ``[N, M, C]``, depth ``[N, M, 1]``, weights ``[N, M, S-1, 1]``).
    The depth of an empty ray (total weight 0) is clamped to the largest sample depth, and
    depths are clipped to the min/max sample depth of the whole batch, as in the reference.
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    dens_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    dens_mid = jax.nn.softplus(dens_mid - 1)
    alpha = 1 - jnp.exp(-dens_mid * deltas)
    shifted = jnp.concatenate([jnp.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], axis=-2)
    weights = alpha * jnp.cumprod(shifted, axis=-2)[:, :, :-1]
    rgb = jnp.sum(weights * colors_mid, axis=-2)
    total = jnp.sum(weights, axis=-2)
    dmin, dmax = jnp.min(depths), jnp.max(depths)
    safe = jnp.where(total > 0, total, 1.0)
    depth = jnp.where(total > 0, jnp.sum(weights * depths_mid, axis=-2) / safe, dmax)
    depth = jnp.clip(depth, dmin, dmax)
    return rgb, depth, weights


def sample_pdf(bins: jax.Array, weights: jax.Array, u: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Inverse-CDF sampling. bins ``[R, B]``, weights ``[R, B-2]``, u ``[R, K]`` -> ``[R, K]``."""
    n_bins = weights.shape[-1]
    weights = weights + eps
    pdf = weights / jnp.sum(weights, axis=-1, keepdims=True)
    cdf = jnp.concatenate([jnp.zeros_like(pdf[:, :1]), jnp.cumsum(pdf, axis=-1)], axis=-1)
    inds = jax.vmap(lambda c, uu: jnp.searchsorted(c, uu, side="right"))(cdf, u)
    below = jnp.maximum(inds - 1, 0)
    above = jnp.minimum(inds, n_bins)
    cdf_b = jnp.take_along_axis(cdf, below, axis=-1)
    cdf_a = jnp.take_along_axis(cdf, above, axis=-1)
    bins_b = jnp.take_along_axis(bins, below, axis=-1)
    bins_a = jnp.take_along_axis(bins, above, axis=-1)
    denom = cdf_a - cdf_b
    denom = jnp.where(denom < eps, 1.0, denom)
    return bins_b + (u - cdf_b) / denom * (bins_a - bins_b)


def sample_importance(z_vals: jax.Array, weights: jax.Array, n_importance: int,
                      rng: jax.Array | None) -> jax.Array:
    """Importance depths from coarse weights (no gradient, like the reference's no_grad).

    z_vals ``[N, M, S, 1]``, weights ``[N, M, S-1, 1]`` -> ``[N, M, K, 1]``. ``rng=None`` gives the
    deterministic variant (``u = linspace(0, 1, K)``).
    """
    z_vals, weights = jax.lax.stop_gradient((z_vals, weights))
    n, m, s, _ = z_vals.shape
    z = z_vals.reshape(n * m, s)
    w = weights.reshape(n * m, s - 1)
    # max_pool1d(2, stride 1, pad 1) then avg_pool1d(2, stride 1); + 0.01.
    neg = jnp.full_like(w[:, :1], -jnp.inf)
    wp = jnp.concatenate([neg, w, neg], axis=-1)
    wmax = jnp.maximum(wp[:, :-1], wp[:, 1:])
    w = 0.5 * (wmax[:, :-1] + wmax[:, 1:]) + 0.01
    z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
    if rng is None:
        u = jnp.broadcast_to(jnp.linspace(0.0, 1.0, n_importance, dtype=z.dtype),
                             (n * m, n_importance))
    else:
        u = jax.random.uniform(rng, (n * m, n_importance), z.dtype)
    out = sample_pdf(z_mid, w[:, 1:-1], u)
    return jax.lax.stop_gradient(out.reshape(n, m, n_importance, 1))


def sample_stratified(n: int, m: int, ray_start: float, ray_end: float, num: int,
                      rng: jax.Array | None) -> jax.Array:
    """``linspace(start, end, num)`` plus uniform jitter of one bin width -> ``[N, M, num, 1]``.

    ``rng=None``: jitter 0.5 (each sample in the middle of its bin), the deterministic mode.
    """
    base = jnp.linspace(ray_start, ray_end, num, dtype=jnp.float32).reshape(1, 1, num, 1)
    delta = (ray_end - ray_start) / (num - 1)
    if rng is None:
        jitter = jnp.full((n, m, num, 1), 0.5, jnp.float32)
    else:
        jitter = jax.random.uniform(rng, (n, m, num, 1), jnp.float32)
    return base + jitter * delta


DecoderFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def render(volumes: jax.Array, decoder: DecoderFn, origins: jax.Array, dirs: jax.Array, *,
           ray_start: float, ray_end: float, depth_resolution: int,
           depth_resolution_importance: int, box_warp: float, triplane_crop: float = 0.1,
           rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ImportanceRenderer: coarse stratified pass, importance pass, merged compositing.

    volumes ``[N, 3, D, H, W, 32]``; ``decoder(features [N, M, 32]) -> (rgb [N, M, C],
    sigma [N, M, 1])``; origins / dirs ``[N, M, 3]``; ``rng=None`` = deterministic sampling.
    Returns feature ``[N, M, C]``, depth ``[N, M, 1]``, accumulated weight ``[N, M, 1]``.
    """
    n, m, _ = origins.shape
    k_strat = k_imp = None
    if rng is not None:
        k_strat, k_imp = jax.random.split(rng)

    def run(depths: jax.Array) -> tuple[jax.Array, jax.Array]:
        s = depths.shape[2]
        xyz = (origins[:, :, None] + depths * dirs[:, :, None]).reshape(n, m * s, 3)
        feats = sample_from_planes(volumes, xyz, box_warp).mean(axis=1)
        rgb, sigma = decoder(feats)
        if triplane_crop:
            sigma = jnp.where(triplane_crop_mask(xyz, triplane_crop, box_warp)[..., None],
                              -1e3, sigma)
        return rgb.reshape(n, m, s, -1), sigma.reshape(n, m, s, 1)

    d_coarse = sample_stratified(n, m, ray_start, ray_end, depth_resolution, k_strat)
    c_coarse, s_coarse = run(d_coarse)
    if depth_resolution_importance > 0:
        _, _, w = ray_marcher(c_coarse, s_coarse, d_coarse)
        d_fine = sample_importance(d_coarse, w, depth_resolution_importance, k_imp)
        c_fine, s_fine = run(d_fine)
        depths = jnp.concatenate([d_coarse, d_fine], axis=2)
        colors = jnp.concatenate([c_coarse, c_fine], axis=2)
        dens = jnp.concatenate([s_coarse, s_fine], axis=2)
        order = jnp.argsort(jax.lax.stop_gradient(depths[..., 0]), axis=-1)[..., None]
        depths = jnp.take_along_axis(depths, order, axis=2)
        colors = jnp.take_along_axis(colors, order, axis=2)
        dens = jnp.take_along_axis(dens, order, axis=2)
    else:
        depths, colors, dens = d_coarse, c_coarse, s_coarse
    rgb, depth, weights = ray_marcher(colors, dens, depths)
    return rgb, depth, jnp.sum(weights, axis=2)
