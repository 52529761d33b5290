"""Convert NVIDIA's ``vgg16.pt`` (StyleGAN2-ADA's LPIPS-VGG16 TorchScript archive, used by the
StyleGAN2-ADA / EG3D / PanoHead projectors) to jaxhead's LPIPS-VGG16 layout.

    python -m convert_weights.vgg16_nvidia vgg16.pt DST

The archive is read as a zip with the restricted reader
(:func:`convert_weights.safe_pickle.load_torchscript_tensors`): its compiled code is never
loaded or run (no ``torch.jit.load``), only the tensors ``layers.conv1..13.*`` (VGG16) and
``lpips0..4`` (LPIPS v0.1 lin weights) are taken; the classifier head ``layers.fc*`` is dropped.
DST gets ``params.safetensors`` + ``config.json``; load with
``jaxhead.models.lpips_vgg.load_lpips_vgg`` and call ``vgg16_lpips_features``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from convert_weights.common import file_sha256
from convert_weights.lpips import vgg_params
from convert_weights.safe_pickle import load_torchscript_tensors
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models.lpips_vgg import widths_of
from jaxhead.utils.params_io import save_params


def convert_tensors(t: Mapping[str, np.ndarray]) -> dict:
    """The archive's tensors (by attribute path) -> LPIPS-VGG16 params. Raises ``DataError``
    naming missing or mis-shaped tensors."""
    missing = [f"layers.conv{i}.{p}" for i in range(1, 14) for p in ("weight", "bias")
               if f"layers.conv{i}.{p}" not in t]
    missing += [f"lpips{k}" for k in range(5) if f"lpips{k}" not in t]
    if missing:
        raise DataError("not NVIDIA's vgg16.pt: the archive lacks " + ", ".join(missing))
    lins = []
    for k in range(5):
        w = np.asarray(t[f"lpips{k}"], np.float32)
        if w.ndim < 1 or sorted(w.shape)[:-1] != [1] * (w.ndim - 1):
            raise DataError(f"lpips{k}: expected a per-channel weight [C, 1, 1], got {w.shape}")
        lins.append(w.reshape(-1))
    convs = [(t[f"layers.conv{i}.weight"], t[f"layers.conv{i}.bias"]) for i in range(1, 14)]
    return vgg_params(convs, lins)


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert the archive ``src`` into the directory ``dst``; returns ``dst``."""
    p = Path(src)
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a directory, expected NVIDIA's vgg16.pt")
    if not p.is_file():
        raise FileNotFoundError(f"vgg16.pt not found: {str(p)!r}")
    params = convert_tensors(load_torchscript_tensors(str(p)))
    save_params(dst, params, {"net": "vgg16", "version": "0.1", "form": "nvidia_vgg16_pt",
                              "widths": list(widths_of(params)), "source": p.name,
                              "source_sha256": file_sha256(p)})
    return Path(dst)


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.vgg16_nvidia",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="NVIDIA's vgg16.pt (TorchScript archive)")
    ap.add_argument("dst", help="output directory")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    print(f"converted {a.src} -> {convert(a.src, a.dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
