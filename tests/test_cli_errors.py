"""Every command-line tool answers bad input with ONE line on stderr (``error: ...`` naming the
problem), exit code 1 (data) or 2 (usage), no traceback, and never loses files it wrote before.

Each probe runs the tool's ``main`` through ``jaxhead.errors.run_cli`` in-process (the crash
probe that needs a subprocess lives in test_safe_pickle.py).
"""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from fs_testlib import disk_full
from lpips_testlib import seeded_state_dicts
from safetensors.numpy import save_file

from convert_weights import depth_anything as da_conv
from convert_weights import diffusers as sd_conv
from convert_weights import lpips as lpips_conv
from convert_weights import panohead as ph_conv
from jaxhead import render
from jaxhead.errors import run_cli
from jaxhead.models.panohead import load_panohead
from jaxhead.utils import params_io

torch = pytest.importorskip("torch")


def _probe(capsys, main, argv, code: int, *needles: str) -> str:
    """Run ``main(argv)`` via run_cli; check exit code, one ``error:`` line, needles in it."""
    capsys.readouterr()
    rc = run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    for advice in ("Traceback", "weights_only=False", "trust", "add_safe_globals"):
        assert advice not in err, err
    return lines[0]


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Damaged inputs: empty / header-cut / data-cut .safetensors, empty and hostile pickles."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.safetensors"
    save_file({"w": np.arange(4096, dtype=np.float32)}, str(good))
    data = good.read_bytes()
    files = {"empty.safetensors": b"", "header.safetensors": data[:20],
             "trunc.safetensors": data[:-100], "empty.pkl": b"", "empty.pth": b"",
             "evil.pkl": pickle.dumps({"G_ema": _System()})}
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    torch.save({"w": _System()}, d / "evil.pth")  # torch's weights_only loader refuses it
    return {Path(n).stem + Path(n).suffix: d / n for n in [*files, "evil.pth"]}


@pytest.fixture(scope="module")
def generator(tmp_path_factory, fixtures_dir) -> Path:
    dst = tmp_path_factory.mktemp("gen")
    ph_conv.convert(fixtures_dir / "panohead_tiny" / "G_ema.safetensors", dst)
    return dst


def _snapshot(d: Path) -> dict[str, bytes]:
    return {f: (d / f).read_bytes() for f in sorted(os.listdir(d))}


# ------------------------------------------------------------------------------------------
# python -m jaxhead.render
# ------------------------------------------------------------------------------------------


def test_render_bad_generator_dirs(tmp_path, capsys, generator):
    out = ["--out", tmp_path / "out"]
    _probe(capsys, render.main, ["--generator", tmp_path / "nope", *out], 1,
           "missing params.safetensors, config.json", "convert_weights.panohead")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((generator / "config.json").read_text())
    _probe(capsys, render.main, ["--generator", partial, *out], 1, partial,
           "missing params.safetensors")
    _probe(capsys, render.main, ["--generator", generator / "config.json", *out], 1,
           "is a file, expected a converted model directory")
    for cut in ("empty", "header", "trunc"):
        d = tmp_path / cut
        d.mkdir()
        (d / "config.json").write_text((generator / "config.json").read_text())
        (d / "params.safetensors").write_bytes(
            _cut((generator / "params.safetensors").read_bytes(), cut))
        _probe(capsys, render.main, ["--generator", d, *out], 1, d / "params.safetensors",
               "not a readable .safetensors file")
    assert not (tmp_path / "out").exists()


def _cut(data: bytes, how: str) -> bytes:
    return {"empty": b"", "header": data[:20], "trunc": data[: len(data) // 2]}[how]


def test_render_corrupted_or_nan_generator(tmp_path, capsys, generator):
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    data = bytearray((generator / "params.safetensors").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    (flipped / "params.safetensors").write_bytes(bytes(data))
    (flipped / "config.json").write_text((generator / "config.json").read_text())
    _probe(capsys, render.main, ["--generator", flipped, "--out", tmp_path / "o"], 1,
           flipped / "params.safetensors", "is corrupted")
    # --no-verify loads it (and stops at the next problem: an output path under a file)
    (tmp_path / "file").write_text("x")
    _probe(capsys, render.main, ["--generator", flipped, "--no-verify", "--out",
                                 tmp_path / "file" / "o"], 1, "output directory")
    nan = tmp_path / "nan"
    G, params = load_panohead(generator)
    params = jax_to_numpy(params)
    params["params"]["decoder"]["net_0"]["weight"][0, 0] = np.nan
    from jaxhead.models.panohead import save_panohead

    save_panohead(nan, G, params)
    _probe(capsys, render.main, ["--generator", nan, "--out", tmp_path / "o"], 1,
           nan / "params.safetensors", "NaN/inf values in 1 tensor(s): params/decoder/net_0/weight")


def jax_to_numpy(tree):
    return {k: jax_to_numpy(v) if isinstance(v, dict) else np.array(v) for k, v in tree.items()}


def test_render_unwritable_output_and_bad_flags(tmp_path, capsys, generator):
    (tmp_path / "file").write_text("x")
    _probe(capsys, render.main, ["--generator", generator, "--out", tmp_path / "file" / "o"], 1,
           "output directory", tmp_path / "file" / "o", "is not writable: Not a directory")
    out = tmp_path / "out"
    out.mkdir()
    (out / "seed0000_sheet.png").write_bytes(b"earlier render")
    with disk_full(0):
        _probe(capsys, render.main, ["--generator", generator, "--out", out], 1,
               f"output directory '{out}' is not writable: File too large")
    assert _snapshot(out) == {"seed0000_sheet.png": b"earlier render"}
    _probe(capsys, render.main, ["--out", out, "--frames", "5"], 2,
           "--frames must be a positive multiple of 8", "--help")
    _probe(capsys, render.main, ["--seeds", "0"], 2, "the following arguments are required: --out")


# ------------------------------------------------------------------------------------------
# python -m convert_weights.panohead
# ------------------------------------------------------------------------------------------


def test_panohead_converter_bad_sources(tmp_path, capsys, bad_files, fixtures_dir):
    dst = tmp_path / "dst"
    _probe(capsys, ph_conv.main, [tmp_path / "nope.pkl", dst], 1, "PanoHead source not found",
           tmp_path / "nope.pkl")
    _probe(capsys, ph_conv.main, [tmp_path, dst], 1, "is a directory, expected a network pickle")
    _probe(capsys, ph_conv.main, [bad_files["empty.pkl"], dst], 1, bad_files["empty.pkl"],
           "the pickle is empty or truncated")
    _probe(capsys, ph_conv.main, [bad_files["evil.pkl"], dst], 1, bad_files["evil.pkl"],
           "refusing to load global 'posix.system'")
    cfg = (fixtures_dir / "panohead_tiny" / "config.json").read_text()
    for name in ("empty.safetensors", "header.safetensors", "trunc.safetensors"):
        src = tmp_path / name
        src.write_bytes(bad_files[name].read_bytes())
        (tmp_path / "config.json").write_text(cfg)
        _probe(capsys, ph_conv.main, [src, dst], 1, src, "not a readable .safetensors file")
    assert not dst.exists()


def test_panohead_converter_unwritable_or_full_destination(tmp_path, capsys, fixtures_dir):
    src = fixtures_dir / "panohead_tiny" / "G_ema.safetensors"
    (tmp_path / "file").write_text("x")
    _probe(capsys, ph_conv.main, [src, tmp_path / "file" / "dst"], 1, "Not a directory")
    dst = tmp_path / "dst"
    ph_conv.convert(src, dst)
    before = _snapshot(dst)
    with disk_full(1 << 20):
        _probe(capsys, ph_conv.main, [src, dst], 1, dst / "params.safetensors",
               "File too large")
    assert _snapshot(dst) == before  # the earlier conversion is intact, no temporary files
    params_io.load_params(dst)


# ------------------------------------------------------------------------------------------
# python -m convert_weights.diffusers
# ------------------------------------------------------------------------------------------


def test_diffusers_converter_bad_sources(tmp_path, capsys, bad_files):
    dst = tmp_path / "dst"
    _probe(capsys, sd_conv.main, [tmp_path / "nope.safetensors", dst], 1, "source not found")
    (tmp_path / "folder").mkdir()
    _probe(capsys, sd_conv.main, [tmp_path / "folder", dst], 1,
           "neither a diffusers pipeline folder")
    for name in ("empty.safetensors", "header.safetensors", "trunc.safetensors"):
        _probe(capsys, sd_conv.main, [bad_files[name], dst], 1, bad_files[name],
               "not a readable .safetensors file")
    empty_ckpt = tmp_path / "empty.ckpt"
    empty_ckpt.write_bytes(b"")
    _probe(capsys, sd_conv.main, [empty_ckpt, dst], 1, empty_ckpt, "is empty or truncated")
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(bad_files["evil.pth"].read_bytes())
    _probe(capsys, sd_conv.main, [evil, dst], 1, evil,
           "refused by torch's weights-only loader", "posix.system")
    _probe(capsys, sd_conv.main, [evil, dst, "--unet-heads", "0"], 2, "--unet-heads")


# ------------------------------------------------------------------------------------------
# python -m convert_weights.depth_anything
# ------------------------------------------------------------------------------------------


def test_depth_anything_converter_bad_sources(tmp_path, capsys, bad_files):
    dst = tmp_path / "dst"
    _probe(capsys, da_conv.main, [tmp_path / "depth_anything_v2_vits.pth", dst], 1,
           "checkpoint file not found")
    _probe(capsys, da_conv.main, [bad_files["empty.pth"], dst], 1, bad_files["empty.pth"],
           "is empty or truncated")
    _probe(capsys, da_conv.main, [bad_files["evil.pth"], dst], 1, bad_files["evil.pth"],
           "refused by torch's weights-only loader", "posix.system")
    folder = tmp_path / "hf"
    folder.mkdir()
    _probe(capsys, da_conv.main, [folder, dst], 1, "not a transformers")
    (folder / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    (folder / "model.safetensors").write_bytes(bad_files["header.safetensors"].read_bytes())
    _probe(capsys, da_conv.main, [folder, dst], 1, folder / "model.safetensors",
           "not a readable .safetensors file")
    _probe(capsys, da_conv.main, [folder, dst, "--layers", "a,b"], 2, "--layers")
    assert not dst.exists()


# ------------------------------------------------------------------------------------------
# python -m convert_weights.lpips
# ------------------------------------------------------------------------------------------


def test_lpips_converter_bad_sources(tmp_path, capsys, bad_files):
    dst = tmp_path / "dst"
    _probe(capsys, lpips_conv.main, [dst, "--alexnet", tmp_path / "alex.pth"], 1,
           "checkpoint file not found", tmp_path / "alex.pth")
    _probe(capsys, lpips_conv.main, [dst, "--alexnet", tmp_path], 1,
           "is a directory, expected a checkpoint file")
    for name in ("empty.pth", "header.safetensors", "empty.safetensors", "trunc.safetensors"):
        _probe(capsys, lpips_conv.main, [dst, "--alexnet", bad_files[name]], 1, bad_files[name])
    _probe(capsys, lpips_conv.main, [dst, "--alexnet", bad_files["evil.pth"]], 1,
           "refused by torch's weights-only loader")
    _probe(capsys, lpips_conv.main, [dst], 2, "--alexnet")
    assert not dst.exists()


def test_lpips_converter_full_destination_keeps_earlier_output(tmp_path, capsys):
    alex, lin = seeded_state_dicts()
    src = tmp_path / "full.safetensors"
    save_file({**alex, **lin}, str(src))
    dst = tmp_path / "dst"
    assert run_cli(lpips_conv.main, ["--alexnet", str(src), str(dst)]) == 0
    before = _snapshot(dst)
    with disk_full(1 << 20):
        _probe(capsys, lpips_conv.main, ["--alexnet", src, dst], 1, dst / "params.safetensors",
               "File too large")
    assert _snapshot(dst) == before


ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = {"train": "demo.py", "evaluate": "eval_demo.py", "compare": "compare_demo.py"}


def test_config_tools_require_config_and_a_workdir(tmp_path, capsys, monkeypatch):
    """train / evaluate / compare: no ``--config`` is one usage line naming configs/demo.py
    (train used to train the demo into ./runs/demo), and an empty ``--config.workdir=`` one
    refusal (evaluate used to write into the current directory), the same in all three;
    nothing is written."""
    import importlib

    monkeypatch.chdir(tmp_path)
    lines: dict[str, set[str]] = {"no_config": set(), "empty": set()}
    for tool, cfg in DEMO_CONFIGS.items():
        main = importlib.import_module(f"jaxhead.{tool}").main
        lines["no_config"].add(_probe(capsys, main, ["--config.compilation_cache="], 2,
                                      "--config FILE is required", "configs/demo.py"))
        lines["empty"].add(_probe(capsys, main, ["--config", ROOT / "configs" / cfg,
                                                 "--config.workdir=",
                                                 "--config.compilation_cache="], 2,
                                  "workdir is empty"))
        assert list(tmp_path.iterdir()) == [], tool
    assert len(lines["no_config"]) == len(lines["empty"]) == 1, lines
