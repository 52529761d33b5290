"""PyTorch state dict -> Flax params for the Stable Diffusion networks (numpy only, no torch).

One rule set serves every network because the Flax modules mirror the PyTorch attribute paths:

1. ordered regex renames (per network: prefixes, deprecated names),
2. ``name.N`` -> ``name_N`` and ``.`` -> ``/`` (``down_blocks.0.resnets.1.conv1.weight`` ->
   ``down_blocks_0/resnets_1/conv1`` + leaf ``weight``),
3. leaf and layout by what the model expects at that path (``jax.eval_shape`` of ``init``):
   conv ``weight`` OIHW -> ``kernel`` HWIO, linear ``weight`` [out, in] -> ``kernel`` [in, out]
   (a 1x1-conv weight [out, in, 1, 1] is accepted for a linear layer), norm ``weight`` ->
   ``scale``, embedding ``weight`` -> ``embedding``, ``bias`` and any other leaf (a bare
   ``nn.Parameter``) unchanged.

Missing, unexpected and mis-shaped keys are reported together in one ``DataError`` (a
``ValueError``: the cause is the user's checkpoint or config).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.errors import DataError
from jaxhead.utils.params_io import tree_shapes, unflatten

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def flax_path(torch_key: str) -> tuple[str, str]:
    """``a.b.0.c.weight`` -> (``a/b_0/c``, ``weight``)."""
    base, _, leaf = torch_key.rpartition(".")
    return _INDEX.sub(r"_\1", base).replace(".", "/"), leaf


def torch_to_flax(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, Any], *,
                  renames: Iterable[tuple[str, str]] = (), ignore: Iterable[str] = (),
                  what: str = "model") -> dict[str, Any]:
    """Convert a PyTorch ``state_dict`` into a nested Flax params dict shaped like ``expected``.

    Args:
      state_dict: ``{torch_name: array}`` (any float dtype; stored as float32).
      expected: nested dict of shapes / ShapeDtypeStructs (``jax.eval_shape(init)["params"]``).
      renames: ordered ``(regex, replacement)`` applied to every key first.
      ignore: regexes of keys to drop silently (non-persistent buffers such as ``position_ids``).
      what: name used in error messages.
    Raises:
      DataError (a ValueError) naming every missing, unexpected and mis-shaped key.
    """
    renames = [(re.compile(p), r) for p, r in renames]
    ignore = [re.compile(p) for p in ignore]
    want = tree_shapes(expected)
    out: dict[str, np.ndarray] = {}
    unexpected, wrong = [], []
    for key, value in state_dict.items():
        name = key
        for pat, rep in renames:
            name = pat.sub(rep, name)
        if any(p.search(name) for p in ignore):
            continue
        base, leaf = flax_path(name)
        arr = np.asarray(value)
        if leaf == "bias":
            path = f"{base}/bias"
        elif leaf == "weight":
            path = next((f"{base}/{n}" for n in ("kernel", "scale", "embedding")
                         if f"{base}/{n}" in want), None)
        else:  # a bare nn.Parameter (CLIP's class_embedding, logit_scale) keeps its name
            path = f"{base}/{leaf}" if base else leaf
        if path is None or path not in want:
            unexpected.append(key)
            continue
        if path.endswith("/kernel"):
            arr = _kernel_layout(arr, len(want[path]))
        if tuple(arr.shape) != want[path]:
            wrong.append(f"{key} -> {path}: {tuple(arr.shape)} != expected {want[path]}")
            continue
        out[path] = arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr
    missing = sorted(set(want) - set(out) - {w.split(" -> ")[1].split(":")[0] for w in wrong})
    if missing or unexpected or wrong:
        lines = [f"{what}: the state dict does not match the model configuration:"]
        for title, items in (("missing", missing), ("unexpected", sorted(unexpected)),
                             ("wrong shape", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        raise DataError("\n".join(lines))
    return unflatten(out)


def _kernel_layout(arr: np.ndarray, want_ndim: int) -> np.ndarray:
    if arr.ndim == 4 and want_ndim == 4:  # conv OIHW -> HWIO
        return arr.transpose(2, 3, 1, 0)
    if arr.ndim == 4 and want_ndim == 2 and arr.shape[2:] == (1, 1):  # 1x1 conv used as linear
        return arr[:, :, 0, 0].T
    if arr.ndim == 2 and want_ndim == 2:  # linear [out, in] -> [in, out]
        return arr.T
    if arr.ndim == 2 and want_ndim == 4:  # linear used as 1x1 conv
        return arr.T[None, None]
    return arr


def param_shapes(module: Any, *args: Any) -> dict[str, Any]:
    """``jax.eval_shape`` of ``module.init`` on abstract inputs -> params shape tree.

    No random numbers are drawn (the key is abstract as well).
    """
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a
                for a in args]
    return jax.eval_shape(lambda k, *xs: module.init(k, *xs), key, *abstract)["params"]


def cast_params(params: Any, dtype: Any) -> Any:
    """Cast floating leaves to ``dtype`` (as jax arrays); integer leaves are kept."""
    def cast(x: Any) -> Any:
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, params)


def check_config_keys(config: Mapping[str, Any], supported: Mapping[str, Any],
                      fixed: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """Validate a diffusers/transformers ``config.json`` dict.

    ``supported`` maps accepted keys to defaults; ``fixed`` maps keys to the tuple of values this
    port implements (other values are options it does not). Keys starting with ``_`` are
    metadata.
    Returns ``supported`` updated with the config's values. Raises ``DataError`` (a
    ``ValueError``) listing every unsupported option / unknown key.
    """
    out = dict(supported)
    problems = []
    for k, v in config.items():
        if k.startswith("_"):
            continue
        if k in supported:
            out[k] = v
        elif k in fixed:
            if _normalise(v) not in [_normalise(a) for a in fixed[k]]:
                allowed = " or ".join(repr(a) for a in fixed[k])
                problems.append(f"{k}={v!r} (only {allowed} is supported)")
        else:
            problems.append(f"{k}={v!r} (unknown option)")
    if problems:
        raise DataError(f"unsupported {what} configuration: " + "; ".join(problems))
    return out


def _normalise(v: Any) -> Any:
    return tuple(_normalise(x) for x in v) if isinstance(v, list | tuple) else v
