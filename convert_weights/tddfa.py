"""Convert a git clone of cleardusk/3DDFA_V2 (face detector, 3DMM regressor, BFM) to jaxhead.

    python -m convert_weights.tddfa PATH/TO/3DDFA_V2 checkpoints/tddfa [--arch mb1|mb05]

Reads, from the clone (all are in its git tree):

* ``FaceBoxes/weights/FaceBoxesProd.pth``: FaceBoxes (:mod:`jaxhead.models.faceboxes`);
* ``weights/mb1_120x120.pth`` or ``weights/mb05_120x120.pth``: the MobileNet regressor
  (:mod:`jaxhead.models.tddfa`; ``module.`` prefixes dropped, ``fc_param`` -> ``fc``, the
  unused ``fc_lm`` head left out, as the reference's loader does);
* ``configs/param_mean_std_62d_120x120.pkl``: the 62-d parameter mean / std;
* ``configs/bfm_noneck_v3.pkl``: the BFM; kept are the mean shape ``u`` and the keypoint rows
  the 68 landmarks use (``u[keypoints]``, ``w_shp[keypoints, :40]``, ``w_exp[keypoints, :10]``,
  ``keypoints``); the dense bases and the triangles are not needed.

``.pth`` files are read with ``torch.load(weights_only=True)``; ``.pkl`` files with the
restricted unpickler (:func:`convert_weights.safe_pickle.safe_load_arrays`: numpy array records
only). The BFM's array shapes are checked against each other (not against the released vertex
count). DST gets ``params.safetensors`` + ``config.json``; load with
``jaxhead.face.weights.load_tddfa``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convert_weights.common import file_sha256, load_torch_file
from convert_weights.safe_pickle import safe_load_arrays
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.face.bfm import EXP_DIM, NUM_LANDMARKS, SHAPE_DIM
from jaxhead.face.weights import MODEL_NAME, param_shapes
from jaxhead.models import faceboxes, tddfa
from jaxhead.utils.params_io import check_tree, flatten, save_params, unflatten

FACEBOXES_FILE = "FaceBoxes/weights/FaceBoxesProd.pth"
BFM_FILE = "configs/bfm_noneck_v3.pkl"
MEAN_STD_FILE = "configs/param_mean_std_62d_120x120.pkl"
IGNORED_SUFFIX = ".num_batches_tracked"


def source_files(arch: str) -> dict[str, str]:
    """What the conversion reads, by role -> path inside the clone."""
    return {"faceboxes": FACEBOXES_FILE, "mobilenet": tddfa.CHECKPOINTS[arch],
            "param_mean_std": MEAN_STD_FILE, "bfm": BFM_FILE}


def _torch_shape(shape: tuple[int, ...], linear: bool) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        kh, kw, ci, co = shape
        return (co, ci, kh, kw)
    if linear:  # [in, out] -> [out, in]
        return (shape[1], shape[0])
    return shape


def state_to_params(state: Mapping[str, np.ndarray], expected: Mapping[str, Any],
                    what: str) -> dict:
    """A PyTorch state dict (``.``-separated names) -> params of the ``expected`` shape tree:
    convs OIHW -> HWIO, the Linear ``fc`` [out, in] -> [in, out]. Raises :class:`DataError`
    listing missing, unexpected and mis-shaped tensors."""
    want = flatten(expected)
    got = {k.replace(".", "/"): v for k, v in state.items() if not k.endswith(IGNORED_SUFFIX)}
    missing = [k.replace("/", ".") for k in want if k not in got]
    unexpected = sorted(k.replace("/", ".") for k in got if k not in want)
    wrong = [f"{k.replace('/', '.')} {tuple(got[k].shape)} != expected "
             f"{_torch_shape(s, k == 'fc/weight')}" for k, s in want.items()
             if k in got and tuple(got[k].shape) != _torch_shape(s, k == "fc/weight")]
    if missing or unexpected or wrong:
        lines = [f"the file is not {what}:"]
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong)):
            if items:
                lines.append(f"  {name} ({len(items)}): " + ", ".join(items[:12])
                             + (" ..." if len(items) > 12 else ""))
        raise DataError("\n".join(lines))
    out = {}
    for k in want:
        v = np.asarray(got[k], np.float32)
        if v.ndim == 4:
            v = v.transpose(2, 3, 1, 0)
        elif k == "fc/weight":
            v = v.T
        out[k] = np.ascontiguousarray(v)
    return unflatten(out)


def faceboxes_params(state: Mapping[str, np.ndarray]) -> dict:
    """``FaceBoxesNet`` state dict (an optional ``module.`` prefix dropped) -> params."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state_to_params(state, faceboxes.param_shapes(), "FaceBoxes' FaceBoxesProd.pth")


def mobilenet_params(state: Mapping[str, np.ndarray], widen_factor: float) -> dict:
    """3DDFA_V2 MobileNet checkpoint state dict -> params, renamed as the reference's
    ``load_model``: ``module.`` dropped, ``fc_param`` -> ``fc``, other keys the model lacks
    (``fc_lm``) left out."""
    renamed = {}
    for k, v in state.items():
        k = k.replace("module.", "")
        if k in ("fc_param.weight", "fc_param.bias"):
            k = k.replace("fc_param", "fc")
        elif k.startswith("fc_lm."):
            continue
        renamed[k] = v
    return state_to_params(renamed, tddfa.param_shapes(widen_factor),
                           f"a 3DDFA_V2 MobileNet checkpoint with widen factor {widen_factor}")


def _array(d: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    if key not in d:
        raise DataError(f"{where}: no {key!r} array (has {', '.join(map(str, d)) or 'nothing'})")
    v = d[key]
    if not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf":
        raise DataError(f"{where}: {key!r} is not a numeric array")
    return v


def _pickle_dict(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = safe_load_arrays(f, name=str(path))
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r}: expected a pickled dict of arrays, got "
                        f"{type(obj).__name__}")
    return obj


def mean_std_params(d: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """``{"mean": [62], "std": [62]}`` -> ``{"param_mean", "param_std"}`` float32."""
    out = {}
    for key in ("mean", "std"):
        v = _array(d, key, where)
        if v.size != tddfa.NUM_PARAMS:
            raise DataError(f"{where}: {key!r} has {v.size} values, expected "
                            f"{tddfa.NUM_PARAMS} (the 62-d 3DMM parameters)")
        out[f"param_{key}"] = v.reshape(-1).astype(np.float32)
    if not np.all(np.isfinite(out["param_std"])) or not np.all(out["param_std"] > 0):
        raise DataError(f"{where}: 'std' must be finite and positive")
    return out


def bfm_params(d: Mapping[str, Any], where: str) -> tuple[dict[str, np.ndarray], int]:
    """The BFM pickle's ``u`` [3N(, 1)], ``w_shp`` [3N, >=40], ``w_exp`` [3N, >=10] and
    ``keypoints`` [204] (indices into the 3N rows) -> the whole ``u`` and the keypoint rows
    (float32), and N. Shapes are checked against each other."""
    u, w_shp, w_exp, kp = (_array(d, k, where) for k in ("u", "w_shp", "w_exp", "keypoints"))
    if u.ndim not in (1, 2) or (u.ndim == 2 and u.shape[1] != 1):
        raise DataError(f"{where}: 'u' has shape {u.shape}, expected [3N] or [3N, 1]")
    rows = u.shape[0]
    if rows == 0 or rows % 3:
        raise DataError(f"{where}: 'u' has {rows} rows, expected 3 per vertex (x, y, z)")
    for name, w, dim in (("w_shp", w_shp, SHAPE_DIM), ("w_exp", w_exp, EXP_DIM)):
        if w.ndim != 2 or w.shape[0] != rows or w.shape[1] < dim:
            raise DataError(f"{where}: {name!r} has shape {w.shape}, expected [{rows}, >={dim}] "
                            f"(rows of 'u' x basis vectors; TDDFA uses the first {dim})")
    if kp.dtype.kind not in "iu":
        raise DataError(f"{where}: 'keypoints' are not integer indices (dtype {kp.dtype})")
    kp = kp.reshape(-1).astype(np.int64)
    if kp.size != 3 * NUM_LANDMARKS:
        raise DataError(f"{where}: 'keypoints' has {kp.size} indices, expected "
                        f"{3 * NUM_LANDMARKS} (x, y, z rows of {NUM_LANDMARKS} landmarks)")
    if kp.min() < 0 or kp.max() >= rows:
        raise DataError(f"{where}: 'keypoints' index rows outside 0..{rows - 1} of 'u' "
                        f"(min {kp.min()}, max {kp.max()})")
    out = {"u": u.reshape(-1).astype(np.float32),
           "u_base": u.reshape(-1)[kp].astype(np.float32),
           "w_shp_base": w_shp[kp, :SHAPE_DIM].astype(np.float32),
           "w_exp_base": w_exp[kp, :EXP_DIM].astype(np.float32),
           "keypoints": kp}
    for k, v in out.items():
        if not np.all(np.isfinite(v)):
            raise DataError(f"{where}: {k.removesuffix('_base')!r} holds NaN/inf values")
    return out, rows // 3


def convert(src: str | os.PathLike, dst: str | os.PathLike, arch: str = "mb1") -> Path:
    """Convert the clone ``src`` into ``dst`` (``arch``: mb1 or mb05); returns ``dst``."""
    if arch not in tddfa.ARCHS:
        raise DataError(f"unknown --arch {arch!r} (choose from {', '.join(tddfa.ARCHS)})")
    root = Path(src)
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a directory (expected a git clone of "
                        "cleardusk/3DDFA_V2)")
    files = source_files(arch)
    missing = [rel for rel in files.values() if not (root / rel).is_file()]
    if missing:
        raise DataError(f"{str(root)!r} is not a complete clone of cleardusk/3DDFA_V2: missing "
                        + ", ".join(f"{rel} (at {root / rel})" for rel in missing))
    wf = tddfa.ARCHS[arch]
    fb = faceboxes_params(load_torch_file(root / files["faceboxes"]))
    net = mobilenet_params(load_torch_file(root / files["mobilenet"]), wf)
    ms_path, bfm_path = root / files["param_mean_std"], root / files["bfm"]
    ms = mean_std_params(_pickle_dict(ms_path), str(ms_path))
    bfm, n_vertices = bfm_params(_pickle_dict(bfm_path), str(bfm_path))
    params = {"faceboxes": fb, "mobilenet": net, "bfm": bfm, **ms}
    check_tree(params, param_shapes(wf, n_vertices), what="converted 3DDFA_V2 params")
    save_params(dst, params, {
        "model": MODEL_NAME, "arch": arch, "widen_factor": wf,
        "input_size": tddfa.INPUT_SIZE, "num_landmarks": NUM_LANDMARKS,
        "bfm_vertices": n_vertices,
        "sources": {rel: file_sha256(root / rel) for rel in files.values()}})
    return Path(dst)


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m convert_weights.tddfa",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a git clone of cleardusk/3DDFA_V2")
    ap.add_argument("dst", help="output directory, e.g. checkpoints/tddfa")
    ap.add_argument("--arch", choices=sorted(tddfa.ARCHS), default="mb1",
                    help="3DMM regressor: MobileNet widen 1.0 (mb1) or 0.5 (mb05)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    out = convert(a.src, a.dst, a.arch)
    print(f"converted 3DDFA_V2 (FaceBoxes, MobileNet {a.arch}, BFM landmarks) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
