"""Shape extraction (jaxhead.mesh) and mesh files (jaxhead.utils.mesh_io).

The density query is checked against a plain-torch transcription of the official
``TriPlaneGenerator.sample_mixed`` (``run_model``: 5-D ``grid_sample`` of the tri-grid, OSGDecoder,
raw ToRGB) on the official fixture's planes; the extraction path against analytic densities.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead import mesh as M
from jaxhead.errors import DataError
from jaxhead.models.panohead import PanoHead, PanoHeadConfig
from jaxhead.models.panohead.demo import demo_generator
from jaxhead.turntable import seed_ws
from jaxhead.utils import mesh_io

LEVEL = M.PANOHEAD_LEVEL


def sphere_field(args, points):
    """Density ``LEVEL + 20 (r - |p - c|)``: the iso-surface at LEVEL is the sphere (c, r)."""
    return LEVEL + 20.0 * (args["r"] - jnp.linalg.norm(points - args["c"], axis=-1))


def edges_shared_twice(faces: np.ndarray) -> bool:
    """Closed (watertight) triangle mesh: every undirected edge belongs to exactly two faces."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, counts = np.unique(np.sort(e, axis=1), axis=0, return_counts=True)
    return bool(len(faces)) and bool(np.all(counts == 2))


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    """Divergence theorem: positive when the faces wind counter-clockwise seen from outside."""
    a, b, c = v[f[:, 0]].astype(np.float64), v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


@pytest.mark.parametrize("n", [48, 65])
def test_sphere_is_closed_with_its_radius_within_a_voxel(n):
    r, c = 0.25, np.array([0.1, -0.05, 0.02], np.float32)  # off-centre: orientation shows
    args = {"r": jnp.float32(r), "c": jnp.asarray(c)}
    grid = M.density_grid(sphere_field, args, resolution=n, box_size=1.0, chunk=5000,
                          progress=False)
    m = M.marching_cubes(grid, box_size=1.0, level=LEVEL)
    vox = M.voxel_size(n, 1.0)
    dist = np.linalg.norm(m.vertices - c, axis=1)
    assert np.abs(dist - r).max() < vox  # the brief's bound; measured ~0.01 voxel
    assert np.abs(dist - r).max() < 0.05 * vox
    assert edges_shared_twice(m.faces)
    assert np.abs(m.vertices.mean(0) - c).max() < 0.1 * vox  # world axes, not flipped
    assert signed_volume(m.vertices, m.faces) == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.01)
    # PanoHead's own frame: voxel units of the grid flipped on x and transposed (z, y, x)
    p = M.marching_cubes(grid, box_size=1.0, level=LEVEL, frame="panohead")
    want = np.array([(c[2] + 0.5) / vox, (c[1] + 0.5) / vox, (0.5 - c[0]) / vox])
    assert np.abs(p.vertices.mean(0) - want).max() < 0.1
    np.testing.assert_allclose(M.panohead_to_world(p.vertices, n, 1.0), m.vertices, atol=1e-6)


def test_border_is_trimmed_as_panohead():
    """A density above the level everywhere gives the trimmed cube: faces between voxel
    p - 1 (set to -1000) and p of each border, p = int(30 N / 256)."""
    n, box = 40, 1.3
    grid = np.full((n, n, n), 20.0, np.float32)
    m = M.marching_cubes(grid, box_size=box, level=LEVEL)
    p = M.trim_voxels(n)
    assert p == 4
    t = (LEVEL - M.TRIM_VALUE) / (20.0 - M.TRIM_VALUE)  # linear interpolation along the edge
    lo = -box / 2 + (p - 1 + t) * M.voxel_size(n, box)
    np.testing.assert_allclose(m.vertices.min(0), [lo] * 3, atol=1e-5)
    np.testing.assert_allclose(m.vertices.max(0), [-lo] * 3, atol=1e-5)
    assert edges_shared_twice(m.faces)
    assert signed_volume(m.vertices, m.faces) > 0


def test_lattice_is_x_slowest_and_spans_the_box():
    n, box = 5, 2.0
    pts = np.asarray(M.lattice_points(jnp.arange(n ** 3), n, box)).reshape(n, n, n, 3)
    axis = np.linspace(-1, 1, n, dtype=np.float32)
    want = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    np.testing.assert_allclose(pts, want, atol=1e-6)


def test_no_surface_and_missing_scikit_image(monkeypatch):
    grid = np.zeros((16, 16, 16), np.float32)
    with pytest.raises(DataError, match=r"no surface at density level 10.*\[0, 0\]"):
        M.marching_cubes(grid, box_size=1.0)
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(DataError, match="scikit-image"):
        M.marching_cubes(grid, box_size=1.0, level=0.5)


# --- the generator ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    G, params = demo_generator(0)
    ws = seed_ws(G, params, 0, psi=0.7, cutoff=14)
    return G, params, ws, jax.jit(G.representation)(params, ws)


def test_chunked_density_equals_unchunked(demo):
    G, params, ws, rep = demo
    n = 20
    args = {"params": params, "ws": ws, "rep": rep}
    field = M.generator_field(G)
    assert M.generator_field(G) is field  # one compiled chunk per generator
    whole = M.density_grid(field, args, resolution=n, box_size=G.box_size, chunk=n ** 3,
                           progress=False)
    parts = M.density_grid(field, args, resolution=n, box_size=G.box_size, chunk=999,
                           progress=False)  # 9 chunks, the last one padded
    np.testing.assert_array_equal(parts, whole)
    # the grid is the generator's density at the lattice points, indexed [x, y, z]
    axis = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    direct = np.asarray(jax.jit(G.density)(params, ws, jnp.asarray(pts), rep=rep))
    direct = direct.reshape(n, n, n)
    np.testing.assert_allclose(whole, direct, atol=1e-5 * np.abs(direct).max())


def test_demo_generator_mesh_is_non_empty_and_loads_back(demo, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    G, params, ws, rep = demo
    m = M.generator_mesh(G, params, ws, resolution=32, level=0.0, colors=True, chunk=4096,
                         progress=False)
    assert len(m.faces) > 100 and m.colors.shape == (len(m.vertices), 3)
    assert edges_shared_twice(m.faces)
    assert np.abs(m.vertices).max() <= G.box_size / 2
    assert np.ptp(m.colors.astype(int), axis=0).max() > 0  # not one flat colour
    want = np.clip(np.rint(np.asarray(G.point_colors(params, ws, jnp.asarray(m.vertices[None]),
                                                     rep=rep))[0] * 127.5 + 128), 0, 255)
    assert np.abs(m.colors.astype(int) - want).max() <= 1
    ply, obj = mesh_io.write_ply(tmp_path / "a.ply", m), mesh_io.write_obj(tmp_path / "a.obj", m)
    for path in (ply, obj):
        t = trimesh.load(path, process=False)
        np.testing.assert_array_equal(np.asarray(t.vertices, np.float32), m.vertices)
        np.testing.assert_array_equal(t.faces, m.faces)
        np.testing.assert_array_equal(t.visual.vertex_colors[:, :3], m.colors)
        assert t.is_watertight and t.volume > 0
    for back in (mesh_io.read_ply(ply), mesh_io.read_obj(obj)):
        np.testing.assert_array_equal(back.vertices, m.vertices)
        np.testing.assert_array_equal(back.faces, m.faces)
        np.testing.assert_array_equal(back.colors, m.colors)
    bare = mesh_io.read_ply(mesh_io.write_ply(tmp_path / "b.ply", M.Mesh(m.vertices, m.faces)))
    assert bare.colors is None and np.array_equal(bare.faces, m.faces)


# --- parity of the point query with the official sample_mixed / run_model ------------------


def _torch_sample(sd: dict, planes: np.ndarray, ws: np.ndarray, points: np.ndarray,
                  box_warp: float, depth: int):
    """Plain-torch transcription of the official run_model (``sample_from_planes`` with the
    tri-grid's 5-D grid_sample, OSGDecoder) and of the raw ToRGB on its features."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}
    pf = torch.from_numpy(planes)
    n, _, h, w = pf.shape
    pf = pf.view(n, 3, 32 * depth, h, w).reshape(n * 3, 32, depth, h, w)
    axes = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 1, 0], [0, 0, 1], [1, 0, 0]]], dtype=torch.float32)
    coords = (2 / box_warp) * torch.from_numpy(points)
    m = coords.shape[1]
    coords = coords.unsqueeze(1).expand(-1, 3, -1, -1).reshape(n * 3, m, 3)
    inv = torch.linalg.inv(axes).unsqueeze(0).expand(n, -1, -1, -1).reshape(n * 3, 3, 3)
    proj = torch.bmm(coords, inv).unsqueeze(1).unsqueeze(2)
    feats = F.grid_sample(pf, proj, mode="bilinear", padding_mode="zeros", align_corners=False)
    feats = feats.permute(0, 4, 3, 2, 1).reshape(n, 3, m, 32).mean(1)

    def fc(x, name):
        wt = t[f"{name}.weight"]
        return x @ (wt / np.sqrt(wt.shape[1])).T + t[f"{name}.bias"]

    out = fc(F.softplus(fc(feats, "decoder.net.0")), "decoder.net.2")
    sigma, rgb_feat = out[..., 0], out[..., 1:]
    styles = fc(torch.from_numpy(ws[:, -1]), "torgb.affine") / np.sqrt(32)
    rgb = torch.einsum("nmc,nc,oc->nmo", rgb_feat, styles, t["torgb.weight"][:, :, 0, 0])
    return sigma.numpy(), (rgb + t["torgb.bias"]).numpy()


def test_density_and_colour_match_the_official_point_query(fixtures_dir):
    pytest.importorskip("torch")
    from convert_weights.panohead import read_source, torch_to_flax

    src = fixtures_dir / "panohead_tiny"
    sd, kw, res = read_source(src / "G_ema.safetensors")
    G = PanoHead(PanoHeadConfig.from_official(kw, neural_rendering_resolution=res))
    params = jax.tree.map(jnp.asarray, torch_to_flax(sd, G.config))
    io = np.load(src / "io.npz")
    planes = io["planes"]  # the official backbone's planes [4, 288, 32, 32]
    ws = io["ws"]
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.6, 0.6, (4, 700, 3)).astype(np.float32)  # some outside the box
    rep = jnp.asarray(planes.transpose(0, 2, 3, 1))
    sigma = np.asarray(G.density(params, jnp.asarray(ws), jnp.asarray(pts), rep=rep))
    rgb = np.asarray(G.point_colors(params, jnp.asarray(ws), jnp.asarray(pts), rep=rep))
    ref_sigma, ref_rgb = _torch_sample(sd, planes, ws, pts, G.box_size,
                                       G.config.triplane_depth)
    assert sigma.shape == (4, 700) and rgb.shape == (4, 700, 3)
    assert np.abs(sigma - ref_sigma).max() <= 1e-4 * max(1.0, np.abs(ref_sigma).max())
    assert np.abs(rgb - ref_rgb).max() <= 1e-4 * max(1.0, np.abs(ref_rgb).max())
    print("density max-abs err", np.abs(sigma - ref_sigma).max(), "scale",
          np.abs(ref_sigma).max(), "| colour", np.abs(rgb - ref_rgb).max(), "scale",
          np.abs(ref_rgb).max())

