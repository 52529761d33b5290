"""A restricted unpickler for StyleGAN/EG3D/PanoHead network pickles.

The official ``.pkl`` files are plain pickles of ``torch_utils.persistence`` objects: each module
carries its *source code* and the official loader ``exec``s it. Here nothing from the file is
imported or executed: persistent objects, ``torch.nn`` containers and the training code's
classes become inert :class:`Stub` records of their pickled state, and tensors are rebuilt
from their raw bytes into numpy arrays (no torch needed). Any other global the pickle asks for
(``os.system``, ``builtins.eval``, ...) is refused with :class:`UnsafePickleError`.

Every size in the file is untrusted: tensor views are checked to lie inside their storage
(non-negative offset / sizes / strides, extent computed with Python ints), storages to hold the
bytes they declare, numpy records to use plain numeric dtypes, and any malformed record is
refused with one error naming the problem (never a crash or an out-of-bounds read).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

from jaxhead.errors import DataError


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """The pickle is refused: it references a global outside the allowlist, or one of its
    records (tensor view, storage, numpy array) is malformed or out of bounds (exit code 1)."""


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
# numpy dtypes a numpy record may use, as ``np.dtype.__reduce__`` spells them (no object,
# structured, void or string dtypes).
_NUMPY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4",
                           "f8", "c8", "c16"})
_MAX_INDEX = 1 << 62  # bound on every size / stride / offset / element count read from a file
_MAX_NDIM = 32
_MAX_EXPAND_BYTES = 1 << 30  # a zero-stride view may repeat its storage up to this many bytes
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's legacy-format magic number
_LEGACY_PROTOCOL = 1001


def _short(x: Any, n: int = 80) -> str:
    r = x if isinstance(x, str) else repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


def _storage_bytes_to_array(raw: bytes, dtype: Any) -> np.ndarray:
    """Raw little-endian storage bytes (a multiple of the itemsize) -> 1-D array; bfloat16 is
    widened to float32 and bool bytes are normalised to 0/1."""
    if dtype == "bfloat16":
        u = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        return u.view(np.float32)
    if dtype is np.bool_:
        return np.frombuffer(raw, np.uint8) != 0
    return np.frombuffer(raw, dtype).copy()


def _tensor_view(storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
    """Copy of the strided view ``storage[offset + sum(i_k * stride_k)]`` of shape ``size``
    (offset / strides in elements), after checking that every element it reads lies inside
    ``storage``. Raises :class:`UnsafePickleError` naming the problem otherwise."""
    if (not isinstance(storage, np.ndarray) or storage.ndim != 1
            or not storage.flags.c_contiguous or storage.dtype.kind not in "biufc"):
        raise UnsafePickleError("tensor record refused: its storage is not raw tensor data")
    n = storage.size
    where = (f"(offset {_short(offset)}, size {_short(size)}, stride {_short(stride)}, "
             f"storage of {n} elements)")

    def bad(why: str) -> UnsafePickleError:
        return UnsafePickleError(f"tensor record refused: {why} {where}")

    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise bad("size and stride must be tuples")
    if len(size) != len(stride):
        raise bad("size and stride differ in length")
    if len(size) > _MAX_NDIM:
        raise bad(f"more than {_MAX_NDIM} dimensions")
    for what, values in (("offset", (offset,)), ("size", size), ("stride", stride)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(f"{what} is not an integer")
            if v < 0:
                raise bad(f"negative {what}")
            if v >= _MAX_INDEX:
                raise bad(f"{what} out of range")
    offset = int(offset)
    size = tuple(int(v) for v in size)
    stride = tuple(int(v) for v in stride)
    if offset > n:
        raise bad("offset past the end of the storage")
    numel = math.prod(size)  # Python ints: exact, cannot overflow
    if numel == 0:
        return np.zeros(size, storage.dtype)
    end = offset + sum((k - 1) * st for k, st in zip(size, stride, strict=True)) + 1
    if end > n:
        raise bad(f"view reads up to element {end - 1}, past the end of the storage")
    if numel > n and numel * storage.itemsize > _MAX_EXPAND_BYTES:
        raise bad(f"view repeats its storage into {numel} elements")
    byte_strides = tuple(st * storage.itemsize if k > 1 else 0
                         for k, st in zip(size, stride, strict=True))
    view = np.lib.stride_tricks.as_strided(storage[offset:end], size, byte_strides,
                                           writeable=False)
    return np.array(view)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any,
                    *unused: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor(_v2)``: the checked view of a storage as an ndarray."""
    return _tensor_view(storage, offset, size, stride)


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    return data


class _PlainDataUnpickler(pickle.Unpickler):
    """Plain data only (ints, strings, lists, dicts): the header records of a storage stream."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"storage record header references {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("storage record header holds a persistent id")


class _LegacyStorageUnpickler(pickle.Unpickler):
    """Reads the main record of a legacy (non-zip) ``torch.save`` of a storage."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self.refs: list[dict[str, Any]] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise UnsafePickleError(f"unknown tensor dtype: storage type torch.{name} is not "
                                    f"supported ({', '.join(_STORAGE_DTYPES)})")
        raise UnsafePickleError(f"storage record references {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {_short(pid)}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError("bad storage type in persistent id")
        if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel < _MAX_INDEX:
            raise UnsafePickleError(f"storage declares an invalid element count {_short(numel)}")
        ref = {"key": str(key), "dtype": stype.dtype, "itemsize": stype.itemsize,
               "numel": numel, "array": None}
        self.refs.append(ref)
        return ref


def _load_storage_from_bytes(b: Any) -> np.ndarray:
    """``torch.storage._load_from_bytes``: a legacy ``torch.save`` stream of one storage."""
    if not isinstance(b, (bytes, bytearray)):
        raise UnsafePickleError("storage record is not a byte string")
    if b[:2] == b"PK":
        raise UnsafePickleError("zip-format storage records are not supported; re-save the "
                                "checkpoint with torch.save or convert it to .safetensors")
    f = io.BytesIO(b)
    try:
        if _PlainDataUnpickler(f).load() != _LEGACY_MAGIC:
            raise UnsafePickleError("storage record lacks torch's legacy magic number")
        if _PlainDataUnpickler(f).load() != _LEGACY_PROTOCOL:
            raise UnsafePickleError("storage record has an unsupported protocol version")
        info = _PlainDataUnpickler(f).load()
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise UnsafePickleError("big-endian storage records are not supported")
        u = _LegacyStorageUnpickler(f)
        obj = u.load()
        keys = _PlainDataUnpickler(f).load()
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, UnsafePickleError):
            raise
        why = _short(str(e) or type(e).__name__)
        raise UnsafePickleError(f"malformed storage record ({why})") from e
    if not isinstance(keys, list):
        raise UnsafePickleError("storage record has no key list")
    by_key = {r["key"]: r for r in u.refs}
    for key in keys:
        r = by_key.get(str(key))
        if r is None or r["array"] is not None:
            raise UnsafePickleError(
                f"storage record lists an unknown or repeated key {_short(key)}")
        head = f.read(8)
        if len(head) != 8:
            raise UnsafePickleError("truncated storage data")
        (numel,) = struct.unpack("<q", head)
        if numel != r["numel"]:
            raise UnsafePickleError(
                f"storage declares {r['numel']} elements but its data says {numel}")
        nbytes = numel * r["itemsize"]
        left = len(b) - f.tell()
        if nbytes > left:
            raise UnsafePickleError(f"storage declares {numel} elements ({nbytes} bytes) but "
                                    f"only {left} bytes follow (truncated)")
        r["array"] = _storage_bytes_to_array(f.read(nbytes), r["dtype"])
    if not any(obj is r for r in u.refs) or obj["array"] is None:
        raise UnsafePickleError("storage record holds no data")
    return obj["array"]


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict):
        raise UnsafePickleError("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise UnsafePickleError(f"unsupported persistent object type {_short(meta.get('type'))}")
    return PersistentObject(meta)


def _safe_reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` restricted to stub classes on ``object``."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not object:
        raise UnsafePickleError("copyreg._reconstructor on a non-stub class")
    return cls.__new__(cls)


class _NumpyDType:
    """``numpy.dtype(spec, align, copy)`` from a pickle, limited to plain numeric types; the
    byte order arrives through ``__setstate__``. ``.dtype`` is the real numpy dtype."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or spec not in _NUMPY_DTYPES:
            raise UnsafePickleError(f"numpy dtype {_short(spec)} is not a plain numeric type")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in "<>|="
                and all(x is None for x in state[2:5])):
            raise UnsafePickleError("malformed or structured numpy dtype record")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NdarrayRef:
    """``numpy.ndarray`` as a pickle names it: only a marker for ``_reconstruct``. Calling it
    would allocate (or view) memory of a size the file chooses, so that is refused."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError("the pickle calls numpy.ndarray(...) directly")


_NDARRAY = _NdarrayRef()


class _PickledArray(np.ndarray):
    """A numpy array record; its state is checked before numpy's ``__setstate__`` sees it."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise UnsafePickleError("malformed numpy array record")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _NumpyDType):
            raise UnsafePickleError("numpy array record without a plain numeric dtype")
        if (not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or any(
                isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_INDEX
                for v in shape)):
            raise UnsafePickleError(f"numpy array record has an invalid shape {_short(shape)}")
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError("numpy array record data is not raw bytes")
        need = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != need:
            raise UnsafePickleError(f"numpy array record of shape {shape} {dtype.dtype} needs "
                                    f"{need} bytes, the file has {len(raw)}")
        super().__setstate__((1, shape, dtype.dtype, bool(fortran), bytes(raw)))


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _NumpyDType):
        raise UnsafePickleError("numpy scalar record without a plain numeric dtype")
    if data is None:
        return dtype.dtype.type()
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar record of type {dtype.dtype} has malformed data")
    return np.frombuffer(bytes(data), dtype=dtype.dtype)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct``: an empty array whose contents the following
    (checked) ``__setstate__`` fills in."""
    if subtype is not _NDARRAY:
        raise UnsafePickleError("ndarray subclass in pickle")
    return np.ndarray.__new__(_PickledArray, (0,), np.uint8)


def _encode(s: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as pickles use it: text -> bytes in a plain text encoding."""
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnsafePickleError("_codecs.encode is only accepted on text with a plain encoding")
    return s.encode(encoding)


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` from data; ``bytearray(n)`` (an allocation the file sizes) is refused."""
    if args and isinstance(args[0], (int, np.integer)):
        raise UnsafePickleError("bytearray(<size>) in pickle")
    return bytearray(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): tuple,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


# Python 2 module names that protocol 0-2 pickles use for builtins.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
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
        raise UnsafePickleError(f"unexpected persistent id in pickle: {_short(pid)}")


def safe_load(f: BinaryIO, name: str | None = None) -> Any:
    """Unpickle ``f`` with the restricted allowlist (see module docstring).

    Every failure caused by the file's content is an :class:`UnsafePickleError` (or, for an
    empty / truncated file, a :class:`~jaxhead.errors.DataError`) whose message starts with
    ``name`` (default: ``f.name``); only OS errors pass through unchanged.
    """
    where = name if name is not None else getattr(f, "name", None)
    pre = f"{str(where)!r}: " if where else ""
    try:
        return _RestrictedUnpickler(f).load()
    except OSError:
        raise
    except UnsafePickleError as e:
        raise UnsafePickleError(pre + str(e)) from e
    except EOFError as e:
        raise DataError(f"{pre}the pickle is empty or truncated") from e
    except MemoryError as e:
        raise UnsafePickleError(f"{pre}a record declares an object too large for memory "
                                "(corrupt or hostile file)") from e
    except Exception as e:  # anything else raised while decoding untrusted bytes
        msg = _short(str(e) or type(e).__name__, 200)
        raise UnsafePickleError(f"{pre}malformed pickle ({type(e).__name__}: {msg})") from e


# Globals a pickle of plain numpy arrays (``pickle.dump({"mean": np.ndarray, ...})``) uses: the
# array / dtype / scalar records, in numpy 1.x and 2.x spellings, and ``_codecs.encode``, which
# pickle protocols <= 2 use for the arrays' raw bytes. Nothing else (no torch, no stubs).
_ARRAY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(_RestrictedUnpickler):
    """Plain containers of numpy arrays only: every global outside :data:`_ARRAY_GLOBALS` is
    refused (torch records and class stubs included)."""

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _ARRAY_GLOBALS:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': a pickle of numpy arrays needs only "
            "numpy's array records (it could run code)")


def safe_load_arrays(f: BinaryIO, name: str | None = None) -> Any:
    """Unpickle ``f``, a pickle of plain data and numpy arrays (dicts, lists, numbers, numeric
    ndarrays), such as 3DDFA_V2's ``configs/*.pkl``. Arrays come back as plain ``np.ndarray``
    copies, checked like :func:`safe_load`'s; any other global is refused with
    :class:`UnsafePickleError` naming the file (a :class:`~jaxhead.errors.DataError`)."""
    where = name if name is not None else getattr(f, "name", None)
    pre = f"{str(where)!r}: " if where else ""
    try:
        obj = _ArrayUnpickler(f).load()
    except OSError:
        raise
    except UnsafePickleError as e:
        raise UnsafePickleError(pre + str(e)) from e
    except EOFError as e:
        raise DataError(f"{pre}the pickle is empty or truncated") from e
    except MemoryError as e:
        raise UnsafePickleError(f"{pre}a record declares an object too large for memory "
                                "(corrupt or hostile file)") from e
    except Exception as e:  # anything else raised while decoding untrusted bytes
        msg = _short(str(e) or type(e).__name__, 200)
        raise UnsafePickleError(f"{pre}malformed pickle ({type(e).__name__}: {msg})") from e
    return _plain_arrays(obj)


def _plain_arrays(x: Any, depth: int = 0) -> Any:
    """Containers as they are, ``_PickledArray`` records as plain ``np.ndarray`` copies."""
    if depth > 64:
        raise UnsafePickleError("the pickle is nested too deeply (or cyclic)")
    if isinstance(x, np.ndarray):
        return np.array(x, subok=False)
    if isinstance(x, dict):
        return {k: _plain_arrays(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain_arrays(v, depth + 1) for v in x)
    return x


def _table(x: Any, what: str) -> dict[str, Any]:
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise DataError(f"{what} is a {type(x).__name__}, not a dict (not a torch module record)")
    return x


def module_state_dict(obj: Any, prefix: str = "", _path: tuple[int, ...] = ()
                      ) -> dict[str, np.ndarray]:
    """PyTorch-style ``state_dict()`` of a stubbed module: parameters and persistent buffers.

    Raises :class:`~jaxhead.errors.DataError` when the record is not a module, a parameter is
    not a tensor, or the module tree contains a cycle."""
    if not isinstance(obj, Stub):
        raise DataError(f"expected an unpickled module record at {prefix or 'the top level'!r}, "
                        f"got {type(obj).__name__}")
    if id(obj) in _path:
        raise DataError(f"the module tree contains a cycle at {prefix!r}")
    st = obj.state
    out: dict[str, np.ndarray] = {}
    non_persistent = set(st.get("_non_persistent_buffers_set", ()) or ())
    tensors = [*_table(st.get("_parameters"), f"{prefix}_parameters").items(),
               *((k, v) for k, v in _table(st.get("_buffers"), f"{prefix}_buffers").items()
                 if k not in non_persistent)]
    for name, v in tensors:
        if v is None:
            continue
        if not isinstance(v, np.ndarray):
            raise DataError(f"{prefix}{name} is a {type(v).__name__}, not a tensor")
        out[prefix + str(name)] = v
    for name, child in _table(st.get("_modules"), f"{prefix}_modules").items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}.", (*_path, id(obj))))
    return out


def init_kwargs(obj: Any) -> dict[str, Any]:
    """Constructor kwargs stored by ``torch_utils.persistence`` (``_init_kwargs``), as plain
    JSON-like data."""
    kw = obj.state.get("_init_kwargs") if isinstance(obj, Stub) else None
    if not isinstance(kw, dict):
        raise DataError("the network record has no stored constructor kwargs (_init_kwargs)")
    return _plain(kw)


def _plain(x: Any, depth: int = 0) -> Any:
    if depth > 64:
        raise DataError("the stored constructor kwargs are nested too deeply (or cyclic)")
    if isinstance(x, dict):
        return {str(k): _plain(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, depth + 1) for v in x]
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist() if isinstance(x, np.ndarray) else x.item()
    return x


# --- TorchScript archives (``torch.jit.save``): read tensors, never the code ---------------

_TS_LIST_BUILDERS = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"}
_MAX_ARCHIVE_PICKLE = 64 << 20  # data.pkl holds module records only; tensors are separate


class _TorchScriptUnpickler(_RestrictedUnpickler):
    """``data.pkl`` of a TorchScript zip: ``__torch__.*`` module objects become inert stubs
    (their compiled code in ``code/`` is never read), storages come from ``data/<key>``."""

    def __init__(self, f: BinaryIO, storage: Any) -> None:
        super().__init__(f)
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
            return _stub_class(module, name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _tag=None: value
        if module == "torch.jit._pickle" and name in _TS_LIST_BUILDERS:
            return list
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {_short(pid)}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError("bad storage type in persistent id")
        if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel < _MAX_INDEX:
            raise UnsafePickleError(f"storage declares an invalid element count {_short(numel)}")
        return self._storage(str(key), stype, numel)


_ZIP_SLACK = 1 << 20  # bytes a checkpoint zip may declare beyond twice its own size


def check_zip_sizes(zf: Any, where: str) -> None:
    """Refuse a zip whose members declare far more bytes than the archive holds (a zip bomb:
    a 1 MB file inflating to 1 GiB). torch writes its archives uncompressed, so a real
    checkpoint declares about its own size; more than twice that plus 1 MiB is refused before
    anything is inflated. Raises :class:`UnsafePickleError` naming ``where``."""
    infos = zf.infolist()
    declared = sum(i.file_size for i in infos)
    stored = sum(i.compress_size for i in infos)
    if declared > 2 * stored + _ZIP_SLACK:
        raise UnsafePickleError(f"{where!r}: its members inflate to {declared} bytes from "
                                f"{stored} (a zip bomb?): refused, nothing inflated")


def load_torchscript_tensors(path: str, name: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted path
    (``layers.conv1.weight``, ``lpips0``), read without executing anything from the file.

    The archive is opened as a zip; only ``<root>/data.pkl`` (with the restricted unpickler:
    ``__torch__`` classes become stubs, other globals are refused) and the ``data/<key>``
    storages it references are read; each storage must hold the bytes it declares and each
    tensor view must lie inside it. A malformed or hostile archive raises
    :class:`UnsafePickleError` (a :class:`~jaxhead.errors.DataError`) naming the file.
    """
    import zipfile

    where = name or str(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{where!r} is not a TorchScript archive (not a zip file)") from e
    with zf:
        check_zip_sizes(zf, where)
        pkls = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise DataError(f"{where!r} is not a TorchScript archive (no single "
                            "<name>/data.pkl in the zip)")
        root = pkls[0][: -len("data.pkl")]
        cache: dict[str, np.ndarray] = {}

        def storage(key: str, stype: _StorageType, numel: int) -> np.ndarray:
            if key not in cache:
                member = f"{root}data/{key}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise UnsafePickleError(f"storage {key!r} is missing from the archive") \
                        from None
                nbytes = numel * stype.itemsize
                if info.file_size != nbytes:  # fewer: truncated; more: not what it says
                    raise UnsafePickleError(f"storage {key!r} declares {numel} elements "
                                            f"({nbytes} bytes) but holds {info.file_size}")
                with zf.open(info) as f:  # at most the declared bytes are inflated
                    raw = f.read(nbytes)
                if len(raw) != nbytes:
                    raise UnsafePickleError(f"storage {key!r} declares {nbytes} bytes but "
                                            f"inflates to {len(raw)}")
                cache[key] = _storage_bytes_to_array(raw, stype.dtype)
            return cache[key]

        if zf.getinfo(pkls[0]).file_size > _MAX_ARCHIVE_PICKLE:
            raise UnsafePickleError(f"{where!r}: data.pkl is implausibly large")
        f = io.BytesIO(zf.read(pkls[0]))
        try:
            obj = _TorchScriptUnpickler(f, storage).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{where!r}: {e}") from e
        except EOFError as e:
            raise DataError(f"{where!r}: data.pkl is empty or truncated") from e
        except Exception as e:  # anything else raised while decoding untrusted bytes
            msg = _short(str(e) or type(e).__name__, 200)
            raise UnsafePickleError(f"{where!r}: malformed data.pkl ({type(e).__name__}: "
                                    f"{msg})") from e
    out: dict[str, np.ndarray] = {}
    _collect_attributes(obj, "", out, ())
    return out


def _collect_attributes(obj: Any, prefix: str, out: dict[str, np.ndarray],
                        path: tuple[int, ...]) -> None:
    if not isinstance(obj, Stub):
        return
    if id(obj) in path or len(path) > 64:
        raise DataError(f"the module tree contains a cycle at {prefix!r}")
    for k, v in obj.state.items():
        if isinstance(v, np.ndarray):
            out[prefix + str(k)] = v
        elif isinstance(v, Stub):
            _collect_attributes(v, f"{prefix}{k}.", out, (*path, id(obj)))
