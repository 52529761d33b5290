"""Convert LPIPS(alex, v0.1) weights to jaxhead's layout.

    python -m convert_weights.lpips --alexnet alexnet-owt-7be5be79.pth \\
        --lin <site-packages>/lpips/weights/v0.1/alex.pth DST

``--alexnet``: torchvision's ImageNet AlexNet state dict (``features.{0,3,6,8,10}.*``; the file
torchvision downloads for ``alexnet(weights="IMAGENET1K_V1")``), or a full ``lpips.LPIPS``
state dict (``net.slice{1..5}.N.*`` and ``lin{0..4}.model.*.weight``), in which case ``--lin``
may be left out. ``--lin``: the lpips package's linear-layer file (``lin{k}.model.{0,1}.weight``
of shape [1, C, 1, 1]). Files are read with ``torch.load(weights_only=True)`` or safetensors.
DST gets ``params.safetensors`` + ``config.json`` (load with ``jaxhead.models.lpips.load_lpips``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

import numpy as np

from convert_weights.common import load_torch_file
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models.lpips import ALEXNET_CONVS, param_shapes
from jaxhead.utils.params_io import check_tree, save_params

# torchvision ``features`` index of each conv, and the LPIPS slice holding it.
TV_INDEX = (0, 3, 6, 8, 10)
LPIPS_SLICE = (1, 2, 3, 4, 5)
_LIN = re.compile(r"^lins?\.?(\d)\.model\.\d\.weight$")  # linK.* or its alias lins.K.*


def convert_state_dicts(alexnet: Mapping[str, np.ndarray],
                        lin: Mapping[str, np.ndarray] | None = None) -> dict:
    """torch tensors (as numpy) -> jaxhead LPIPS params. ``lin`` defaults to the lin weights
    inside ``alexnet`` (a full LPIPS state dict). Raises ``ValueError`` naming missing or
    mis-shaped keys."""
    lin = alexnet if lin is None else lin
    net = {}
    missing = []
    for i, (tv, sl) in enumerate(zip(TV_INDEX, LPIPS_SLICE, strict=True)):
        names = [f"features.{tv}", f"net.slice{sl}.{tv}"]
        name = next((n for n in names if f"{n}.weight" in alexnet), None)
        if name is None or f"{name}.bias" not in alexnet:
            missing.append(f"{names[0]}.weight/.bias (or {names[1]}.*)")
            continue
        w = np.asarray(alexnet[f"{name}.weight"], np.float32)
        if w.ndim != 4:
            raise DataError(f"{name}.weight: expected a 4-d conv weight, got shape {w.shape}")
        net[f"conv{i}"] = {"weight": w.transpose(2, 3, 1, 0),  # OIHW -> HWIO
                           "bias": np.asarray(alexnet[f"{name}.bias"], np.float32)}
    lins = {}
    for k, v in lin.items():
        m = _LIN.match(k)
        if m:
            v = np.asarray(v, np.float32)
            if v.ndim != 4 or v.shape[0] != 1 or v.shape[2:] != (1, 1):
                raise DataError(f"{k}: expected a [1, C, 1, 1] lin weight, got shape {v.shape}")
            lins[f"lin{m.group(1)}"] = v[0, :, 0, 0]
    for i in range(len(ALEXNET_CONVS)):
        if f"lin{i}" not in lins:
            missing.append(f"lin{i}.model.1.weight")
    if missing:
        raise DataError("LPIPS weights are missing tensors: " + ", ".join(missing))
    params = {"net": net, "lin": lins}
    check_tree(params, param_shapes(), what="converted LPIPS(alex) params")
    return params


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m convert_weights.lpips",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("dst", help="output directory (params.safetensors + config.json)")
    ap.add_argument("--alexnet", required=True,
                    help="torchvision AlexNet state dict, or a full lpips.LPIPS state dict")
    ap.add_argument("--lin", default=None,
                    help="lpips package's weights/v0.1/alex.pth (lin layers)")
    a = ap.parse_args(argv)
    alex = load_torch_file(a.alexnet)
    lin = load_torch_file(a.lin) if a.lin else None
    params = convert_state_dicts(alex, lin)
    save_params(a.dst, params, {"net": "alex", "version": "0.1"})
    print(f"converted LPIPS(alex, v0.1) -> {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
