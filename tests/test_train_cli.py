"""``python -m jaxhead.train``: every bad input is one line on stderr and exit code 2 (usage)
or 1 (data), before any compute; nothing already in the workdir is lost."""

import json

import pytest

from jaxhead import train


def _run(capsys, *argv):
    # no persistent compilation cache from these in-process runs (a global JAX setting)
    rc = train.main([*argv, "--config.compilation_cache="])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("argv, code, needle", [
    (["--config", "configs/demo.py", "--config.no_such_key=1"], 2,
     "no_such_key' (every field is documented in configs/base.py"),
    (["--config", "configs/nope.py"], 2, "config file not found"),
    (["--config", "pyproject.toml"], 2, "must be a Python file"),
    (["--config", "configs/demo.py", "--config.steps=2.5"], 2, "config.steps"),
    (["--config", "configs/demo.py", "--config.num_devices=-1"], 2, "num_devices"),
    (["--config", "configs/demo.py", "--config.optimizer.lr=nan"], 2, "optimizer.lr=nan"),
    (["--config", "configs/demo.py", "--config.guidance_scale=inf"], 2, "guidance_scale"),
    (["--config", "configs/demo.py", "--config.optimizer.b2=1.5"], 2, "b2"),
    (["--config", "configs/demo.py", "--config.truncation_cutoff=-5"], 2, "truncation_cutoff"),
    (["--config", "configs/demo.py", "--config.objective=nope"], 2, "objective='nope'"),
    (["--config", "configs/demo.py", "--bogus"], 2, "bogus"),
    (["--config.steps=1"], 2, "--config FILE is required"),
])
def test_bad_flags_are_one_line(capsys, argv, code, needle):
    rc, err = _run(capsys, *argv)
    assert rc == code and len(err) == 1 and err[0].startswith("error:"), err
    assert needle in err[0], err


def test_a_json_config_is_refused(capsys, tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"steps": 1}))
    rc, err = _run(capsys, "--config", str(p))
    assert rc == 2 and len(err) == 1 and "Python file" in err[0]


def test_workdir_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "run"
    f.write_text("not a directory")
    rc, err = _run(capsys, "--config", "configs/demo.py", f"--config.workdir={f}")
    assert rc == 1 and len(err) == 1 and err[0].startswith("error:") and str(f) in err[0]
    assert f.read_text() == "not a directory"


def test_missing_weights_list_each_piece(capsys, tmp_path):
    rc, err = _run(capsys, "--config", "configs/pixar.py",
                   f"--config.models.generator={tmp_path / 'g'}",
                   f"--config.models.sd={tmp_path / 'sd'}", f"--config.workdir={tmp_path / 'w'}")
    text = "\n".join(err)
    assert rc == 1 and err[0].startswith("error: missing converted weights")
    for cmd in ("convert_weights.panohead", "convert_weights.diffusers",
                "convert_weights.depth_anything", "convert_weights.lpips"):
        assert cmd in text
    assert "Traceback" not in text
