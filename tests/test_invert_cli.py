"""``python -m jaxhead.invert``: input layouts, one-line errors, output files and the policy
that nothing already in OUT is overwritten (one slow end-to-end run on the tiny fixture)."""

import json

import numpy as np
import pytest
from PIL import Image

from convert_weights.lpips import convert_vgg_state_dicts
from jaxhead import invert
from jaxhead.errors import run_cli
from jaxhead.inversion_data import list_targets
from jaxhead.models.panohead import load_panohead, save_panohead
from jaxhead.utils.params_io import save_params

CAM = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]


def _img(path, size=(64, 64)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)


def _folder(tmp_path, labels=None, names=("a.png", "b.png")):
    d = tmp_path / "data"
    d.mkdir()
    for n in names:
        _img(d / n, (128, 128))
    labels = [[n, [str(v) for v in CAM]] for n in names] if labels is None else labels
    (d / "dataset.json").write_text(json.dumps({"labels": labels}))
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory, fixtures_dir):
    from convert_weights.panohead import convert
    from tests.vgg_testlib import SMALL, seeded_state_dicts

    root = tmp_path_factory.mktemp("models")
    convert(fixtures_dir / "panohead_tiny" / "G_ema.safetensors", root / "gen")
    params = convert_vgg_state_dicts(*seeded_state_dicts(SMALL))
    save_params(root / "vgg", params, {"net": "vgg16", "widths": list(SMALL)})
    G, p = load_panohead(root / "gen")
    old = {"params": {k: v for k, v in p["params"].items() if k != "t_mapping"},
           "buffers": {k: v for k, v in p["buffers"].items() if k != "t_mapping"}}
    save_panohead(root / "old_gen", G, old)  # converted before t_mapping was kept
    from jaxhead.models.panohead.demo import demo_generator

    # the demo generator (the fixture's sizes with a narrow SR: the full-width SR made the
    # end-to-end run below take 3 minutes)
    G, p = demo_generator(0, t_mapping=True)
    save_panohead(root / "demo_gen", G, p)
    return root


def _run(capsys, *args):
    rc = run_cli(invert.main, [str(a) for a in args])
    return rc, capsys.readouterr().err


def test_folder_layout_reads_string_labels(tmp_path):
    d = _folder(tmp_path)
    t = list_targets(d)
    assert [x.name for x in t] == ["a.png", "b.png"] and [x.stem for x in t] == ["a", "b"]
    np.testing.assert_allclose(t[0].camera, np.asarray(CAM, np.float32))


@pytest.mark.parametrize("case,expect", [
    ("missing_label", "b.png' has no camera label in dataset.json"),
    ("short_label", "has 24 values"),
    ("no_json", "has no dataset.json"),
    ("not_square", "is 96x64: expected a square aligned crop"),
    ("unreadable", "is not a readable image"),
    ("bad_steps", "--steps must be >= 1"),
    ("bad_chunk", "--chunk must be a divisor of --batch 2, got 3"),
    ("json_file", "takes the folder that holds dataset.json"),
    ("no_lpips", "convert_weights.vgg16_nvidia vgg16.pt"),
    ("old_generator", "no t_mapping"),
])
def test_bad_inputs_are_one_line(tmp_path, capsys, models, case, expect):
    gen, extra = models / "gen", []
    if case == "missing_label":
        d = _folder(tmp_path, labels=[["a.png", CAM]])
    elif case == "short_label":
        d = _folder(tmp_path, labels=[["a.png", CAM[:24]], ["b.png", CAM]])
    elif case == "no_json":
        d = _folder(tmp_path)
        (d / "dataset.json").unlink()
    elif case == "not_square":
        d = tmp_path / "x.png"
        _img(d, (96, 64))
    elif case == "unreadable":
        d = tmp_path / "x.png"
        d.write_bytes(b"not an image")
    elif case == "json_file":
        d = _folder(tmp_path) / "dataset.json"
    else:
        d = _folder(tmp_path)
    if case == "bad_steps":
        extra = ["--steps", "0"]
    if case == "bad_chunk":
        extra = ["--batch", "2", "--chunk", "3"]
    if case == "old_generator":
        gen = models / "old_gen"
    vgg = models / ("nowhere" if case == "no_lpips" else "vgg")
    args = ["--generator", gen, "--images", d, "--out", tmp_path / "out",
            "--perceptual-weights", vgg, *extra]
    if case == "not_square" or case == "unreadable":
        args += ["--steps", "1"]
    rc, err = _run(capsys, *args)
    assert rc in (1, 2) and expect in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_partial_outputs_are_never_overwritten(tmp_path, capsys, models):
    d = _folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_compare.png").write_bytes(b"user file")
    rc, err = _run(capsys, "--generator", models / "gen", "--images", d, "--out", out,
                   "--perceptual-weights", models / "vgg", "--steps", "1")
    assert rc == 1 and "a_compare.png' exists but a.npz does not" in err
    assert (out / "a_compare.png").read_bytes() == b"user file"


@pytest.mark.slow
def test_end_to_end_two_images_batch_two(tmp_path, capsys, models):
    """2 projection steps + 1 PTI step on the demo generator (with t_mapping): the files,
    their layouts, and that a second run skips the finished stems."""
    d = _folder(tmp_path)
    out = tmp_path / "out"
    args = ["--generator", models / "demo_gen", "--images", d, "--out", out, "--perceptual-weights",
            models / "vgg", "--steps", "2", "--pti-steps", "1", "--batch", "2"]
    rc, err = _run(capsys, *args)
    assert rc == 0, err
    G, _ = load_panohead(models / "demo_gen")
    for stem in ("a", "b"):
        w = np.load(out / f"{stem}.npz")["w"]
        assert w.shape == (1, G.num_ws, 512) and w.dtype == np.float32
        info = json.loads((out / f"{stem}.json").read_text())
        assert info["steps"] == 2 and np.isfinite([info["mse"], info["lpips"], info["psnr"]]).all()
        assert info["pti"]["steps"] == 1
        assert Image.open(out / f"{stem}_compare.png").size == (5 * 512, 512)
        G2, p2 = load_panohead(out / f"{stem}_pti")
        assert G2.has_t_mapping(p2) and G2.config.ray_start == 2.35
    before = (out / "a.npz").read_bytes()
    rc, err = _run(capsys, *args)
    assert rc == 0 and "2 of 2 images already done" in err
    assert (out / "a.npz").read_bytes() == before
