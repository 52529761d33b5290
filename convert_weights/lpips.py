"""Convert LPIPS(alex or vgg, v0.1) weights to jaxhead's layout.

    python -m convert_weights.lpips --alexnet alexnet-owt-7be5be79.pth \\
        --lin <site-packages>/lpips/weights/v0.1/alex.pth DST
    python -m convert_weights.lpips --net vgg --vgg vgg16-397923af.pth \\
        --lin <site-packages>/lpips/weights/v0.1/vgg.pth DST

``--alexnet``: torchvision's ImageNet AlexNet state dict (``features.{0,3,6,8,10}.*``; the file
torchvision downloads for ``alexnet(weights="IMAGENET1K_V1")``), or a full ``lpips.LPIPS``
state dict (``net.slice{1..5}.N.*`` and ``lin{0..4}.model.*.weight``), in which case ``--lin``
may be left out. ``--lin``: the lpips package's linear-layer file (``lin{k}.model.{0,1}.weight``
of shape [1, C, 1, 1]). Files are read with ``torch.load(weights_only=True)`` or safetensors.
DST gets ``params.safetensors`` + ``config.json`` (load with ``jaxhead.models.lpips.load_lpips``).

``--net vgg``: ``--vgg`` is torchvision's ImageNet VGG16 (``features.{0,2,...,28}.*``) or a full
``lpips.LPIPS(net="vgg")`` state dict (``net.slice{1..5}.N.*``); ``--lin`` is
``lpips/weights/v0.1/vgg.pth``. Load with ``jaxhead.models.lpips_vgg.load_lpips_vgg`` (the same
format as ``python -m convert_weights.vgg16_nvidia`` writes from NVIDIA's ``vgg16.pt``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

import numpy as np

from convert_weights.common import load_torch_file
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models import lpips_vgg
from jaxhead.models.lpips import ALEXNET_CONVS, param_shapes
from jaxhead.utils.params_io import check_tree, save_params

# torchvision ``features`` index of each conv, and the LPIPS slice holding it.
TV_INDEX = (0, 3, 6, 8, 10)
LPIPS_SLICE = (1, 2, 3, 4, 5)
_LIN = re.compile(r"^lins?\.?(\d)\.model\.\d\.weight$")  # linK.* or its alias lins.K.*


# LPIPS' vgg16 slices hold torchvision features 0-3, 4-8, 9-15, 16-22, 23-29.
_VGG_SLICE_STARTS = (0, 4, 9, 16, 23)


def _lins(lin: Mapping[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """The lpips ``linK.model.*.weight`` [1, C, 1, 1] tensors as ``{"linK": [C]}``."""
    lins = {}
    for k, v in lin.items():
        m = _LIN.match(k)
        if m:
            v = np.asarray(v, np.float32)
            if v.ndim != 4 or v.shape[0] != 1 or v.shape[2:] != (1, 1):
                raise DataError(f"{k}: expected a [1, C, 1, 1] lin weight, got shape {v.shape}")
            lins[f"lin{m.group(1)}"] = v[0, :, 0, 0]
    return lins, [f"lin{i}.model.1.weight" for i in range(n) if f"lin{i}" not in lins]


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
    lins, missing_lin = _lins(lin, len(ALEXNET_CONVS))
    missing += missing_lin
    if missing:
        raise DataError("LPIPS weights are missing tensors: " + ", ".join(missing))
    params = {"net": net, "lin": lins}
    check_tree(params, param_shapes(), what="converted LPIPS(alex) params")
    return params


def vgg_params(convs: list[tuple[np.ndarray, np.ndarray]], lins: list[np.ndarray]) -> dict:
    """13 PyTorch convs (OIHW weight, bias) + 5 per-channel lin weights -> LPIPS-VGG16
    params (widths read from the tensors and checked for consistency)."""
    widths = tuple(int(np.asarray(x).size) for x in lins)
    if len(convs) != 13 or len(widths) != 5:
        raise DataError(f"LPIPS-VGG16 needs 13 convolutions and 5 lin weights, got "
                        f"{len(convs)} and {len(widths)}")
    net = {f"conv{i}": {"weight": np.asarray(w, np.float32).transpose(2, 3, 1, 0),
                        "bias": np.asarray(b, np.float32)} for i, (w, b) in enumerate(convs)}
    params = {"net": net, "lin": {f"lin{k}": np.asarray(x, np.float32).reshape(-1)
                                  for k, x in enumerate(lins)}}
    check_tree(params, lpips_vgg.param_shapes(widths),
               what=f"converted LPIPS-VGG16 params (stage widths {widths})")
    return params


def convert_vgg_state_dicts(vgg: Mapping[str, np.ndarray],
                            lin: Mapping[str, np.ndarray] | None = None) -> dict:
    """torchvision VGG16 (or full ``lpips.LPIPS(net="vgg")``) + lpips lin tensors ->
    LPIPS-VGG16 params. Raises ``DataError`` naming missing or mis-shaped keys."""
    lin = vgg if lin is None else lin
    convs, missing = [], []
    for tv in lpips_vgg.TV_INDEX:
        sl = max(i for i, s in enumerate(_VGG_SLICE_STARTS) if s <= tv) + 1
        names = [f"features.{tv}", f"net.slice{sl}.{tv}"]
        name = next((n for n in names if f"{n}.weight" in vgg and f"{n}.bias" in vgg), None)
        if name is None:
            missing.append(f"{names[0]}.weight/.bias (or {names[1]}.*)")
            continue
        w = np.asarray(vgg[f"{name}.weight"], np.float32)
        if w.ndim != 4 or w.shape[2:] != (3, 3):
            raise DataError(f"{name}.weight: expected a 3x3 conv weight, got shape {w.shape}")
        convs.append((w, vgg[f"{name}.bias"]))
    lins, missing_lin = _lins(lin, 5)
    missing += missing_lin
    if missing:
        raise DataError("LPIPS-VGG16 weights are missing tensors: " + ", ".join(missing))
    return vgg_params(convs, [lins[f"lin{k}"] for k in range(5)])


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.lpips",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("dst", help="output directory (params.safetensors + config.json)")
    ap.add_argument("--net", choices=("alex", "vgg"), default="alex", help="trunk (alex)")
    ap.add_argument("--alexnet", default=None,
                    help="torchvision AlexNet state dict, or a full lpips.LPIPS state dict")
    ap.add_argument("--vgg", default=None,
                    help="torchvision VGG16 state dict, or a full lpips.LPIPS(net='vgg') one")
    ap.add_argument("--lin", default=None,
                    help="lpips package's weights/v0.1/alex.pth or vgg.pth (lin layers)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    trunk = a.alexnet if a.net == "alex" else a.vgg
    if trunk is None:
        ap.error(f"--net {a.net} needs --{'alexnet' if a.net == 'alex' else 'vgg'}")
    if (a.alexnet if a.net == "vgg" else a.vgg) is not None:
        ap.error(f"--{'alexnet' if a.net == 'vgg' else 'vgg'} does not go with --net {a.net}")
    net = load_torch_file(trunk)
    lin = load_torch_file(a.lin) if a.lin else None
    if a.net == "alex":
        params = convert_state_dicts(net, lin)
        save_params(a.dst, params, {"net": "alex", "version": "0.1"})
    else:
        params = convert_vgg_state_dicts(net, lin)
        save_params(a.dst, params, {"net": "vgg16", "version": "0.1", "form": "lpips",
                                    "widths": list(lpips_vgg.widths_of(params))})
    print(f"converted LPIPS({a.net}, v0.1) -> {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
