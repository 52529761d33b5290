"""The PanoHead converter reads network pickles without executing anything from them."""

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from convert_weights.panohead import convert, read_source
from convert_weights.safe_pickle import UnsafePickleError, safe_load
from jaxhead.errors import DataError
from jaxhead.utils import params_io

torch = pytest.importorskip("torch")


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("fn", [os.system, eval, exec, __import__])
def test_malicious_pickle_is_refused(tmp_path, fn):
    marker = tmp_path / "pwned"
    payload = {"G_ema": _Evil(fn, f"open({str(marker)!r}, 'w').write('x')"
                              if fn in (eval, exec) else f"touch {marker}")}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        read_source(path)
    assert not marker.exists()


def test_malicious_object_nested_in_tensor_data_is_refused(tmp_path):
    # A "tensor rebuild" whose storage is an attacker-chosen callable result.
    class T:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (_Evil(os.system, "true"), 0, (1,), (1,),
                                                      False, collections.OrderedDict()))

    with pytest.raises(UnsafePickleError):
        safe_load(__import__("io").BytesIO(pickle.dumps({"x": T()})))


# --- a persistence-style pickle, built the way torch_utils.persistence writes them ---------

def _fake_modules():
    """Register stand-ins for the modules a network pickle references, so pickle can write
    references to them. The unpickler under test must never import or call them."""
    pers = types.ModuleType("torch_utils.persistence")
    calls = []

    def _reconstruct_persistent_obj(meta):  # what the official loader would run
        calls.append(meta)
        raise AssertionError("official reconstruct hook was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    tu = types.ModuleType("torch_utils")
    tu.persistence = pers
    dn_util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    dn_util.EasyDict = EasyDict
    dn = types.ModuleType("dnnlib")
    dn.util = dn_util
    mods = {"torch_utils": tu, "torch_utils.persistence": pers, "dnnlib": dn,
            "dnnlib.util": dn_util}
    return mods, pers, EasyDict, calls


class _Persistent:
    """Pickles as ``_reconstruct_persistent_obj(meta)`` with source code and state."""

    def __init__(self, reconstruct, class_name, state):
        self._r, self.class_name, self.state = reconstruct, class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=4, class_name=self.class_name,
                    module_src="raise SystemExit('module source was executed')\n",
                    state=self.state)
        return (self._r, (meta,), None)


def _module_state(params, buffers, modules, **extra):
    return {"training": False, "_parameters": collections.OrderedDict(params),
            "_buffers": collections.OrderedDict(buffers),
            "_non_persistent_buffers_set": set(), "_modules": collections.OrderedDict(modules),
            "_forward_hooks": collections.OrderedDict(), **extra}


def _build_tree(sd, reconstruct):
    """Nested persistent objects from a flat state dict (decoder.net as a real nn.Sequential
    holding a persistent layer, a real Softplus and another persistent layer)."""
    tree: dict = {}
    for k, v in sd.items():
        node = tree
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v

    def make(name, node):
        params, buffers, modules = {}, {}, {}
        for k, v in node.items():
            if isinstance(v, dict):
                modules[k] = make(k, v)
            elif k in ("w_avg", "noise_const", "resample_filter"):
                buffers[k] = torch.from_numpy(v)
            else:
                params[k] = torch.nn.Parameter(torch.from_numpy(v), requires_grad=False)
        if name == "net":  # OSGDecoder.net is a torch.nn.Sequential (not persistent)
            seq = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Softplus(),
                                      torch.nn.Identity())
            seq._modules["0"] = modules["0"]
            seq._modules["2"] = modules["2"]
            return seq
        return _Persistent(reconstruct, name, _module_state(params, buffers, modules))

    return make("TriPlaneGenerator", tree)


def test_persistence_style_pickle_converts_like_safetensors(tmp_path, fixtures_dir):
    import json

    src = fixtures_dir / "panohead_tiny"
    sd = load_file(str(src / "G_ema.safetensors"))
    kwargs = json.loads((src / "config.json").read_text())["init_kwargs"]
    mods, pers, EasyDict, calls = _fake_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        g = _build_tree(sd, pers._reconstruct_persistent_obj)
        g.state["_init_kwargs"] = EasyDict(kwargs)
        g.state["_init_args"] = ()
        g.state["neural_rendering_resolution"] = 32
        g.state["rendering_kwargs"] = EasyDict(kwargs["rendering_kwargs"])
        d = _Persistent(pers._reconstruct_persistent_obj, "Discriminator",
                        _module_state({"w": torch.nn.Parameter(torch.ones(3, 2))}, {}, {}))
        data = {"G": g, "D": d, "G_ema": g, "augment_pipe": None,
                "training_set_kwargs": EasyDict(resolution=512, path="x.zip")}
        blob = pickle.dumps(data, protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    assert b"torch_utils.persistence" in blob and b"_reconstruct_persistent_obj" in blob
    assert b"torch.nn.modules.container" in blob  # the real Sequential went in as a class ref
    pkl = tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(blob)
    assert "torch_utils" not in sys.modules  # nothing to fall back on: stubs only
    out_pkl = convert(pkl, tmp_path / "from_pkl")
    out_st = convert(src / "G_ema.safetensors", tmp_path / "from_st")
    assert not calls
    a, cfg_a = params_io.load_params(out_pkl)
    b, cfg_b = params_io.load_params(out_st)
    fa, fb = params_io.flatten(a), params_io.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert cfg_a["panohead"] == cfg_b["panohead"]
    assert cfg_a["panohead"]["neural_rendering_resolution"] == 32


def test_pickle_without_G_ema_is_a_clear_error(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"G": collections.OrderedDict()}))
    with pytest.raises(ValueError, match="G_ema"):
        read_source(p)


# --- hostile tensor / storage / numpy records built only from allowed globals ---------------

_MARK = object()


def _storage_stream(payload: bytes, numel_declared: int, numel_data: int | None = None, *,
                    stype=None, magic: int = 0x1950A86A20F9469CFC6C, key="0") -> bytes:
    """A legacy ``torch.save`` stream of one storage, written record by record the way
    torch.serialization writes it (so every declared size can be chosen)."""
    f = io.BytesIO()
    for header in (magic, 1001, {"protocol_version": 1001, "little_endian": True,
                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, f, protocol=2)
    stype = stype or torch.FloatStorage

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", stype, "0", "cpu", numel_declared) if obj is _MARK else None

    P(f, protocol=2).dump(_MARK)
    pickle.dump([key], f, protocol=2)
    f.write(struct.pack("<q", numel_declared if numel_data is None else numel_data))
    f.write(payload)
    return f.getvalue()


class _Storage:
    """Pickles as ``torch.storage._load_from_bytes(stream)``."""

    def __init__(self, stream: bytes):
        self.stream = stream

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.stream,))


class _Tensor:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Call:
    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


_ARANGE12 = _Storage(_storage_stream(np.arange(12, dtype=np.float32).tobytes(), 12))


def _load(obj):
    return safe_load(io.BytesIO(pickle.dumps(obj, protocol=2)), name="x.pkl")


def test_crafted_storage_stream_matches_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        theirs = _load(_Tensor(torch.arange(12.0).storage(), 0, (12,), (1,)))
    np.testing.assert_array_equal(_load(_Tensor(_ARANGE12, 0, (12,), (1,))), theirs)


@pytest.mark.parametrize("offset,size,stride,match", [
    (0, (4096,), (-1,), "negative stride"),
    (0, (4,), (-(1 << 40),), "negative stride"),
    (-1, (2,), (1,), "negative offset"),
    (0, (-1,), (1,), "negative size"),
    (0, (1 << 62, 1 << 62), (1, 1), "size out of range"),
    (0, (1 << 40, 1 << 40), (1, 1), "past the end of the storage"),  # extent beyond int64
    (0, (1 << 40, 1 << 40), (0, 0), "repeats its storage"),
    (0, (13,), (1,), r"reads up to element 12, past the end"),
    (4, (5,), (2,), "past the end of the storage"),
    (13, (0,), (1,), "offset past the end"),
    (0, (2.5,), (1,), "size is not an integer"),
    (0, (2,), (1, 1), "differ in length"),
    (0, (1,) * 33, (1,) * 33, "more than 32 dimensions"),
])
def test_tensor_views_outside_their_storage_are_refused(offset, size, stride, match):
    with pytest.raises(UnsafePickleError, match=match) as e:
        _load({"w": _Tensor(_ARANGE12, offset, size, stride)})
    assert str(e.value).startswith("'x.pkl': tensor record refused")


@pytest.mark.parametrize("storage", [collections.OrderedDict(), "raw", 3])
def test_tensor_storage_must_be_raw_data(storage):
    with pytest.raises(UnsafePickleError, match="not raw tensor data"):
        _load(_Tensor(storage, 0, (1,), (1,)))


def test_valid_views_load_like_torch():
    ref = torch.arange(12.0)
    for offset, size, stride in [(2, (4,), (1,)), (1, (3, 2), (1, 3)), (0, (4, 3), (1, 4)),
                                 (0, (0, 5), (1, 1)), (12, (0,), (1,)), (11, (), ()),
                                 (0, (4, 3), (0, 1)), (3, (3, 1), (3, 100))]:
        got = _load(_Tensor(_ARANGE12, offset, size, stride))
        want = torch.as_strided(ref, size, stride, offset).numpy()
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=str((offset, size, stride)))
    # tensors pickled by torch itself: transposed, sliced, expanded, empty, 0-d, all dtypes
    ts = {"t": torch.arange(12.0).reshape(3, 4).t(), "s": torch.arange(12.0)[5:9],
          "x": torch.arange(3.0).expand(4, 3), "e": torch.zeros(0, 3), "z": torch.tensor(3.5),
          "b": torch.tensor([True, False]), "l": torch.arange(5), "h": torch.ones(3).half(),
          "bf": torch.arange(4.0).bfloat16()}
    got = safe_load(io.BytesIO(pickle.dumps(ts)))
    for k, t in ts.items():
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got[k].shape == want.shape and got[k].dtype == want.dtype, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)


@pytest.mark.parametrize("stream,match", [
    (_storage_stream(b"\0" * 16, 1 << 61, 4), "declares 2305843009213693952 elements but its "
     "data says 4"),
    (_storage_stream(b"\0" * 16, 1 << 40), r"only 16 bytes follow \(truncated\)"),
    (_storage_stream(b"\0" * 10, 3), "12 bytes.*only 10 bytes follow"),  # not a multiple of 4
    (_storage_stream(b"\0" * 16, 4, -1), "declares 4 elements but its data says -1"),
    (_storage_stream(b"\0" * 16, -4), "invalid element count -4"),
    (_storage_stream(b"\0" * 16, 4, key="9"), "unknown or repeated key"),
    (_storage_stream(b"\0" * 16, 4, magic=1), "legacy magic number"),
    (_storage_stream(b"\0" * 16, 2, stype=torch.ComplexFloatStorage), "unknown tensor dtype"),
    (_storage_stream(b"", 4)[:40], "malformed storage record"),
    (b"PK\x03\x04", "zip-format storage"),
], ids=["huge-declared-count", "truncated-data", "bytes-not-multiple-of-itemsize",
        "negative-data-count", "negative-declared-count", "unknown-key", "bad-magic",
        "unknown-dtype", "cut-header", "zip-record"])
def test_storage_records_with_bad_sizes_are_refused(stream, match):
    with pytest.raises(UnsafePickleError, match=match):
        _load(_Tensor(_Storage(stream), 0, (1,), (1,)))


def test_numpy_and_builtin_records_are_checked():
    from numpy._core.multiarray import _reconstruct

    ok = _load({"a": np.arange(6.0).reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3), ">i4")),
                "s": np.float32(2.5)})
    np.testing.assert_array_equal(ok["a"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(ok["f"], np.ones((2, 3)))
    assert ok["s"] == np.float32(2.5)
    bad = [(np.array(["a"]), "numpy dtype U1 is not a plain numeric type"),
           (np.array([None]), "numpy dtype O8"),
           (_Call(_reconstruct, np.ndarray, (0,), b"b",
                  state=(1, (1 << 40,), np.dtype("f4"), False, b"1234")),
            "needs 4398046511104 bytes, the file has 4"),
           (_Call(np.ndarray, (1 << 40,)), r"calls numpy.ndarray\(...\) directly"),
           (_Call(bytearray, 1 << 40), r"bytearray\(<size>\)")]
    for obj, match in bad:
        with pytest.raises(UnsafePickleError, match=match):
            _load(obj)


def test_malformed_pickles_give_one_clear_error():
    with pytest.raises(UnsafePickleError, match="too large for memory"):
        safe_load(io.BytesIO(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60)))
    with pytest.raises(DataError, match="empty or truncated"):
        safe_load(io.BytesIO(b""))
    with pytest.raises(UnsafePickleError, match="malformed pickle"):
        safe_load(io.BytesIO(b"\x80\x04K\x01R."))  # REDUCE on an int


def test_module_records_must_hold_tensors(tmp_path):
    stub = _load(_Call(collections.OrderedDict))  # any allowed record will do as a value
    from convert_weights.safe_pickle import Stub, module_state_dict

    m = Stub()
    m.__setstate__({"_parameters": {"w": stub}})
    with pytest.raises(DataError, match="w is a OrderedDict, not a tensor"):
        module_state_dict(m)
    m.__setstate__({"_modules": {"self": m}})
    with pytest.raises(DataError, match="cycle"):
        module_state_dict(m)


def test_convert_cli_refuses_hostile_tensor_without_crashing(tmp_path):
    """Before the bounds checks this read 8 TB outside the storage: segfault (exit 139)."""
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": _Tensor(_ARANGE12, 0, (4,), (-(1 << 40),))}))
    r = subprocess.run([sys.executable, "-m", "convert_weights.panohead", str(bad),
                        str(tmp_path / "out")], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1], timeout=300)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "negative stride" in lines[0]
    assert str(bad) in lines[0]
    assert not (tmp_path / "out").exists()
