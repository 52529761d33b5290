"""Saving and loading converted parameter trees: ``<dir>/params.safetensors`` + ``config.json``.

Parameters are stored flat, keys joined with ``/`` (e.g. ``mapping/fc0/weight``), so a converted
model is plain tensors plus JSON: nothing is unpickled when loading it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}`` (leaves unchanged)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b/c": array}`` -> nested dict."""
    tree: dict[str, Any] = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_params(directory: str | os.PathLike, params: Mapping[str, Any],
                config: Mapping[str, Any]) -> Path:
    """Write ``params`` (nested dict of arrays) and ``config`` (JSON-able) into ``directory``.

    Files are written to temporary names and renamed, so an interrupted save never leaves a
    half-written model behind (and never clobbers an earlier good one with a partial file).
    """
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    flat = {k: np.array(v, order="C") for k, v in flatten(params).items()}  # keeps 0-d shapes
    tmp_p, tmp_c = d / (PARAMS_FILE + ".tmp"), d / (CONFIG_FILE + ".tmp")
    save_file(flat, str(tmp_p))
    tmp_c.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.replace(tmp_p, d / PARAMS_FILE)
    os.replace(tmp_c, d / CONFIG_FILE)
    return d


def load_params(directory: str | os.PathLike, *, what: str = "model",
                convert_hint: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``(params, config)`` written by :func:`save_params`.

    Raises ``FileNotFoundError`` naming the missing file and, if given, the command that
    produces it.
    """
    from safetensors.numpy import load_file

    d = Path(directory)
    missing = [f for f in (PARAMS_FILE, CONFIG_FILE) if not (d / f).is_file()]
    if missing:
        hint = f"\nCreate it with: {convert_hint}" if convert_hint else ""
        raise FileNotFoundError(
            f"{what} directory {str(d)!r} is missing {', '.join(missing)} "
            f"(expected a converted jaxhead model).{hint}")
    config = json.loads((d / CONFIG_FILE).read_text())
    return unflatten(load_file(str(d / PARAMS_FILE))), config


def tree_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{"a/b": shape}`` for a nested dict whose leaves are arrays, ShapeDtypeStructs or shape
    tuples (leaves are not converted with ``np.asarray``, which would turn a ShapeDtypeStruct
    into a 0-d object array)."""
    out: dict[str, tuple[int, ...]] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(tree_shapes(v, key + "/"))
        elif isinstance(v, tuple):
            out[key] = tuple(int(d) for d in v)
        else:
            out[key] = tuple(getattr(v, "shape", np.shape(v)))
    return out


def check_tree(params: Mapping[str, Any], expected: Mapping[str, Any], *,
               what: str = "parameters") -> None:
    """Compare a params tree against an expected tree of shapes/ShapeDtypeStructs.

    Raises ``ValueError`` that lists missing, unexpected and mis-shaped keys (by ``/`` path).
    """
    got = tree_shapes(params)
    want = tree_shapes(expected)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    mis = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or unexpected or mis:
        lines = [f"{what} do not match the model configuration:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:20])
                         + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" ..." if len(unexpected) > 20 else ""))
        if mis:
            lines.append(f"  wrong shape ({len(mis)}): " + ", ".join(
                f"{k} {got[k]} != expected {want[k]}" for k in mis[:20])
                + (" ..." if len(mis) > 20 else ""))
        raise ValueError("\n".join(lines))
