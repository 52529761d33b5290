"""``python -m jaxhead.render`` with inverted latents (``--ws``), several generators and
meshes: a seed's w renders as the seed, bad latent files are one line, frozen and stylized
meshes of one identity are written side by side."""

import os

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from jaxhead import render
from jaxhead.errors import run_cli
from jaxhead.latents import save_ws
from jaxhead.models.panohead.demo import demo_generator
from jaxhead.turntable import seed_ws
from jaxhead.utils import mesh_io


def _probe(capsys, argv, code: int, *needles: str) -> str:
    capsys.readouterr()
    rc = run_cli(render.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    """The built-in demo generator's w of seed 0 (as ``--seeds 0`` renders it) in a file."""
    G, params = demo_generator(0)
    d = tmp_path_factory.mktemp("ws")
    w = np.asarray(seed_ws(G, params, 0, psi=0.7, cutoff=14))
    return G, params, save_ws(d / "seed0000.npz", w), w


def test_bad_latent_files_are_one_line(tmp_path, capsys, demo_ws):
    G, _, good, w = demo_ws
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier")
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty").mkdir()
    (d / "photo.txt").write_text("x")
    (d / "broken.npz").write_bytes(b"not a zip")
    np.savez(d / "nowaw.npz", latent=w)
    save_ws(d / "short.npz", w[:, :5])
    save_ws(d / "narrow.npz", w[:, :, :256])
    np.savez(d / "flat.npz", w=w[0])
    o = ["--out", out]
    _probe(capsys, ["--ws", d / "missing", *o], 1, d / "missing", "does not exist")
    _probe(capsys, ["--ws", d / "empty", *o], 1, d / "empty", "holds no .npz files")
    _probe(capsys, ["--ws", d / "photo.txt", *o], 1, d / "photo.txt", "is not an .npz")
    _probe(capsys, ["--ws", d / "broken.npz", *o], 1, d / "broken.npz", "not a readable .npz")
    _probe(capsys, ["--ws", d / "nowaw.npz", *o], 1, "has no array 'w'", "['latent']")
    _probe(capsys, ["--ws", d / "flat.npz", *o], 1, "expected float [1, num_ws, w_dim]")
    n = G.num_ws
    _probe(capsys, ["--ws", d / "short.npz", *o], 1, "short.npz", "w is [1, 5, 512]",
           f"takes [1, {n}, 512]")
    _probe(capsys, ["--ws", d / "narrow.npz", *o], 1, f"w is [1, {n}, 256]")
    _probe(capsys, ["--ws", good, "--ws", good, *o], 1, "two identities named 'seed0000'")
    _probe(capsys, ["--ws", good, "--seeds", "0", *o], 2, "give --seeds or --ws, not both")
    _probe(capsys, ["--ws", good, "--mesh-res", "4", *o], 2, "--mesh-res")
    _probe(capsys, ["--generator", "a=x", "--generator", "a=y", *o], 2,
           "same folder 'a'", "LABEL=DIR")
    assert os.listdir(out) == ["keep.png"]  # nothing written, nothing lost


def test_the_renderer_gets_the_seeds_w_bitwise(tmp_path, demo_ws, monkeypatch):
    """``--ws`` of a seed's saved w hands the renderer exactly the seed's ws (the rendering
    itself: the slow test below)."""
    _, _, good, w = demo_ws
    seen = {}

    def fake(G, params, ws, *, frames, **kw):
        seen.setdefault("ws", []).append(np.asarray(ws))
        r = G.config.neural_rendering_resolution
        return (np.zeros((frames, 16, 16, 3), np.uint8), np.ones((frames, r, r, 1)),
                np.ones((frames, r, r, 1)))

    monkeypatch.setattr(render, "render_identity", fake)
    assert render.main(["--seeds", "0", "--frames", "8", "--out", str(tmp_path / "s")]) == 0
    assert render.main(["--ws", str(good), "--frames", "8", "--out", str(tmp_path / "w")]) == 0
    a, b = seen["ws"]
    assert a.dtype == b.dtype == np.float32 and a.shape == (1, 8, 512)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, w)
    assert sorted(os.listdir(tmp_path / "w")) == sorted(os.listdir(tmp_path / "s"))


@pytest.mark.slow  # two 8-view 512 px renders of the demo generator (~1 min on 2 cores)
def test_a_seeds_w_renders_as_the_seed(tmp_path, demo_ws):
    _, _, good, _ = demo_ws
    common = ["--frames", "8", "--batch", "8"]
    assert render.main(["--seeds", "0", "--out", str(tmp_path / "s"), *common]) == 0
    assert render.main(["--ws", str(good.parent), "--out", str(tmp_path / "w"), *common]) == 0
    for f in ("seed0000_sheet.png", "seed0000_depth.png", "seed0000_turntable.gif"):
        a, b = iio.imread(tmp_path / "s" / f), iio.imread(tmp_path / "w" / f)
        np.testing.assert_array_equal(a, b)
    assert iio.imread(tmp_path / "w" / "seed0000_sheet.png").std() > 1  # not blank


def test_frozen_and_stylized_meshes_side_by_side(tmp_path, demo_ws):
    trimesh = pytest.importorskip("trimesh")
    G, params, good, _ = demo_ws
    G.save(tmp_path / "frozen", params)
    stylized = jax.tree.map(lambda x: x, params)  # a "trained" generator: other decoder bias
    dec = stylized["params"]["decoder"]["net_2"]
    dec["bias"] = dec["bias"].at[0].add(1.5)  # denser: a bigger shape
    G.save(tmp_path / "stylized_gen", stylized)
    out = tmp_path / "out"
    argv = ["--generator", str(tmp_path / "frozen"), "--generator",
            f"pixar={tmp_path / 'stylized_gen'}", "--ws", str(good), "--out", str(out),
            "--mesh-only", "--mesh-res", "32", "--mesh-level", "0", "--mesh-colors"]
    assert render.main(argv) == 0
    assert sorted(os.listdir(out)) == ["frozen", "pixar"]
    meshes = {}
    for label in ("frozen", "pixar"):
        assert sorted(os.listdir(out / label)) == ["seed0000.obj", "seed0000.ply"]
        t = trimesh.load(out / label / "seed0000.ply", process=False)
        assert t.is_watertight and len(t.faces) > 100
        meshes[label] = mesh_io.read_obj(out / label / "seed0000.obj")
        np.testing.assert_array_equal(meshes[label].vertices, np.asarray(t.vertices, np.float32))
        assert meshes[label].colors is not None
        meshes[label] = t
    assert meshes["pixar"].volume > 1.2 * meshes["frozen"].volume
