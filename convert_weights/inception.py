"""Convert the FID Inception-v3 weights to jaxhead's layout.

    python -m convert_weights.inception SRC DST

SRC: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (its FID_WEIGHTS_URL) or
torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the same TF graph converted by
torch-fidelity; same tensor names, without BatchNorm ``num_batches_tracked``). Names are
``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``.
torchvision's ImageNet ``inception_v3_google-*.pth`` is refused: other weights, and a network
without the FID patches. Read with ``torch.load(weights_only=True)`` (or safetensors).
DST gets ``params.safetensors`` + ``config.json`` (load with
``jaxhead.metrics.inception.load_inception``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from convert_weights.common import file_sha256, load_torch_file
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.metrics.inception import MODEL_NAME, NUM_CLASSES, param_shapes
from jaxhead.utils.params_io import check_tree, flatten, save_params, unflatten

IGNORED_SUFFIX = ".num_batches_tracked"  # BatchNorm bookkeeping, not a weight


def torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of the jaxhead leaf ``path`` (``a/b/conv/weight`` etc.)."""
    if path.endswith("conv/weight"):
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    if path == "fc/weight":
        return shape[::-1]
    return shape


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict:
    """pytorch-fid / torch-fidelity state dict (tensors as numpy) -> jaxhead Inception params.
    Conv OIHW -> HWIO, fc ``[out, in]`` -> ``[in, out]``, BatchNorm tensors as they are.
    Raises ``DataError`` naming every missing, unexpected or mis-shaped tensor."""
    if any(k.startswith("AuxLogits.") for k in state) or (
            "fc.weight" in state and np.shape(state["fc.weight"])[0] != NUM_CLASSES):
        raise DataError("this looks like torchvision's ImageNet Inception-v3 (AuxLogits, 1000 "
                        "classes), not the FID Inception; use pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth")
    expected = flatten(param_shapes())
    flat, missing, wrong = {}, [], []
    for path, shape in expected.items():
        key = path.replace("/", ".")
        if key not in state:
            missing.append(key)
            continue
        v = np.asarray(state[key], np.float32)
        want = torch_shape(path, shape)
        if v.shape != want:
            wrong.append(f"{key} {v.shape} != expected {want}")
            continue
        if path.endswith("conv/weight"):
            v = v.transpose(2, 3, 1, 0)
        elif path == "fc/weight":
            v = v.T
        flat[path] = np.ascontiguousarray(v)
    known = {p.replace("/", ".") for p in expected}
    unexpected = sorted(k for k in state if k not in known and not k.endswith(IGNORED_SUFFIX))
    if missing or unexpected or wrong:
        lines = ["the file is not the FID Inception-v3 state dict:"]
        for what, items in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong)):
            if items:
                lines.append(f"  {what} ({len(items)}): " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        raise DataError("\n".join(lines))
    params = unflatten(flat)
    check_tree(params, param_shapes(), what="converted Inception params")
    return params



def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.inception",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
                                "weights-inception-2015-12-05-6726825d.pth (torch-fidelity)")
    ap.add_argument("dst", help="output directory (params.safetensors + config.json)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    state = load_torch_file(a.src)
    params = convert_state_dict(state)
    save_params(a.dst, params, {"model": MODEL_NAME, "source": Path(a.src).name,
                                "source_sha256": file_sha256(a.src)})
    print(f"converted FID Inception-v3 ({Path(a.src).name}) -> {a.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
