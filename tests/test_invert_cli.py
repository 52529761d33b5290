"""``python -m jaxhead.invert``: input layouts, one-line errors, output files and the policy
that nothing already in OUT is overwritten (one slow end-to-end run on the tiny fixture)."""

import json

import jax
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
    nan = jax.tree.map(lambda x: np.full_like(x, np.nan) if np.issubdtype(x.dtype, np.floating)
                       else x, jax.device_get(p))
    save_panohead(root / "nan_gen", G, nan)  # loads only with --no-verify
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
    # hostile inputs (issue 22): each was a traceback, or accepted
    ("yaw_nan", "argument --yaw: expected a finite number, got 'nan'"),
    ("ray_start_nan", "argument --ray-start: expected a finite number, got 'nan'"),
    ("ray_start_far", "--ray-start 9.0 must be below the generator's far plane"),
    ("zero_camera", "entry 1 ('b.png'): not a PanoHead label (camera cam2world's upper-left "
                    "3x3 is not a rotation)"),
    ("huge_camera", "entry 0 ('a.png'): not a PanoHead label (camera the camera is 1e+30 units"),
    ("bool_camera", "entry 0 ('a.png'): not a PanoHead label (True is not a number)"),
    ("bad_intrinsics", "entry 0 ('a.png'): not a PanoHead label (camera the intrinsics"),
    ("nested_json", "dataset.json' is nested too deeply"),
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
    elif case == "yaw_nan":
        d = tmp_path / "x.png"
        _img(d, (128, 128))
        extra = ["--yaw", "nan"]
    elif case == "zero_camera":
        d = _folder(tmp_path, labels=[["a.png", CAM], ["b.png", [0] * 25]])
    elif case == "huge_camera":
        d = _folder(tmp_path, labels=[["a.png", CAM[:11] + [1e30] + CAM[12:]], ["b.png", CAM]])
    elif case == "bool_camera":
        d = _folder(tmp_path, labels=[["a.png", [True] + CAM[1:]], ["b.png", CAM]])
    elif case == "bad_intrinsics":
        d = _folder(tmp_path, labels=[["a.png", CAM[:16] + [0.0] + CAM[17:]], ["b.png", CAM]])
    elif case == "nested_json":
        d = _folder(tmp_path)
        (d / "dataset.json").write_text('{"labels": ' + "[" * 100_000 + "]" * 100_000 + "}")
    else:
        d = _folder(tmp_path)
    if case.startswith("ray_start"):
        extra = ["--ray-start", "nan" if case == "ray_start_nan" else "9.0"]
    if case == "bad_steps":
        extra = ["--steps", "0"]
    if case == "bad_chunk":
        extra = ["--batch", "2", "--chunk", "3"]
    if case == "old_generator":
        gen = models / "old_gen"
    vgg = models / ("nowhere" if case == "no_lpips" else "vgg")
    args = ["--generator", gen, "--images", d, "--out", tmp_path / "out",
            "--perceptual-weights", vgg, *extra]
    if case in ("not_square", "unreadable", "yaw_nan"):
        args += ["--steps", "1"]
    rc, err = _run(capsys, *args)
    assert rc in (1, 2) and expect in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_out_is_found_before_any_model_is_loaded(tmp_path, capsys, models,
                                                            monkeypatch):
    """(it was found after the inversion, at the first write)"""
    from fs_testlib import disk_full

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(invert, "load_panohead", loaded)
    d = _folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.npz").write_bytes(b"earlier result")
    with disk_full(0):
        rc, err = _run(capsys, "--generator", models / "gen", "--images", d, "--out", out,
                       "--perceptual-weights", models / "vgg", "--steps", "1")
    assert rc == 1 and f"output directory '{out}' is not writable" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["a.npz"]
    assert (out / "a.npz").read_bytes() == b"earlier result"


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
    their layouts and the settings recorded with them; a second run skips the finished stems;
    a non-finite result (a NaN generator under --no-verify, as --ray-start nan made one) is
    never written."""
    d = _folder(tmp_path)
    out = tmp_path / "out"
    base = ["--images", d, "--out", out, "--perceptual-weights", models / "vgg", "--steps", "2",
            "--pti-steps", "1", "--batch", "2"]
    args = ["--generator", models / "demo_gen", *base]
    rc, err = _run(capsys, *args)
    assert rc == 0, err
    G, _ = load_panohead(models / "demo_gen")
    for stem in ("a", "b"):
        z = np.load(out / f"{stem}.npz")
        w, settings = z["w"], json.loads(str(z["settings"]))
        assert w.shape == (1, G.num_ws, 512) and w.dtype == np.float32
        assert settings["steps"] == 2 and settings["pti_steps"] == 1
        assert settings["ray_start"] == 2.35 and settings["camera"] == pytest.approx(CAM)
        info = json.loads((out / f"{stem}.json").read_text())
        assert info["steps"] == 2 and np.isfinite([info["mse"], info["lpips"], info["psnr"]]).all()
        assert info["pti"]["steps"] == 1 and info["settings"] == settings
        assert Image.open(out / f"{stem}_compare.png").size == (5 * 512, 512)
        G2, p2 = load_panohead(out / f"{stem}_pti")
        assert G2.has_t_mapping(p2) and G2.config.ray_start == 2.35
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rc, err = _run(capsys, *args)
    assert rc == 0 and "2 of 2 images already done" in err and "redoing" not in err
    rc, err = _run(capsys, "--generator", models / "nan_gen", "--no-verify", *base)
    lines = err.strip().splitlines()
    assert rc == 1 and "a: redoing, made with other settings: generator" in err, err
    assert lines[-1].startswith("error: the inversion of a, b is not finite"), err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _finished(out, stem: str, **settings) -> None:
    """A stem's outputs as a run with ``settings`` leaves them (crafted, no compute)."""
    from jaxhead.inversion_outputs import outputs, write_npz

    for f in outputs(out, stem, bool(settings.get("pti_steps")))[:-1]:
        f.mkdir() if f.suffix == "" else f.write_text("x")
    write_npz(out / f"{stem}.npz", np.zeros((1, 14, 512)), settings)


def test_stems_made_with_other_settings_are_redone(tmp_path):
    """``--pti-steps 1`` on a stem finished without PTI was skipped silently, as were a NaN
    ``w`` and an npz without recorded settings; each is redone, the log naming why."""
    from jaxhead.inversion_outputs import pending, run_settings, stem_settings

    d = _folder(tmp_path, names=("a.png", "b.png", "c.png", "d.png", "e.png"))
    targets = list_targets(d)
    out = tmp_path / "out"
    out.mkdir()
    run = run_settings(steps=2, pti_steps=0, generator="g1", perceptual="p1", ray_start=2.35,
                       seed=0)
    for t in targets:
        _finished(out, t.stem, **stem_settings(run, t.camera))
    np.savez(out / "c.npz", w=np.full((1, 14, 512), np.nan, np.float32),
             settings=np.array(json.dumps(stem_settings(run, targets[2].camera))))
    np.savez(out / "d.npz", w=np.zeros((1, 14, 512), np.float32))  # an older jaxhead's
    (out / "e.npz").write_bytes(b"PK\x03\x04 cut")
    todo, redo = pending(targets, out, False, run)
    assert [t.stem for t in todo] == ["c", "d", "e"]
    assert redo[0] == "c: redoing, its w is not finite"
    assert redo[1] == "d: redoing, no settings recorded (written by an older jaxhead)"
    assert redo[2].startswith("e: redoing, unreadable")
    for t in targets[3:]:  # c, d, e as the redo leaves them
        _finished(out, t.stem, **stem_settings(run, t.camera))
    _finished(out, "c", **stem_settings(run, targets[2].camera))
    assert pending(targets, out, False, run) == ([], [])
    changed = {**run, "pti_steps": 1, "generator": "g2"}
    todo, redo = pending(targets, out, True, changed)
    assert len(todo) == 5 and redo[0] == ("a: redoing, made with other settings: generator "
                                          "'g1' -> 'g2', pti_steps 0 -> 1")
    moved = targets[0].__class__(targets[0].path, "a.png", "a", targets[0].camera * 0.5)
    todo, redo = pending([moved], out, False, run)
    assert todo == [moved] and redo[0].startswith("a: redoing, made with other settings: "
                                                  "camera [")
