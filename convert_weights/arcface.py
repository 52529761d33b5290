"""Convert ArcFace face-recognition weights to jaxhead's layout.

    python -m convert_weights.arcface SRC DST

SRC, recognised by its content:

* ``*.onnx``: insightface's ``w600k_r50.onnx`` (the ``buffalo_l`` pack; any ``arcface_torch``
  iresnet exported with ``torch.onnx.export``). Only the ``onnx`` package is needed (no
  runtime): the initializers are matched to the network by walking the graph from its input
  (stem Conv [BatchNormalization] PRelu; per block BatchNormalization, Conv, PRelu, Conv, a
  downsampling Conv on the shortcut, Add; then BatchNormalization, Flatten, Gemm,
  BatchNormalization), never by tensor names, which differ between exports. BatchNorms that
  follow a conv or the Gemm are folded into it (the exporter already does that for convs);
  strides, paddings and kernel sizes are checked against the architecture.
* an ``arcface_torch`` backbone state dict (``backbone.pth``: ``conv1.weight``,
  ``layer1.0.bn1.weight``, ..., ``features.running_var``): folded the same way.
* TreB1eN's IR-SE state dict (``model_ir_se50.pth`` of pSp / e4e / PTI: ``input_layer.0.
  weight``, ``body.N.res_layer.M...``, ``output_layer.3.weight``), kept as it is (transposed).

``.pth`` files are read with ``torch.load(weights_only=True)``. DST gets ``params.safetensors``
+ ``config.json`` (load with ``jaxhead.models.arcface.load_arcface``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from convert_weights.common import file_sha256
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models.arcface import ArcFaceConfig, param_shapes
from jaxhead.models.iresnet import BN_EPS, FINAL_SIZE
from jaxhead.utils.params_io import check_tree, flatten, save_params, unflatten

BN_KEYS = ("weight", "bias", "running_mean", "running_var")
FC_PATHS = ("fc/weight", "output_layer/3/weight")  # Linear after an NCHW flatten
IGNORED_SUFFIX = ".num_batches_tracked"


# --- layouts and folding ------------------------------------------------------------------

def fold_bn(w: np.ndarray, b: np.ndarray | None, bn: Mapping[str, np.ndarray],
            eps: float) -> tuple[np.ndarray, np.ndarray]:
    """A conv ``[O, I, kh, kw]`` or Linear ``[O, I]`` (bias ``b`` or none) followed by an
    eval-mode BatchNorm -> one conv / Linear with bias (float64 arithmetic, float32 out)."""
    s = np.asarray(bn["weight"], np.float64) / np.sqrt(
        np.asarray(bn["running_var"], np.float64) + eps)
    b = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
    w2 = np.asarray(w, np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))
    b2 = (b - np.asarray(bn["running_mean"], np.float64)) * s + np.asarray(bn["bias"],
                                                                          np.float64)
    return w2.astype(np.float32), b2.astype(np.float32)


def keep_bn(bn: Mapping[str, np.ndarray], eps: float) -> dict[str, np.ndarray]:
    """A BatchNorm that stays one, with its epsilon moved into ``running_var`` when it is not
    the runtime's 1e-5 (``var + eps`` is what the normalisation uses)."""
    out = {k: np.asarray(bn[k], np.float32) for k in BN_KEYS}
    if abs(eps - BN_EPS) > 1e-12:
        out["running_var"] = (out["running_var"].astype(np.float64) + eps - BN_EPS).astype(
            np.float32)
    return out


def torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of the jaxhead leaf ``path`` of ``shape``."""
    if path in FC_PATHS:
        kh, kw, c, d = shape
        return (d, c * kh * kw)
    if len(shape) == 4:
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    return shape


def to_jax(flat: Mapping[str, np.ndarray], cfg: ArcFaceConfig) -> dict:
    """``{"a/b/weight": PyTorch-layout array}`` -> nested jaxhead params, checked against
    ``param_shapes(cfg)``: conv OIHW -> HWIO; the fc after the NCHW flatten ``[D, C*7*7]`` ->
    ``[7, 7, C, D]`` (NHWC flatten order)."""
    out = {}
    for path, v in flat.items():
        v = np.asarray(v, np.float32)
        if path in FC_PATHS:
            v = v.reshape(v.shape[0], -1, FINAL_SIZE, FINAL_SIZE).transpose(2, 3, 1, 0)
        elif v.ndim == 4:
            v = v.transpose(2, 3, 1, 0)
        out[path] = np.ascontiguousarray(v)
    params = unflatten(out)
    try:
        check_tree(params, param_shapes(cfg), what="converted ArcFace params")
    except ValueError as e:
        raise DataError(str(e)) from None
    return params


def _report(what: str, missing: list, unexpected: list, wrong: list) -> None:
    if missing or unexpected or wrong:
        lines = [f"the file is not {what}:"]
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong)):
            if items:
                lines.append(f"  {name} ({len(items)}): " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        raise DataError("\n".join(lines))


def _check_state(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                 what: str) -> None:
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(np.shape(state[k]))} != expected {s}" for k, s in expected.items()
             if k in state and tuple(np.shape(state[k])) != s]
    unexpected = sorted(k for k in state if k not in expected
                        and not k.endswith(IGNORED_SUFFIX))
    _report(what, missing, unexpected, wrong)


# --- PyTorch state dicts ------------------------------------------------------------------

def _count(state: Mapping[str, np.ndarray], pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


def iresnet_state_config(state: Mapping[str, np.ndarray]) -> ArcFaceConfig:
    """The iresnet configuration of an arcface_torch backbone state dict."""
    try:
        layers = tuple(_count(state, rf"layer{s}\.(\d+)\.conv1\.weight") for s in (1, 2, 3, 4))
        widths = tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in (1, 2, 3, 4))
        return ArcFaceConfig("iresnet", layers, widths, int(state["conv1.weight"].shape[0]),
                             int(state["fc.weight"].shape[0]))
    except (KeyError, ValueError) as e:
        raise DataError(f"not an arcface_torch iresnet state dict ({e})") from None


def convert_iresnet_state(state: Mapping[str, np.ndarray]) -> tuple[ArcFaceConfig, dict]:
    """arcface_torch ``IResNet`` state dict (numpy) -> (config, params), BatchNorms after
    convs and the fc folded into them."""
    cfg = iresnet_state_config(state)
    stem, d = cfg.stem, cfg.embedding_dim
    exp: dict[str, tuple] = {"conv1.weight": (stem, 3, 3, 3), "prelu.weight": (stem,)}
    exp.update({f"bn1.{k}": (stem,) for k in BN_KEYS})
    cin = stem
    for s, (n, c) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
        for i in range(n):
            b = f"layer{s + 1}.{i}."
            exp.update({b + "conv1.weight": (c, cin, 3, 3), b + "conv2.weight": (c, c, 3, 3),
                        b + "prelu.weight": (c,)})
            for bn, ch in (("bn1", cin), ("bn2", c), ("bn3", c)):
                exp.update({f"{b}{bn}.{k}": (ch,) for k in BN_KEYS})
            if i == 0:
                exp[b + "downsample.0.weight"] = (c, cin, 1, 1)
                exp.update({f"{b}downsample.1.{k}": (c,) for k in BN_KEYS})
            cin = c
    exp.update({f"bn2.{k}": (cin,) for k in BN_KEYS})
    exp.update({"fc.weight": (d, cin * FINAL_SIZE ** 2), "fc.bias": (d,)})
    exp.update({f"features.{k}": (d,) for k in BN_KEYS})
    _check_state(state, exp, "an arcface_torch iresnet state dict")

    def bn(prefix):
        return {k: state[f"{prefix}.{k}"] for k in BN_KEYS}

    flat = {}
    flat["conv1/weight"], flat["conv1/bias"] = fold_bn(state["conv1.weight"], None, bn("bn1"),
                                                       BN_EPS)
    flat["prelu/weight"] = state["prelu.weight"]
    for s, n in enumerate(cfg.layers):
        for i in range(n):
            t, o = f"layer{s + 1}.{i}", f"layer{s + 1}/{i}"
            for k, v in keep_bn(bn(f"{t}.bn1"), BN_EPS).items():
                flat[f"{o}/bn1/{k}"] = v
            for conv, bnn in (("conv1", "bn2"), ("conv2", "bn3")):
                flat[f"{o}/{conv}/weight"], flat[f"{o}/{conv}/bias"] = fold_bn(
                    state[f"{t}.{conv}.weight"], None, bn(f"{t}.{bnn}"), BN_EPS)
            flat[f"{o}/prelu/weight"] = state[f"{t}.prelu.weight"]
            if i == 0:
                flat[f"{o}/downsample/weight"], flat[f"{o}/downsample/bias"] = fold_bn(
                    state[f"{t}.downsample.0.weight"], None, bn(f"{t}.downsample.1"), BN_EPS)
    for k, v in keep_bn(bn("bn2"), BN_EPS).items():
        flat[f"bn2/{k}"] = v
    flat["fc/weight"], flat["fc/bias"] = fold_bn(state["fc.weight"], state["fc.bias"],
                                                 bn("features"), BN_EPS)
    return cfg, to_jax(flat, cfg)


def irse_state_config(state: Mapping[str, np.ndarray]) -> ArcFaceConfig:
    """The IR-SE configuration of a TreB1eN ``Backbone`` state dict. Stages start at the first
    unit and wherever the width changes (true of IR-SE 50 / 100 / 152)."""
    try:
        n = _count(state, r"body\.(\d+)\.res_layer\.1\.weight")
        depths = [int(state[f"body.{i}.res_layer.1.weight"].shape[0]) for i in range(n)]
        layers, widths = [], []
        for c in depths:
            if widths and c == widths[-1]:
                layers[-1] += 1
            else:
                layers.append(1)
                widths.append(c)
        return ArcFaceConfig("ir_se", tuple(layers), tuple(widths),
                             int(state["input_layer.0.weight"].shape[0]),
                             int(state["output_layer.3.weight"].shape[0]))
    except (KeyError, ValueError) as e:
        raise DataError(f"not a TreB1eN IR-SE state dict ({e})") from None


def convert_irse_state(state: Mapping[str, np.ndarray]) -> tuple[ArcFaceConfig, dict]:
    """TreB1eN / pSp IR-SE state dict (numpy) -> (config, params); names kept, layouts
    transposed."""
    cfg = irse_state_config(state)
    expected = {p.replace("/", "."): (p, torch_shape(p, s))
                for p, s in flatten(param_shapes(cfg)).items()}
    _check_state(state, {k: s for k, (_, s) in expected.items()}, "a TreB1eN IR-SE state dict")
    return cfg, to_jax({p: state[k] for k, (p, _) in expected.items()}, cfg)


# --- ONNX ---------------------------------------------------------------------------------

class OnnxGraph:
    """An ONNX graph as constants (initializers, Constant nodes, shape ops on them) and
    consumers of each activation tensor."""

    SHAPE_OPS = ("Unsqueeze", "Squeeze", "Reshape", "Identity", "Cast")

    def __init__(self, model):
        from onnx import helper, numpy_helper

        self._attr = helper.get_attribute_value
        g = model.graph
        self.const = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in g.node:
            if node.op_type == "Constant":
                self.const[node.output[0]] = numpy_helper.to_array(self._attr(node.attribute[0]))
            elif node.op_type in self.SHAPE_OPS and node.input[0] in self.const:
                self.const[node.output[0]] = np.asarray(self.const[node.input[0]])  # values
            else:
                for name in node.input:
                    self.consumers[name].append(node)
        self.inputs = [i for i in g.input if i.name not in self.const]
        self.outputs = {o.name for o in g.output}

    def attrs(self, node) -> dict:
        return {a.name: self._attr(a) for a in node.attribute}

    def value(self, name: str) -> np.ndarray:
        if name not in self.const:
            raise DataError(f"unexpected ONNX graph: {name!r} is not a constant")
        return np.asarray(self.const[name])

    def after(self, tensor: str, *ops: str):
        """The one node that reads ``tensor`` (through Identity / Dropout), of type ``ops``."""
        cons = self.consumers.get(tensor, [])
        while len(cons) == 1 and cons[0].op_type in ("Identity", "Dropout"):
            tensor = cons[0].output[0]
            cons = self.consumers.get(tensor, [])
        if len(cons) != 1 or cons[0].op_type not in ops:
            found = ", ".join(c.op_type for c in cons) or "nothing"
            raise DataError(f"unexpected ONNX graph: after {tensor!r} expected "
                            f"{' or '.join(ops)}, found {found}")
        return cons[0]

    def slope(self, node, channels: int) -> np.ndarray:
        """A PRelu's slopes as ``[channels]`` (exports store ``[C, 1, 1]``, or one shared)."""
        v = self.value(node.input[1]).reshape(-1)
        if v.size not in (1, channels):
            raise DataError(f"unexpected ONNX graph: PRelu {node.name!r} has {v.size} slopes "
                            f"for {channels} channels")
        return np.broadcast_to(v, (channels,)).astype(np.float32)

    def batch_norm(self, node) -> tuple[dict, float]:
        p = dict(zip(BN_KEYS, (self.value(n) for n in node.input[1:5]), strict=True))
        return p, float(self.attrs(node).get("epsilon", 1e-5))

    def conv(self, node, k: int, pad: int, strides: tuple[int, ...] = (1,)):
        """A Conv with a ``k``x``k`` kernel, padding ``pad``, stride in ``strides``, and a
        BatchNormalization after it folded in -> (weight OIHW, bias, stride, output)."""
        a = self.attrs(node)
        w = self.value(node.input[1])
        stride = list(a.get("strides", [1, 1]))
        got = (list(w.shape[2:]), list(a.get("pads", [0] * 4)), a.get("group", 1),
               list(a.get("dilations", [1, 1])), stride[0])
        if (list(got[:4]) != [[k, k], [pad] * 4, 1, [1, 1]] or stride[0] != stride[1]
                or stride[0] not in strides or a.get("auto_pad", b"NOTSET") != b"NOTSET"):
            raise DataError(f"unexpected ONNX graph: Conv {node.name!r} has kernel/pads/group/"
                            f"dilations/stride {got}, expected a {k}x{k} conv with padding "
                            f"{pad} and stride in {strides}")
        b = self.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        cons = self.consumers.get(out, [])
        if len(cons) == 1 and cons[0].op_type == "BatchNormalization":  # an unfolded export
            bn, eps = self.batch_norm(cons[0])
            w, b = fold_bn(w, b, bn, eps)
            out = cons[0].output[0]
        elif b is None:
            b = np.zeros(w.shape[0], np.float32)
        return w, b, stride[0], out


def convert_onnx(model) -> tuple[ArcFaceConfig, dict]:
    """An ONNX iresnet (``onnx.ModelProto``) -> (config, params). Raises ``DataError`` where
    the graph is not the iresnet architecture."""
    g = OnnxGraph(model)
    if len(g.inputs) != 1:
        raise DataError(f"expected one image input, the ONNX graph has {len(g.inputs)}")
    x = g.inputs[0].name
    dims = [d.dim_value for d in g.inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and any(dims[1:]) and dims[1:] != [3, 112, 112]:
        raise DataError(f"expected a [N, 3, 112, 112] input, the ONNX graph has {dims}")
    first = g.consumers.get(x, [])
    if any(n.op_type in ("Sub", "Mul") for n in first):
        raise DataError("the ONNX graph normalises its input itself (an MXNet-era export); "
                        "only arcface_torch exports (w600k_r50.onnx) are supported")
    flat: dict[str, np.ndarray] = {}
    w, b, _, h = g.conv(g.after(x, "Conv"), 3, 1)
    flat["conv1/weight"], flat["conv1/bias"] = w, b
    pr = g.after(h, "PRelu")
    stem = w.shape[0]
    flat["prelu/weight"] = g.slope(pr, stem)
    x = pr.output[0]
    blocks = []  # (params, has_downsample, stride, width)
    while True:
        cons = g.consumers.get(x, [])
        if len(cons) == 1:
            break  # bn2 -> Flatten: the head
        bns = [n for n in cons if n.op_type == "BatchNormalization"]
        convs = [n for n in cons if n.op_type == "Conv"]
        if len(bns) != 1 or len(convs) > 1 or len(cons) != 2:
            raise DataError(f"unexpected ONNX graph: block input {x!r} feeds "
                            f"{[n.op_type for n in cons]}, expected BatchNormalization and "
                            "Add or a downsampling Conv")
        p = {}
        bn, eps = g.batch_norm(bns[0])
        p["bn1"] = keep_bn(bn, eps)
        w1, b1, _, h = g.conv(g.after(bns[0].output[0], "Conv"), 3, 1)
        pr = g.after(h, "PRelu")
        w2, b2, stride, h = g.conv(g.after(pr.output[0], "Conv"), 3, 1, (1, 2))
        add = g.after(h, "Add")
        other = [t for t in add.input if t != h]
        p.update({"conv1": {"weight": w1, "bias": b1},
                  "prelu": {"weight": g.slope(pr, w1.shape[0])},
                  "conv2": {"weight": w2, "bias": b2}})
        if convs:
            wd, bd, sd, hd = g.conv(convs[0], 1, 0, (stride,))
            p["downsample"] = {"weight": wd, "bias": bd}
            ok = other == [hd] and stride == 2
        else:
            ok = other == [x] and stride == 1
        if not ok:
            raise DataError(f"unexpected ONNX graph: block Add {add.name!r} (stride {stride}) "
                            "does not add the block input or its strided 1x1 conv")
        blocks.append((p, bool(convs), w1.shape[0]))
        x = add.output[0]
    # head: bn2 -> Flatten -> Gemm (-> features BatchNorm)
    bn2 = g.after(x, "BatchNormalization")
    bn, eps = g.batch_norm(bn2)
    flat.update({f"bn2/{k}": v for k, v in keep_bn(bn, eps).items()})
    flat_node = g.after(bn2.output[0], "Flatten", "Reshape")
    if flat_node.op_type == "Flatten" and g.attrs(flat_node).get("axis", 1) != 1:
        raise DataError("unexpected ONNX graph: Flatten with axis != 1")
    fc = g.after(flat_node.output[0], "Gemm", "MatMul")
    a = g.attrs(fc)
    if fc.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise DataError("unexpected ONNX graph: Gemm with transA, alpha or beta")
        wf = g.value(fc.input[1])
        wf = wf if a.get("transB", 0) else wf.T
        bf = g.value(fc.input[2]) if len(fc.input) > 2 else np.zeros(wf.shape[0], np.float32)
        out = fc.output[0]
    else:
        wf = g.value(fc.input[1]).T
        add = g.after(fc.output[0], "Add")
        bf = g.value(next(t for t in add.input if t != fc.output[0]))
        out = add.output[0]
    cons = g.consumers.get(out, [])
    if len(cons) == 1 and cons[0].op_type == "BatchNormalization":  # features (BatchNorm1d)
        bn, eps = g.batch_norm(cons[0])
        wf, bf = fold_bn(wf, bf, bn, eps)
        out = cons[0].output[0]
    if out not in g.outputs or g.consumers.get(out):
        raise DataError(f"unexpected ONNX graph: {out!r} after the fc is not the output")
    flat["fc/weight"], flat["fc/bias"] = wf, bf
    # stages: a block with a downsampling shortcut starts one
    if not blocks or not blocks[0][1]:
        raise DataError("unexpected ONNX graph: the first block has no downsampling shortcut")
    layers, widths = [], []
    for p, starts, width in blocks:
        if starts:
            layers.append(0)
            widths.append(int(width))
        for name, leaf in _flat_items(p):
            flat[f"layer{len(layers)}/{layers[-1]}/{name}"] = leaf
        layers[-1] += 1
    if len(layers) != 4:
        raise DataError(f"unexpected ONNX graph: {len(layers)} stages, an iresnet has 4")
    cfg = ArcFaceConfig("iresnet", tuple(layers), tuple(widths), int(stem), int(wf.shape[0]))
    return cfg, to_jax(flat, cfg)


def _flat_items(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat_items(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


# --- CLI ----------------------------------------------------------------------------------

def read_onnx(src: Path):
    """An ONNX model with its external data (``onnx.ModelProto``). Each tensor's external
    ``location`` must name a file inside ``src``'s folder (:func:`~convert_weights.common.inside`);
    an unreadable model is a :class:`DataError` naming ``src``."""
    import onnx  # convert extra
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model

    from convert_weights.common import inside

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # a protobuf DecodeError is not an OSError
        raise DataError(f"{str(src)!r} is not a readable ONNX model ({e})") from None
    tensors = [*model.graph.initializer,
               *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    external = [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        location = ExternalDataInfo(t).location
        if not inside(src.parent, location, what=f"{str(src)!r} (tensor {t.name!r})").is_file():
            raise DataError(f"{str(src)!r}: tensor {t.name!r} keeps its data in {location!r}, "
                            f"which is not in {str(src.parent)!r}")
    if external:
        try:
            load_external_data_for_model(model, str(src.parent))
        except (OSError, ValueError) as e:
            raise DataError(f"{str(src)!r}: cannot read its external data ({e})") from None
    return model


def convert_file(src: str | Path) -> tuple[ArcFaceConfig, dict, str]:
    """Any supported SRC -> (config, params, description of what it was)."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"weights file not found: {str(src)!r}")
    if src.suffix == ".onnx":
        model = read_onnx(src)
        try:
            return (*convert_onnx(model), "insightface iresnet (ONNX)")
        except DataError as e:
            raise DataError(f"{str(src)!r}: {e}") from None
    from convert_weights.common import load_torch_file

    state = load_torch_file(src)
    if "input_layer.0.weight" in state:
        return (*convert_irse_state(state), "TreB1eN IR-SE")
    if "layer1.0.bn1.weight" in state:
        return (*convert_iresnet_state(state), "arcface_torch iresnet")
    raise DataError(f"{str(src)!r} is neither an IR-SE (input_layer.0.weight) nor an "
                    "arcface_torch iresnet (layer1.0.bn1.weight) state dict")



def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.arcface",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="w600k_r50.onnx (insightface buffalo_l), an arcface_torch "
                                "backbone .pth, or model_ir_se50.pth (pSp / e4e)")
    ap.add_argument("dst", help="output directory (params.safetensors + config.json)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    cfg, params, kind = convert_file(a.src)
    save_params(a.dst, params, {**cfg.to_json(), "source": Path(a.src).name,
                                "source_sha256": file_sha256(a.src)})
    print(f"converted {kind} {Path(a.src).name} (layers {list(cfg.layers)}, widths "
          f"{list(cfg.widths)}, {cfg.embedding_dim}-d) -> {a.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
