"""Reading PyTorch checkpoints into ``dict[str, np.ndarray]`` without executing their code."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from convert_weights.safe_pickle import check_zip_sizes
from jaxhead.errors import DataError, one_line
from jaxhead.utils.params_io import read_json, read_safetensors


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``.safetensors`` file, or a ``.bin``/``.pth``/``.ckpt`` pickle with
    ``torch.load(weights_only=True)`` (tensors only; no code from the file is run).

    Returns a flat ``{name: float32/int ndarray}``. A Lightning-style ``{"state_dict": ...}``
    wrapper is unwrapped. A missing path raises ``FileNotFoundError``; a directory, an empty,
    truncated or corrupt file, or one torch refuses raises :class:`DataError` naming the file.
    """
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a directory, expected a checkpoint file")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(p)!r}")
    if p.suffix == ".safetensors":
        try:
            return read_safetensors(p)
        except TypeError:  # bf16 tensors are not representable in numpy; go through torch
            from safetensors.torch import load_file as load_torch

            return {k: _to_numpy(v) for k, v in load_torch(str(p)).items()}
    if zipfile.is_zipfile(p):  # torch's archive format: refuse a zip bomb before torch reads it
        try:
            with zipfile.ZipFile(p) as zf:
                check_zip_sizes(zf, str(p))
        except zipfile.BadZipFile as e:
            raise DataError(f"{str(p)!r}: a damaged zip archive ({e})") from None
    import torch  # converter extra

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except EOFError as e:
        raise DataError(f"{str(p)!r} is empty or truncated (not a torch checkpoint)") from e
    except (pickle.UnpicklingError, RuntimeError, ValueError) as e:
        # refused globals, bad zip archives, tensor views outside their storage, ...
        why = one_line(e).removeprefix("error: ").splitlines()[0]
        raise DataError(f"{str(p)!r}: cannot load it as a torch checkpoint: {why}") from e
    except Exception as e:  # noqa: BLE001 - any other failure decoding untrusted bytes
        # (torch's legacy reader raises KeyError / IndexError / struct.error on text or noise)
        raise DataError(f"{str(p)!r} is not a torch checkpoint ({type(e).__name__}: "
                        f"{str(e)[:120]})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise DataError(f"{str(p)!r} does not hold a state dict (got {type(obj).__name__})")
    return {str(k): _to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (read in 1 MiB chunks), recorded as a conversion's source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inside(folder: str | os.PathLike, name: object, *, what: str) -> Path:
    """``folder / name`` for a file name read from inside a checkpoint (a shard index's
    ``weight_map``, an ONNX tensor's external ``location``): a relative path that stays in
    ``folder``. An absolute path, a ``..`` component, a drive, a NUL or a non-string is a
    :class:`DataError` naming ``what`` (the converter never opens a file outside the folder it
    was given). The check is lexical, so symlinks the user put in the folder (a hub cache's
    snapshot links) still work."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DataError(f"{what} names an invalid file {name!r}")
    pure = Path(name)
    parts = name.replace("\\", "/").split("/")
    if pure.is_absolute() or name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise DataError(f"{what} names {name!r}, a file outside {os.fspath(folder)!r}: refused "
                        "(a checkpoint may only name files inside its own folder)")
    return Path(folder) / name


def shard_files(index: str | os.PathLike) -> list[Path]:
    """The shard files of a sharded checkpoint's ``*.index.json`` (its ``weight_map`` values, in
    name order), each checked by :func:`inside` and to exist. A malformed index, a shard named
    outside the index's folder or a missing shard is a :class:`DataError` naming the index."""
    index = Path(index)
    where = os.fspath(index)
    doc = read_json(index)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DataError(f"{where!r} has no 'weight_map' object (not a shard index)")
    for v in weight_map.values():
        inside(index.parent, v, what=where)
    names = sorted(set(weight_map.values()))
    shards = [inside(index.parent, n, what=where) for n in names]
    missing = [n for n, s in zip(names, shards, strict=True) if not s.is_file()]
    if missing:
        raise DataError(f"{where!r} lists missing shards: {missing}")
    return shards
