"""Converted-model files: the content hash and finiteness checks on loading, clear errors for
damaged files, and saves that never lose an earlier model."""

import errno
import json
import os

import numpy as np
import pytest
from fs_testlib import disk_full
from safetensors.numpy import save_file

from jaxhead.errors import DataError, MissingWeightsError
from jaxhead.utils import params_io as pio


def _params(seed: int = 0, n: int = 4096) -> dict:
    rng = np.random.default_rng(seed)
    return {"enc": {"w": rng.standard_normal((n // 64, 64), dtype=np.float32),
                    "b": np.zeros(64, np.float32)},
            "step": np.array(7, np.int64), "mask": np.array([True, False])}


def _flip_middle(path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_save_records_hash_and_load_round_trips(tmp_path):
    p = _params()
    pio.save_params(tmp_path / "m", p, {"net": "x"})
    stored = json.loads((tmp_path / "m" / pio.CONFIG_FILE).read_text())
    assert stored[pio.HASH_KEY] == pio.params_digest(pio.flatten(p))
    got, cfg = pio.load_params(tmp_path / "m")
    assert cfg == {"net": "x"}  # the hash is not handed to model configs
    for k, v in pio.flatten(p).items():
        np.testing.assert_array_equal(pio.flatten(got)[k], v)
    assert sorted(os.listdir(tmp_path / "m")) == [pio.CONFIG_FILE, pio.PARAMS_FILE]


def test_digest_covers_keys_dtypes_shapes_and_bytes_not_layout():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = pio.params_digest({"a": a})
    assert pio.params_digest({"a": np.asfortranarray(a)}) == base
    assert pio.params_digest({"a": a.astype(">f4")}) == base  # byte order is normalised
    assert pio.params_digest({"b": a}) != base
    assert pio.params_digest({"a": a.reshape(4, 3)}) != base
    assert pio.params_digest({"a": a.view(np.int32)}) != base
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(100))
    assert pio.params_digest({"a": b}) != base


def test_flipped_bytes_are_refused_unless_verify_is_off(tmp_path):
    d = tmp_path / "m"
    pio.save_params(d, _params(), {})
    _flip_middle(d / pio.PARAMS_FILE)
    with pytest.raises(DataError, match="is corrupted") as e:
        pio.load_params(d)
    assert str(d / pio.PARAMS_FILE) in str(e.value) and "\n" not in str(e.value)
    pio.load_params(d, verify=False)


def test_non_finite_tensors_are_named(tmp_path):
    p = _params()
    p["enc"]["w"][3, 5] = np.nan
    p["enc"]["b"][0] = -np.inf
    pio.save_params(tmp_path / "m", p, {})  # the hash matches: the values were saved so
    with pytest.raises(DataError, match=r"NaN/inf values in 2 tensor\(s\): enc/b, enc/w"):
        pio.load_params(tmp_path / "m")
    pio.load_params(tmp_path / "m", verify=False)
    # large finite values whose sum overflows are not mistaken for inf
    big = {"w": np.full(4, 3e38, np.float32), "h": np.full(8, 6e4, np.float16)}
    pio.save_params(tmp_path / "big", big, {})
    pio.load_params(tmp_path / "big")


def test_files_without_hash_still_load(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    save_file(pio.flatten(_params()), str(d / pio.PARAMS_FILE))
    (d / pio.CONFIG_FILE).write_text(json.dumps({"net": "x"}))
    assert pio.load_params(d)[1] == {"net": "x"}
    save_file({"w": np.array([1.0, np.nan], np.float32)}, str(d / pio.PARAMS_FILE))
    with pytest.raises(DataError, match="NaN/inf values in 1 tensor\\(s\\): w"):
        pio.load_params(d)


@pytest.mark.parametrize("cut", ["empty", "header", "data"])
def test_truncated_files_are_named(tmp_path, cut):
    d = tmp_path / "m"
    pio.save_params(d, _params(), {})
    data = (d / pio.PARAMS_FILE).read_bytes()
    (d / pio.PARAMS_FILE).write_bytes({"empty": b"", "header": data[:20],
                                       "data": data[:-100]}[cut])
    for read in (pio.load_params, lambda d: pio.read_safetensors(d / pio.PARAMS_FILE)):
        with pytest.raises(DataError, match="not a readable .safetensors file") as e:
            read(d)
        assert str(d / pio.PARAMS_FILE) in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(MissingWeightsError, match="missing params.safetensors, config.json "
                       r"\(expected a converted jaxhead model\); create it with: make-it"):
        pio.load_params(tmp_path / "none", convert_hint="make-it")
    (tmp_path / "f").write_text("x")
    with pytest.raises(MissingWeightsError, match="is a file, expected a converted model"):
        pio.load_params(tmp_path / "f")
    pio.save_params(tmp_path / "m", _params(), {})
    (tmp_path / "m" / pio.CONFIG_FILE).write_text("{oops")
    with pytest.raises(DataError, match="config.json: not valid JSON"):
        pio.load_params(tmp_path / "m")


def _snapshot(d):
    return {f: (d / f).read_bytes() for f in sorted(os.listdir(d))}


def test_failed_save_keeps_the_earlier_model_and_removes_temp_files(tmp_path, monkeypatch):
    d = tmp_path / "m"
    pio.save_params(d, _params(0, n=1024), {"v": 1})
    before = _snapshot(d)
    # disk full while writing the parameters
    with disk_full(8192), pytest.raises(DataError, match="cannot write .*File too large"):
        pio.save_params(d, _params(1, n=65536), {"v": 2})
    assert _snapshot(d) == before
    # the config rename fails after the parameters were renamed: the old pair is restored
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(pio.CONFIG_FILE):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Read-only"):
        pio.save_params(d, _params(2, n=1024), {"v": 3})
    monkeypatch.undo()
    assert _snapshot(d) == before
    assert pio.load_params(d)[1] == {"v": 1}


def test_write_text_atomic_keeps_old_file_on_failure(tmp_path):
    f = tmp_path / "a.json"
    pio.write_text_atomic(f, "old")
    with disk_full(16), pytest.raises(OSError):
        pio.write_text_atomic(f, "x" * 100)
    assert f.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
