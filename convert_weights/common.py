"""Reading PyTorch checkpoints into ``dict[str, np.ndarray]`` without executing their code."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from jaxhead.errors import DataError, one_line
from jaxhead.utils.params_io import read_safetensors


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
    import torch  # converter extra

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except EOFError as e:
        raise DataError(f"{str(p)!r} is empty or truncated (not a torch checkpoint)") from e
    except (pickle.UnpicklingError, RuntimeError, ValueError) as e:
        # refused globals, bad zip archives, tensor views outside their storage, ...
        why = one_line(e).removeprefix("error: ").splitlines()[0]
        raise DataError(f"{str(p)!r}: cannot load it as a torch checkpoint: {why}") from e
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
