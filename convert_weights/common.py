"""Reading PyTorch checkpoints into ``dict[str, np.ndarray]`` without executing their code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``.safetensors`` file, or a ``.bin``/``.pth``/``.ckpt`` pickle with
    ``torch.load(weights_only=True)`` (tensors only; no code from the file is run).

    Returns a flat ``{name: float32/int ndarray}``. A Lightning-style ``{"state_dict": ...}``
    wrapper is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(p)!r}")
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(p)))
        except Exception:  # bf16 tensors are not representable in numpy; go through torch
            from safetensors.torch import load_file as load_torch

            return {k: _to_numpy(v) for k, v in load_torch(str(p)).items()}
    import torch  # converter extra

    obj = torch.load(str(p), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{str(p)!r} does not hold a state dict (got {type(obj).__name__})")
    return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()
