"""A restricted unpickler for StyleGAN/EG3D/PanoHead network pickles.

The official ``.pkl`` files are plain pickles of ``torch_utils.persistence`` objects: each module
carries its *source code* and the official loader ``exec``s it. Here nothing from the file is
imported or executed: persistent objects, ``torch.nn`` containers and the training code's
classes become inert :class:`Stub` records of their pickled state, and tensors are rebuilt
from their raw bytes into numpy arrays (no torch needed). Any other global the pickle asks for
(``os.system``, ``builtins.eval``, ...) is refused with :class:`UnsafePickleError`.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allowlist."""


class Stub:
    """Inert stand-in for a class from the pickle (its state is kept, nothing is run)."""

    _stub_module = "?"
    _stub_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stub_args = args
        self.__dict__["_stub_state"] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__["_stub_state"] = state if isinstance(state, dict) else {"state": state}

    @property
    def state(self) -> dict[str, Any]:
        return self.__dict__.get("_stub_state", {})

    def __repr__(self) -> str:
        return f"<Stub {self._stub_module}.{self._stub_name}>"


class PersistentObject(Stub):
    """A ``torch_utils.persistence`` object: ``meta`` has class_name, module_src, state."""

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.meta = meta
        self._stub_module = "persistence"
        self._stub_name = str(meta.get("class_name", "?"))
        self.__dict__["_stub_state"] = dict(meta.get("state", {}))

    def __repr__(self) -> str:
        return f"<PersistentObject {self._stub_name}>"


class EasyDict(dict):
    """``dnnlib.util.EasyDict`` as a plain dict (attribute access included)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


_STUB_CACHE: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUB_CACHE:
        _STUB_CACHE[key] = type(name, (Stub,), {"_stub_module": module, "_stub_name": name})
    return _STUB_CACHE[key]


# Classes from these namespaces are replaced by inert stubs (never imported).
_STUB_PREFIXES = ("training.", "torch_utils.", "torch.nn.modules.", "dnnlib.", "metrics.")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool", "float", "double", "half", "long", "int"}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _storage_bytes_to_array(raw: bytes, dtype: Any) -> np.ndarray:
    if dtype == "bfloat16":
        u = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        return u.view(np.float32)
    return np.frombuffer(raw, dtype).copy()


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    *unused: Any) -> np.ndarray:
    if not isinstance(storage, np.ndarray):
        raise UnsafePickleError("tensor storage is not raw data")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return storage[offset].copy()
    need = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) + 1
    if min(size) > 0 and need > storage.size:
        raise UnsafePickleError("tensor view exceeds its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                           tuple(st * storage.itemsize for st in stride))
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    return data


class _LegacyStorageUnpickler(pickle.Unpickler):
    """Reads the main record of a legacy (non-zip) ``torch.save`` of a storage."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"storage record references {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError("bad storage type in persistent id")
        ref = {"key": str(key), "dtype": stype.dtype, "numel": int(numel), "array": None}
        self.refs.append(ref)
        return ref


def _load_storage_from_bytes(b: bytes) -> np.ndarray:
    """``torch.storage._load_from_bytes``: a legacy ``torch.save`` stream of one storage."""
    if b[:2] == b"PK":
        raise UnsafePickleError("zip-format storage records are not supported; re-save the "
                                "checkpoint with torch.save or convert it to .safetensors")
    f = io.BytesIO(b)
    restricted = _RestrictedUnpickler
    for _ in range(3):  # magic number, protocol version, sys info: plain data
        restricted(f).load()
    u = _LegacyStorageUnpickler(f)
    u.refs = []
    obj = u.load()
    keys = restricted(f).load()
    by_key = {r["key"]: r for r in u.refs}
    for key in keys:
        r = by_key[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        itemsize = 2 if r["dtype"] == "bfloat16" else np.dtype(r["dtype"]).itemsize
        raw = f.read(numel * itemsize)
        if len(raw) != numel * itemsize:
            raise pickle.UnpicklingError("truncated storage data")
        r["array"] = _storage_bytes_to_array(raw, r["dtype"])
    if not isinstance(obj, dict) or obj.get("array") is None:
        raise UnsafePickleError("storage record holds no data")
    return obj["array"]


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict):
        raise UnsafePickleError("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise UnsafePickleError(f"unsupported persistent object type {meta.get('type')!r}")
    return PersistentObject(meta)


def _safe_reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` restricted to stub classes on ``object``."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not object:
        raise UnsafePickleError("copyreg._reconstructor on a non-stub class")
    return cls.__new__(cls)


def _numpy_scalar(dtype: Any, data: bytes | None = None) -> Any:
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError("ndarray subclass in pickle")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): lambda s, enc="latin1": s.encode(enc),
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): tuple,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_DTYPES:
            return f"torch.{name}"
        if module.startswith(_STUB_PREFIXES) and name[:1].isupper():
            return _stub_class(module, name)
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': the pickle tries to use something "
            "other than network data (it could run code). Only tensors, containers and "
            "persistent network records are accepted.")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"unexpected persistent id in pickle: {pid!r}")


def safe_load(f: BinaryIO) -> Any:
    """Unpickle ``f`` with the restricted allowlist (see module docstring)."""
    return _RestrictedUnpickler(f).load()


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """PyTorch-style ``state_dict()`` of a stubbed module: parameters and persistent buffers."""
    if not isinstance(obj, Stub):
        raise TypeError(f"expected an unpickled module record, got {type(obj).__name__}")
    st = obj.state
    out: dict[str, np.ndarray] = {}
    non_persistent = set(st.get("_non_persistent_buffers_set", ()) or ())
    for name, v in (st.get("_parameters") or {}).items():
        if v is not None:
            out[prefix + name] = np.asarray(v)
    for name, v in (st.get("_buffers") or {}).items():
        if v is not None and name not in non_persistent:
            out[prefix + name] = np.asarray(v)
    for name, child in (st.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, prefix + name + "."))
    return out


def init_kwargs(obj: Any) -> dict[str, Any]:
    """Constructor kwargs stored by ``torch_utils.persistence`` (``_init_kwargs``)."""
    kw = obj.state.get("_init_kwargs")
    if kw is None:
        raise ValueError("the network record has no stored constructor kwargs (_init_kwargs)")
    return _plain(kw)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
