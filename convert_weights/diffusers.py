"""Convert Stable Diffusion 1.x weights (diffusers / original LDM layout) to jaxhead's format.

    python -m convert_weights.diffusers SRC DST [--vae PATH] [--controlnet [NAME=]PATH ...]
        [--tokenizer DIR] [--scheduler PATH] [--unet-heads 8] [--extract-ema]

SRC is one of
  * a diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``; weights ``.safetensors`` or ``.bin``, sharded or not, fp16
    variants accepted),
  * a single component folder (``unet/``, ``vae/``, ``text_encoder/`` or a ControlNet such as
    lllyasviel/sd-controlnet-depth): DST then *is* that component's directory,
  * a single-file original-layout SD 1.x checkpoint (``.safetensors`` / ``.ckpt``).

Output (pipeline / single file): ``DST/{unet,vae,text_encoder,controlnet_<name>}/`` each with
``params.safetensors`` + ``config.json`` (the diffusers / transformers config), ``DST/tokenizer/``
(copied), ``DST/scheduler/scheduler_config.json`` and ``DST/jaxhead_sd.json`` (what was written,
from where). Load with ``jaxhead.models.<net>.load(DST/<component>)``.

``.bin``/``.ckpt`` files are read with ``torch.load(weights_only=True)``. Unknown keys, missing
keys and shape mismatches raise an error naming them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convert_weights.common import load_torch_file, shard_files
from jaxhead.errors import ArgumentParser, DataError, UsageError, run_cli
from jaxhead.models import clip_text, controlnet, unet, vae
from jaxhead.utils.params_io import (
    data_errors,
    read_json,
    save_params,
    staged_directory,
    write_text_atomic,
)

MANIFEST = "jaxhead_sd.json"
# network class name -> (output sub-folder, state dict + config -> Flax params)
CONVERTERS = {
    "UNet2DConditionModel": ("unet", unet.convert),
    "ControlNetModel": ("controlnet", controlnet.convert),
    "AutoencoderKL": ("vae", vae.convert),
    "CLIPTextModel": ("text_encoder", clip_text.convert),
}
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# SD 1.x scheduler (DDIM, as used for distillation); written when a single file brings none.
SD15_SCHEDULER = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


# ----------------------------------------------------------------------------------------------
# Component folders
# ----------------------------------------------------------------------------------------------


def find_weights(folder: Path) -> list[Path]:
    """Weight files of a diffusers/transformers component folder, in load order.

    Prefers full-precision safetensors, then .bin, then fp16 variants; follows ``*.index.json``
    shard indexes.
    """
    for variant in ("", ".fp16"):
        for suffix in _WEIGHT_SUFFIXES:
            for name in _WEIGHT_NAMES:
                f = folder / f"{name}{variant}{suffix}"
                if f.is_file():
                    return [f]
                index = folder / f"{name}{variant}{suffix}.index.json"
                if index.is_file():
                    return shard_files(index)
    raise FileNotFoundError(
        f"no weights in {str(folder)!r}: expected one of "
        + ", ".join(f"{n}{s}" for n in _WEIGHT_NAMES for s in _WEIGHT_SUFFIXES)
        + " (or a sharded *.index.json, or an fp16 variant)")


def component_kind(config: Mapping[str, Any], where: Path) -> str:
    """Network class of a component ``config.json`` (diffusers ``_class_name`` or transformers
    ``architectures`` / ``model_type``)."""
    kind = config.get("_class_name")
    if kind is None:
        archs = config.get("architectures") or []
        is_clip = config.get("model_type") == "clip_text_model"
        if "CLIPTextModel" in archs or (not archs and is_clip):
            kind = "CLIPTextModel"
        else:
            kind = archs[0] if archs else config.get("model_type")
    if kind not in CONVERTERS:
        raise DataError(f"{str(where)!r}: unsupported network {kind!r} (supported: "
                        f"{', '.join(CONVERTERS)})")
    return kind


def read_component(folder: str | Path) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(network class, state dict, config) of a diffusers/transformers component folder."""
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json (not a diffusers/"
                                "transformers component folder)")
    config = read_json(cfg_file)
    if not isinstance(config, dict):
        raise DataError(f"{str(cfg_file)!r} does not hold a JSON object")
    kind = component_kind(config, folder)
    state: dict[str, np.ndarray] = {}
    for f in find_weights(folder):
        state.update(load_torch_file(f))
    return kind, state, config


def convert_state(kind: str, state: Mapping[str, np.ndarray], config: Mapping[str, Any],
                  dst: Path, *, source: str) -> None:
    """Convert one network's state dict and write ``dst/params.safetensors`` + ``config.json``."""
    _, fn = CONVERTERS[kind]
    try:
        params = fn(state, config)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    save_params(dst, params, dict(config))


def convert_component(folder: str | Path, dst: str | Path) -> str:
    """Convert a single component folder into ``dst``; returns its network class."""
    kind, state, config = read_component(folder)
    convert_state(kind, state, config, Path(dst), source=str(folder))
    return kind


# ----------------------------------------------------------------------------------------------
# Original (LDM / CompVis) single-file checkpoints
# ----------------------------------------------------------------------------------------------

_UNET = "model.diffusion_model."
_VAE = "first_stage_model."
_CLIP = "cond_stage_model.transformer."


def _need(state: Mapping[str, np.ndarray], key: str, what: str) -> np.ndarray:
    if key not in state:
        raise DataError(f"not an SD 1.x original-layout {what}: key {key!r} is missing")
    return state[key]


def ldm_unet_config(state: Mapping[str, np.ndarray], heads: int = 8) -> dict[str, Any]:
    """diffusers UNet config inferred from an LDM UNet state dict (``model.diffusion_model.``).

    The head count is not stored in the weights: SD 1.x uses ``heads`` (8) at every level; a
    linear-projection (SD 2.x style) UNet uses 64 channels per head.
    """
    p = _UNET
    conv_in = _need(state, f"{p}input_blocks.0.0.weight", "UNet")
    ops = sorted(int(m.group(1)) for k in state
                 if (m := re.fullmatch(re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight", k)))
    if not ops:
        raise DataError("not an SD 1.x original-layout UNet: no downsampling input blocks")
    n_res = ops[0] - 1
    levels = len(ops) + 1
    channels, down_types, depth = [], [], []
    use_linear, context_dim = False, None
    for lvl in range(levels):
        first = 1 + lvl * (n_res + 1)
        channels.append(int(_need(state, f"{p}input_blocks.{first}.0.out_layers.3.weight",
                                  "UNet").shape[0]))
        proj_in = state.get(f"{p}input_blocks.{first}.1.proj_in.weight")
        if proj_in is None:
            down_types.append("DownBlock2D")
            depth.append(1)
            continue
        down_types.append("CrossAttnDownBlock2D")
        use_linear = proj_in.ndim == 2
        blocks = {int(m.group(1)) for k in state if (m := re.match(
            re.escape(f"{p}input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\.", k))}
        depth.append(len(blocks))
        context_dim = int(state[f"{p}input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight"]
                          .shape[1])
    if context_dim is None:
        raise DataError("not an SD 1.x original-layout UNet: no cross-attention blocks")
    up_types = [t.replace("Down", "Up") for t in reversed(down_types)]
    head_counts = [c // 64 for c in channels] if use_linear else heads
    return {
        "_class_name": "UNet2DConditionModel", "sample_size": 64,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_need(state, f"{p}out.2.weight", "UNet").shape[0]),
        "down_block_types": down_types, "up_block_types": up_types,
        "block_out_channels": channels, "layers_per_block": n_res,
        "cross_attention_dim": context_dim, "attention_head_dim": head_counts,
        "use_linear_projection": use_linear, "transformer_layers_per_block": depth,
    }


def ldm_vae_config(state: Mapping[str, np.ndarray], prefix: str = _VAE) -> dict[str, Any]:
    """diffusers AutoencoderKL config inferred from an LDM VAE state dict."""
    p = prefix
    conv_in = _need(state, f"{p}encoder.conv_in.weight", "VAE")
    levels = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(re.escape(p) + r"encoder\.down\.(\d+)\.", k)))
    n_res = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.", k)))
    channels = [int(state[f"{p}encoder.down.{i}.block.0.conv2.weight"].shape[0])
                for i in range(levels)]
    return {
        "_class_name": "AutoencoderKL", "sample_size": 512,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_need(state, f"{p}decoder.conv_out.weight", "VAE").shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels, "layers_per_block": n_res,
        "latent_channels": int(state[f"{p}encoder.conv_out.weight"].shape[0]) // 2,
        "scaling_factor": 0.18215,
    }


def ldm_clip_config(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """transformers CLIPTextConfig inferred from a CLIP text state dict (``text_model.`` keys).

    Heads are not stored: CLIP text towers use 64 channels per head (ViT-L/14: 12 heads).
    """
    tok = _need(state, "text_model.embeddings.token_embedding.weight", "CLIP text encoder")
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)))
    hidden = int(tok.shape[1])
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "vocab_size": int(tok.shape[0]), "hidden_size": hidden,
        "intermediate_size": int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": int(
            state["text_model.embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "bos_token_id": int(tok.shape[0]) - 2, "eos_token_id": int(tok.shape[0]) - 1,
        "pad_token_id": 1,
    }


def split_single_file(state: Mapping[str, np.ndarray], *, unet_heads: int = 8,
                      extract_ema: bool = False
                      ) -> dict[str, tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
    """Original-layout SD 1.x checkpoint -> {component: (class, diffusers state dict, config)}.

    Key renames use diffusers' own single-file conversion functions.
    """
    from diffusers.loaders import single_file_utils as sfu  # converter extra

    if any(k.startswith("cond_stage_model.model.") for k in state):
        raise DataError("this is an SD 2.x (OpenCLIP) checkpoint; only SD 1.x single files "
                        "are supported (convert it with diffusers to a folder first)")
    if not any(k.startswith(_UNET) for k in state):
        raise DataError(f"not an original-layout SD checkpoint: no {_UNET!r} keys")
    out = {}
    cfg = ldm_unet_config(state, unet_heads)
    out["unet"] = ("UNet2DConditionModel",
                   sfu.convert_ldm_unet_checkpoint(dict(state), cfg, extract_ema=extract_ema), cfg)
    if any(k.startswith(_VAE) for k in state):
        cfg = ldm_vae_config(state)
        out["vae"] = ("AutoencoderKL", sfu.convert_ldm_vae_checkpoint(dict(state), cfg), cfg)
    if any(k.startswith(_CLIP) for k in state):
        sd = sfu.convert_ldm_clip_checkpoint(dict(state))
        # very old checkpoints lack transformers' ``text_model.`` level
        sd = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sd.items()}
        out["text_encoder"] = ("CLIPTextModel", sd, ldm_clip_config(sd))
    return out


def read_vae(path: Path) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """A VAE from a diffusers folder or an original-layout VAE file (with or without the
    ``first_stage_model.`` prefix)."""
    if path.is_dir():
        kind, state, config = read_component(path)
        if kind != "AutoencoderKL":
            raise DataError(f"--vae {str(path)!r} holds a {kind}, not an AutoencoderKL")
        return kind, state, config
    from diffusers.loaders import single_file_utils as sfu

    state = load_torch_file(path)
    prefix = _VAE if any(k.startswith(_VAE) for k in state) else ""
    with data_errors(f"--vae {str(path)!r}"):
        cfg = ldm_vae_config(state, prefix)
        return "AutoencoderKL", sfu.convert_ldm_vae_checkpoint(state, cfg), cfg


# ----------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer folder; an earlier ``dst`` is replaced only once the copy is
    complete (a failed copy leaves it as it was)."""
    if not (src / "vocab.json").is_file() or not (src / "merges.txt").is_file():
        raise FileNotFoundError(f"tokenizer folder {str(src)!r} needs vocab.json and merges.txt")
    tmp, old = dst.with_name(dst.name + ".tmp"), dst.with_name(dst.name + ".old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        shutil.copytree(src, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def _write_scheduler(src: Path | None, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    if src is None:
        config = SD15_SCHEDULER
    else:
        f = src / "scheduler_config.json" if src.is_dir() else src
        if not f.is_file():
            raise FileNotFoundError(f"scheduler config not found: {str(f)!r}")
        config = read_json(f)
    write_text_atomic(dst / "scheduler_config.json", json.dumps(config, indent=1, sort_keys=True))


def parse_controlnet_arg(arg: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (name from the folder: ``sd-controlnet-depth`` -> ``depth``)."""
    if "=" in arg:
        name, path = arg.split("=", 1)
    else:
        path = arg
        name = re.sub(r"^(sd-)?controlnet[-_]?", "", Path(arg.rstrip("/")).name) or "default"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return name, Path(path)


def convert(src: str | Path, dst: str | Path, *, vae_path: str | Path | None = None,
            controlnets: Sequence[tuple[str, str | Path]] = (),
            tokenizer: str | Path | None = None, scheduler: str | Path | None = None,
            unet_heads: int = 8, extract_ema: bool = False, log: Any = print) -> dict[str, Any]:
    """Convert SRC (pipeline folder, component folder or single file) into DST; see the module
    docstring. Returns the manifest written to ``DST/jaxhead_sd.json`` (component folders: the
    component's network class)."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"source not found: {str(src)!r}")
    is_pipeline = (src / "model_index.json").is_file()
    if src.is_dir() and (src / "config.json").is_file() and not is_pipeline:
        if vae_path or controlnets or tokenizer or scheduler:
            raise UsageError("--vae/--controlnet/--tokenizer/--scheduler apply to pipelines, "
                             "not to a single component folder")
        kind = convert_component(src, dst)
        log(f"{kind}: {src} -> {dst}")
        return {"component": kind, "source": str(src)}

    written: dict[str, Any] = {}
    # written into DST.partial and moved into DST at the end: a failed conversion leaves
    # DST as it was (no empty or half-converted folder)
    with staged_directory(dst) as out:
        if src.is_dir():
            if not (src / "model_index.json").is_file():
                raise FileNotFoundError(f"{str(src)!r} is neither a diffusers pipeline folder "
                                        "(model_index.json) nor a component folder (config.json)")
            index = read_json(src / "model_index.json")
            if not isinstance(index, dict):
                raise DataError(f"{str(src / 'model_index.json')!r} does not hold a JSON object")
            for name in ("unet", "vae", "text_encoder"):
                if name == "vae" and vae_path is not None:
                    continue
                if name not in index or not (src / name).is_dir():
                    if name == "vae":
                        raise FileNotFoundError(f"{str(src)!r} has no vae/; pass --vae (e.g. a "
                                                "sd-vae-ft-mse folder)")
                    raise FileNotFoundError(f"pipeline {str(src)!r} has no {name}/ folder")
                kind, state, config = read_component(src / name)
                expected = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL",
                            "text_encoder": "CLIPTextModel"}[name]
                if kind != expected:
                    raise DataError(f"{str(src / name)!r} holds a {kind}, expected {expected}")
                convert_state(kind, state, config, out / name, source=str(src / name))
                del state
                written[name] = str(src / name)
                log(f"{name}: {src / name} -> {dst / name}")
            tok_src = Path(tokenizer) if tokenizer else src / "tokenizer"
            sched_src = Path(scheduler) if scheduler else src / "scheduler"
            if not sched_src.exists():
                raise FileNotFoundError(f"pipeline {str(src)!r} has no scheduler/ folder")
        else:
            state = load_torch_file(src)
            with data_errors(str(src)):
                parts = split_single_file(state, unet_heads=unet_heads, extract_ema=extract_ema)
            del state
            if "vae" not in parts and vae_path is None:
                raise DataError(f"{str(src)!r} holds no VAE; pass --vae")
            if "text_encoder" not in parts:
                raise DataError(f"{str(src)!r} holds no CLIP text encoder (cond_stage_model)")
            for name, (kind, sd, config) in parts.items():
                if name == "vae" and vae_path is not None:
                    continue
                convert_state(kind, sd, config, out / name, source=f"{src} ({name})")
                written[name] = f"{src} ({name})"
                log(f"{name}: {src} -> {dst / name}")
            del parts
            tok_src = Path(tokenizer) if tokenizer else None
            sched_src = Path(scheduler) if scheduler else None

        if vae_path is not None:
            kind, state, config = read_vae(Path(vae_path))
            convert_state(kind, state, config, out / "vae", source=str(vae_path))
            written["vae"] = str(vae_path)
            log(f"vae: {vae_path} -> {dst / 'vae'}")
        for name, path in controlnets:
            kind, state, config = read_component(path)
            if kind != "ControlNetModel":
                raise DataError(f"--controlnet {str(path)!r} holds a {kind}, not a ControlNetModel")
            convert_state(kind, state, config, out / f"controlnet_{name}", source=str(path))
            written[f"controlnet_{name}"] = str(path)
            log(f"controlnet {name}: {path} -> {dst / f'controlnet_{name}'}")
        if tok_src is not None:
            _copy_tokenizer(tok_src, out / "tokenizer")
            written["tokenizer"] = str(tok_src)
        else:
            log("note: no tokenizer written (a single-file checkpoint has none; pass "
                "--tokenizer DIR)")
        _write_scheduler(sched_src, out / "scheduler")
        written["scheduler"] = str(sched_src) if sched_src else "SD 1.5 default (DDIM)"
        manifest = {"source": str(src), "components": written}
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.diffusers",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="diffusers pipeline/component folder or original .safetensors/"
                                ".ckpt")
    ap.add_argument("dst", help="output folder")
    ap.add_argument("--vae", help="VAE from another diffusers folder or original VAE file "
                                  "(e.g. sd-vae-ft-mse for Realistic_Vision_V5.1_noVAE)")
    ap.add_argument("--controlnet", action="append", default=[], metavar="[NAME=]PATH",
                    help="diffusers ControlNet folder -> DST/controlnet_NAME (repeatable)")
    ap.add_argument("--tokenizer", help="tokenizer folder (needed for single-file checkpoints)")
    ap.add_argument("--scheduler", help="scheduler folder or scheduler_config.json "
                                        "(single files default to SD 1.5 DDIM)")
    ap.add_argument("--unet-heads", type=int, default=8,
                    help="attention heads of a single-file SD 1.x UNet (not stored; default 8)")
    ap.add_argument("--extract-ema", action="store_true",
                    help="single file: use the EMA UNet weights if present")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.unet_heads < 1:
        ap.error(f"--unet-heads must be >= 1, got {a.unet_heads}")
    convert(a.src, a.dst, vae_path=a.vae,
            controlnets=[parse_controlnet_arg(c) for c in a.controlnet],
            tokenizer=a.tokenizer, scheduler=a.scheduler, unet_heads=a.unet_heads,
            extract_ema=a.extract_ema)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
