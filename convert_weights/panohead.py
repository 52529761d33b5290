"""Convert an official PanoHead generator to jaxhead's format.

    python -m convert_weights.panohead SRC DST

SRC: an official network pickle (e.g. ``easy-khair-180-gpc0.8-trans10-025000.pkl``; ``G_ema``
is used; read with a restricted unpickler that executes nothing from the file) **or** a
``.safetensors`` state dict with a ``config.json`` beside it holding ``init_kwargs`` (and
optionally ``neural_rendering_resolution``). DST: a directory with ``params.safetensors`` and
``config.json`` that :func:`jaxhead.models.panohead.load_panohead` reads.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convert_weights.safe_pickle import Stub, init_kwargs, module_state_dict, safe_load
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models.panohead import PanoHead, PanoHeadConfig, save_panohead
from jaxhead.ops.upfirdn import setup_filter
from jaxhead.utils import params_io

# Keys of the official state dict with no counterpart in the port: *.resample_filter, the fixed
# [1, 3, 3, 1] FIR filter (checked, then dropped). t_mapping.* (camera self-adaptation, used by
# the official forward() and by inversion) is kept.
_IGNORED = re.compile(r"\.resample_filter$")
_BUFFERS = re.compile(r"(^(backbone\.mapping|t_mapping)\.w_avg$|\.noise_const$)")


def read_source(src: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    """-> (PyTorch state dict of G_ema, init_kwargs, neural rendering resolution).

    A missing file raises ``FileNotFoundError``; a directory, an unreadable or refused file, or
    one without a generator raises :class:`~jaxhead.errors.DataError` naming the file.
    """
    p = Path(src)
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a directory, expected a network pickle (.pkl) or a "
                        ".safetensors state dict")
    if not p.exists():
        raise FileNotFoundError(f"PanoHead source not found: {str(p)!r}")
    if p.suffix == ".safetensors":
        cfg_path = p.with_name("config.json")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{str(p)!r} needs a config.json beside it with 'init_kwargs'")
        cfg = params_io.read_json(cfg_path)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("init_kwargs"), dict):
            raise DataError(f"{str(cfg_path)!r} has no 'init_kwargs'")
        with params_io.data_errors(str(cfg_path)):
            res = int(cfg.get("neural_rendering_resolution", 64))
        return params_io.read_safetensors(p), cfg["init_kwargs"], res
    with open(p, "rb") as f:
        data = safe_load(f)
    if not isinstance(data, dict) or "G_ema" not in data:
        keys = list(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{str(p)!r} is not a network pickle with 'G_ema' (found {keys})")
    g = data["G_ema"]
    if not isinstance(g, Stub):
        raise DataError(f"{str(p)!r}: 'G_ema' is a {type(g).__name__}, not a network record")
    with params_io.data_errors(f"{p}: G_ema"):
        res = int(g.state.get("neural_rendering_resolution", 64) or 64)
        return module_state_dict(g), init_kwargs(g), res


def torch_to_flax(state_dict: dict[str, np.ndarray], config: PanoHeadConfig) -> dict[str, Any]:
    """Official ``TriPlaneGenerator.state_dict()`` -> jaxhead variables ``{params, buffers}``.

    Layout rules: conv weights OIHW -> HWIO, ``const`` CHW -> HWC; ``decoder.net.N`` ->
    ``decoder/net_N``. The result is checked against the model built from ``config``; missing,
    unexpected and mis-shaped keys are reported by their PyTorch names.
    """
    canonical = setup_filter()
    params: dict[str, np.ndarray] = {}
    buffers: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for key, v in state_dict.items():
        v = np.asarray(v, np.float32)
        if _IGNORED.search(key):
            if key.endswith("resample_filter") and not np.allclose(v, canonical, atol=1e-7):
                raise DataError(f"{key}: only the [1, 3, 3, 1] resampling filter is supported")
            continue
        path = re.sub(r"\.net\.(\d+)\.", r".net_\1.", key).replace(".", "/")
        if v.ndim == 4:
            v = v.transpose(2, 3, 1, 0)
        elif key.endswith(".const"):
            v = v.transpose(1, 2, 0)
        (buffers if _BUFFERS.search(key) else params)[path] = v
        names[path] = key
    G = PanoHead(config)
    expected = G.param_shapes(t_mapping=any(k.startswith("t_mapping.") for k in state_dict))
    tree = {"params": params_io.unflatten(params), "buffers": params_io.unflatten(buffers)}
    try:
        params_io.check_tree(tree, expected, what="PanoHead state dict")
    except ValueError as e:  # re-state with PyTorch names where known
        msg = str(e)
        for path, key in names.items():
            msg = msg.replace(f"params/{path}", key).replace(f"buffers/{path}", key)
        raise DataError(msg) from None
    return tree


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert SRC (pickle or safetensors + config.json) into DST; returns DST."""
    sd, kwargs, res = read_source(src)
    with params_io.data_errors(f"{os.fspath(src)}: init_kwargs"):
        config = PanoHeadConfig.from_official(kwargs, neural_rendering_resolution=res)
    tree = torch_to_flax(sd, config)
    save_panohead(dst, PanoHead(config), tree,
                  extra={"source": os.path.basename(os.fspath(src)), "init_kwargs": kwargs})
    return Path(dst)


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.panohead",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="official .pkl, or .safetensors with config.json beside it")
    ap.add_argument("dst", help="output directory")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    out = convert(args.src, args.dst)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
