"""Convert Depth Anything V2 weights to jaxhead's Flax layout.

    python -m convert_weights.depth_anything SRC DST [--num-heads N] [--layers 2,5,8,11]

SRC is either the official state dict ``depth_anything_v2_vit{s,b,l}.pth`` (read with
``torch.load(weights_only=True)``; the architecture is inferred from tensor shapes) or a
transformers ``DepthAnythingForDepthEstimation`` folder (``config.json`` + ``*.safetensors``). Both
name layouts give the same Flax params: transformers names are first renamed to the official ones
(q/k/v fused into ``qkv``), then one rule set maps official names to Flax paths and layouts.
DST gets ``params.safetensors`` + ``config.json`` (load with
``jaxhead.models.depth_anything.load``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convert_weights.common import load_torch_file
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models.depth_anything import CONFIGS, DepthAnythingConfig, DepthAnythingV2
from jaxhead.utils.params_io import (
    check_tree,
    data_errors,
    flatten,
    read_json,
    save_params,
    unflatten,
)

# Present in every checkpoint but never used by the forward pass: DINOv2's masked-token
# embedding (pre-training only) and the deepest fusion block's skip unit (it has no skip input).
UNUSED = (re.compile(r"^pretrained\.mask_token$"),
          re.compile(r"^depth_head\.scratch\.refinenet4\.resConfUnit1\."))

# Official layer choice per ViT depth (dpt.py ``intermediate_layer_idx``; vits/vitb share 12).
OFFICIAL_LAYERS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23)}

# transformers name -> official name (applied in order; first match wins). q/k/v handled apart.
_Sub = str | Callable[[re.Match], str]
_HF_RULES: list[tuple[re.Pattern, _Sub]] = [(re.compile(p), r) for p, r in [
    (r"^backbone\.embeddings\.cls_token$", "pretrained.cls_token"),
    (r"^backbone\.embeddings\.mask_token$", "pretrained.mask_token"),
    (r"^backbone\.embeddings\.position_embeddings$", "pretrained.pos_embed"),
    (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
    (r"^backbone\.encoder\.layer\.(\d+)\.(norm[12])\.", r"pretrained.blocks.\1.\2."),
    (r"^backbone\.encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.",
     r"pretrained.blocks.\1.attn.proj."),
    (r"^backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$",
     r"pretrained.blocks.\1.ls\2.gamma"),
    (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"pretrained.blocks.\1.mlp.\2."),
    (r"^backbone\.layernorm\.", "pretrained.norm."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
    (r"^neck\.convs\.(\d)\.", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn."),
    (r"^neck\.fusion_stage\.layers\.(\d)\.projection\.",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.out_conv."),
    (r"^neck\.fusion_stage\.layers\.(\d)\.residual_layer([12])\.convolution([12])\.",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
    (r"^head\.conv1\.", "depth_head.scratch.output_conv1."),
    (r"^head\.conv2\.", "depth_head.scratch.output_conv2.0."),
    (r"^head\.conv3\.", "depth_head.scratch.output_conv2.2."),
]]
# q/k/v in transformers v4 files (attention.attention.query) and v5 modules (attention.q_proj).
_HF_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\."
                     r"(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """``"official"`` (keys under ``pretrained.`` / ``depth_head.``) or ``"transformers"``
    (``backbone.`` / ``neck.`` / ``head.``)."""
    keys = list(state_dict)
    if any(k.startswith(("pretrained.", "depth_head.")) for k in keys):
        return "official"
    if any(k.startswith(("backbone.", "neck.")) for k in keys):
        return "transformers"
    raise DataError("not a Depth Anything V2 state dict: expected keys under 'pretrained.' / "
                    f"'depth_head.' (official) or 'backbone.' / 'neck.' (transformers); got "
                    f"{keys[:5]}")


def transformers_to_official(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a transformers state dict to the official names. Unknown keys raise."""
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unknown = []
    for k, v in sd.items():
        m = _HF_QKV.match(k)
        if m:
            part = (m[2] or m[3])[0]  # q / k / v
            qkv.setdefault((m[1], m[4]), {})[part] = v
            continue
        for pat, rep in _HF_RULES:
            if pat.match(k):
                out[pat.sub(rep, k)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise DataError(f"unexpected transformers keys ({len(unknown)}): "
                        + ", ".join(sorted(unknown)[:20]))
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise DataError(f"layer {layer}: attention {kind} has only {sorted(parts)} of q/k/v")
        out[f"pretrained.blocks.{layer}.attn.qkv.{kind}"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def official_to_flax(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Official names -> Flax variables ``{"params": ...}`` (conv OIHW->HWIO, ConvTranspose
    IOHW->HWIO, linear .T, norm weight->scale). Unused tensors (:data:`UNUSED`) are dropped."""
    flat: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if any(p.search(k) for p in UNUSED):
            continue
        path = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", k)  # ModuleList items: blocks.3 -> blocks_3
        *mods, leaf = path.split(".")
        v = np.asarray(v, dtype=np.float32)
        if leaf == "weight":
            if v.ndim == 4 and mods[-1] in ("resize_layers_0", "resize_layers_1"):
                leaf, v = "kernel", v.transpose(2, 3, 0, 1)  # ConvTranspose2d [in, out, kh, kw]
            elif v.ndim == 4:
                leaf, v = "kernel", v.transpose(2, 3, 1, 0)
            elif v.ndim == 2:
                leaf, v = "kernel", v.T
            elif v.ndim == 1:
                leaf = "scale"
        flat["/".join(["params", *mods, leaf])] = v  # views; save_params makes them contiguous
    return unflatten(flat)


def config_from_official(sd: Mapping[str, np.ndarray], *, num_heads: int | None = None,
                         layers: tuple[int, ...] | None = None) -> DepthAnythingConfig:
    """Infer the architecture from official tensor shapes. Heads default to ``embed_dim // 64``
    (all DINOv2 sizes) and layers to the official choice for 12 / 24 blocks."""
    if any(k.startswith("depth_head.readout_projects") for k in sd):
        raise DataError("use_clstoken=True checkpoints are not supported (no official model)")
    if any(".bn1." in k or ".bn2." in k for k in sd):
        raise DataError("use_bn=True checkpoints are not supported (no official model)")
    if any(".mlp.w12." in k for k in sd):
        raise DataError("SwiGLU (ViT-G) checkpoints are not supported")
    need = ["pretrained.cls_token", "pretrained.pos_embed", "pretrained.patch_embed.proj.weight",
            "pretrained.blocks.0.mlp.fc1.weight", "depth_head.scratch.layer1_rn.weight",
            "depth_head.scratch.output_conv2.0.weight"] + [
            f"depth_head.projects.{i}.weight" for i in range(4)]
    missing = [k for k in need if k not in sd]
    if missing:
        raise DataError(f"official checkpoint is missing {missing}")
    dim = sd["pretrained.cls_token"].shape[-1]
    depth = 1 + max(int(m[1]) for k in sd if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k)))
    if layers is None:
        if depth not in OFFICIAL_LAYERS:
            raise DataError(f"no official layer choice for a {depth}-block ViT; pass --layers")
        layers = OFFICIAL_LAYERS[depth]
    return DepthAnythingConfig(
        embed_dim=dim, depth=depth, num_heads=num_heads or dim // 64,
        mlp_ratio=sd["pretrained.blocks.0.mlp.fc1.weight"].shape[0] / dim,
        patch_size=sd["pretrained.patch_embed.proj.weight"].shape[-1],
        pos_grid=math.isqrt(sd["pretrained.pos_embed"].shape[1] - 1),
        intermediate_layers=tuple(layers),
        features=sd["depth_head.scratch.layer1_rn.weight"].shape[0],
        out_channels=tuple(sd[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)),
        head_hidden=sd["depth_head.scratch.output_conv2.0.weight"].shape[0],
        interpolate_offset=0.1)


def config_from_transformers(cfg: Mapping[str, Any]) -> DepthAnythingConfig:
    """Architecture from a transformers ``DepthAnythingConfig`` dict (``config.json``)."""
    bb = cfg.get("backbone_config") or {}
    checks = {
        "model_type": (cfg.get("model_type"), "depth_anything"),
        "backbone model_type": (bb.get("model_type"), "dinov2"),
        "depth_estimation_type": (cfg.get("depth_estimation_type", "relative"), "relative"),
        "reassemble_factors": (list(cfg.get("reassemble_factors", [4, 2, 1, 0.5])),
                               [4, 2, 1, 0.5]),
        "head_in_index": (cfg.get("head_in_index", -1), -1),
        "use_swiglu_ffn": (bb.get("use_swiglu_ffn", False), False),
        "hidden_act": (bb.get("hidden_act", "gelu"), "gelu"),
        "apply_layernorm": (bb.get("apply_layernorm", True), True),
        "qkv_bias": (bb.get("qkv_bias", True), True),
    }
    bad = {k: got for k, (got, want) in checks.items() if got != want}
    if bad:
        raise DataError(f"unsupported transformers Depth Anything config: {bad}")
    dim = bb["hidden_size"]
    if cfg.get("reassemble_hidden_size", dim) != dim:
        raise DataError("reassemble_hidden_size must equal the backbone hidden_size")
    patch = bb.get("patch_size", 14)
    return DepthAnythingConfig(
        embed_dim=dim, depth=bb["num_hidden_layers"], num_heads=bb["num_attention_heads"],
        mlp_ratio=float(bb.get("mlp_ratio", 4)), patch_size=patch,
        pos_grid=bb.get("image_size", 518) // patch,
        intermediate_layers=tuple(i - 1 for i in bb["out_indices"]),  # stage 0 = embeddings
        features=cfg["fusion_hidden_size"], out_channels=tuple(cfg["neck_hidden_sizes"]),
        head_hidden=cfg.get("head_hidden_size", 32),
        layer_norm_eps=bb.get("layer_norm_eps", 1e-6), interpolate_offset=0.0)


def convert_state_dict(sd: Mapping[str, np.ndarray], config: DepthAnythingConfig) -> dict:
    """Either layout -> Flax params, checked against the model's parameter shapes."""
    if detect_layout(sd) == "transformers":
        sd = transformers_to_official(sd)
    params = official_to_flax(sd)
    check_tree(params, DepthAnythingV2(config).param_shapes(),
               what="converted Depth Anything V2 parameters")
    return params


def read_source(src: str | Path, *, num_heads: int | None = None,
                layers: tuple[int, ...] | None = None
                ) -> tuple[dict[str, np.ndarray], DepthAnythingConfig, str]:
    """Read ``(state_dict, config, layout)`` from an official ``.pth`` or a transformers folder."""
    src = Path(src)
    if src.is_dir():
        cfg_file = src / "config.json"
        files = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
        if not cfg_file.is_file() or not files:
            raise FileNotFoundError(
                f"{str(src)!r} is not a transformers DepthAnythingForDepthEstimation folder: "
                f"need config.json and model*.safetensors (found {sorted(os.listdir(src))})")
        sd: dict[str, np.ndarray] = {}
        for f in files:
            sd.update(load_torch_file(f))
        if detect_layout(sd) != "transformers":
            raise DataError(f"{str(src)!r}: weights are not in the transformers layout")
        with data_errors(str(cfg_file)):
            cfg = config_from_transformers(read_json(cfg_file))
        return sd, cfg, "transformers"
    if "metric" in src.name:  # same tensor names, but a sigmoid * max_depth output head
        raise DataError(f"{src.name}: metric-depth checkpoints are not supported (relative only)")
    sd = load_torch_file(src)  # FileNotFoundError names the path
    if detect_layout(sd) != "official":
        raise DataError(f"{str(src)!r} holds transformers-layout weights; pass the folder "
                        "with its config.json instead of the weights file")
    with data_errors(str(src)):
        cfg = config_from_official(sd, num_heads=num_heads, layers=layers)
    for name, preset in CONFIGS.items():  # cross-check against the file name when it names one
        if name in src.name and preset != cfg:
            raise DataError(f"{src.name} looks like {name} but its tensors give {cfg}")
    return sd, cfg, "official"


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.depth_anything",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="depth_anything_v2_vit{s,b,l}.pth or a transformers folder")
    ap.add_argument("dst", help="output directory (params.safetensors + config.json)")
    ap.add_argument("--num-heads", type=int, default=None,
                    help="official layout only: attention heads (default embed_dim // 64)")
    ap.add_argument("--layers", default=None,
                    help="official layout only: comma-separated 0-based blocks for the head")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        layers = tuple(int(i) for i in a.layers.split(",")) if a.layers else None
    except ValueError:
        ap.error(f"--layers must be comma-separated block indices, got {a.layers!r}")
    sd, cfg, layout = read_source(a.src, num_heads=a.num_heads, layers=layers)
    params = convert_state_dict(sd, cfg)
    save_params(a.dst, params, {**cfg.to_dict(), "source": layout})
    n = sum(v.size for v in flatten(params).values())
    print(f"converted {layout} Depth Anything V2 ({cfg.embed_dim}-d, {cfg.depth} blocks, "
          f"{n / 1e6:.1f} M params) -> {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
