"""The PanoHead converter reads network pickles without executing anything from them."""

import collections
import os
import pickle
import sys
import types

import numpy as np
import pytest
from safetensors.numpy import load_file

from convert_weights.panohead import convert, read_source
from convert_weights.safe_pickle import UnsafePickleError, safe_load
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
