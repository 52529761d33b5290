"""convert_weights.diffusers on save_pretrained folders and on an original-layout single-file
checkpoint written here; ``load`` round trips; clear errors for bad inputs."""

import copy
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sd_testlib as T
import torch
from diffusers import DDIMScheduler

from convert_weights import diffusers as conv
from jaxhead.diffusion import NoiseSchedule
from jaxhead.errors import run_cli
from jaxhead.models import clip_text, controlnet, unet, vae
from jaxhead.teacher import load_teacher

SCHED = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "steps_offset": 1,
         "clip_sample": False}


@functools.cache
def _models():
    return {"unet": T.torch_unet("teacher"), "vae": T.torch_vae(),
            "text_encoder": T.torch_clip(),
            "depth": T.torch_controlnet(2, "teacher"), "edge": T.torch_controlnet(5, "teacher")}


@functools.cache
def _direct():
    """Params from converting the in-memory state dicts directly (parity-tested elsewhere)."""
    m = _models()
    return {"unet": unet.convert(T.state_dict(m["unet"]), dict(m["unet"].config)),
            "vae": vae.convert(T.state_dict(m["vae"]), dict(m["vae"].config)),
            "text_encoder": clip_text.convert(T.state_dict(m["text_encoder"]),
                                              m["text_encoder"].config.to_dict()),
            "depth": controlnet.convert(T.state_dict(m["depth"]), dict(m["depth"].config)),
            "edge": controlnet.convert(T.state_dict(m["edge"]), dict(m["edge"].config))}


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _write_pipeline(root, *, with_vae=True):
    m = _models()
    m["unet"].save_pretrained(root / "unet")  # safetensors
    if with_vae:
        m["vae"].save_pretrained(root / "vae", safe_serialization=False)  # .bin pickle
    m["text_encoder"].save_pretrained(root / "text_encoder")
    T.write_tiny_tokenizer(root / "tokenizer")
    DDIMScheduler(**SCHED).save_pretrained(root / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    if with_vae:
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (root / "model_index.json").write_text(json.dumps(index))
    m["depth"].save_pretrained(root.parent / "cn_depth")
    m["edge"].save_pretrained(root.parent / "sd-controlnet-edge", max_shard_size="200KB")


def test_convert_pipeline_folder(tmp_path):
    src, dst = tmp_path / "sd", tmp_path / "out"
    _write_pipeline(src)
    assert (src / "vae" / "diffusion_pytorch_model.bin").is_file()
    assert (tmp_path / "sd-controlnet-edge" /
            "diffusion_pytorch_model.safetensors.index.json").is_file()  # sharded
    rc = conv.main([str(src), str(dst), "--controlnet", f"depth={tmp_path / 'cn_depth'}",
                    "--controlnet", str(tmp_path / "sd-controlnet-edge")])
    assert rc == 0
    for sub in ("unet", "vae", "text_encoder", "controlnet_depth", "controlnet_edge"):
        assert (dst / sub / "params.safetensors").is_file()
        assert (dst / sub / "config.json").is_file()
    assert (dst / "tokenizer" / "vocab.json").is_file()
    manifest = json.loads((dst / conv.MANIFEST).read_text())
    assert set(manifest["components"]) >= {"unet", "vae", "text_encoder", "tokenizer",
                                            "scheduler", "controlnet_depth", "controlnet_edge"}
    d = _direct()
    for sub, lib in (("unet", unet), ("vae", vae), ("controlnet_depth", controlnet)):
        _, params = lib.load(dst / sub)
        _assert_same(params, d[sub.replace("controlnet_", "")])
    module, params = clip_text.load(dst / "text_encoder")
    _assert_same(params, d["text_encoder"])
    assert module.config.num_attention_heads == T.TINY_CLIP["num_attention_heads"]
    teacher, tparams = load_teacher(dst, controlnets=("depth", "edge"), dtype=jnp.bfloat16)
    assert teacher.controlnet_names == ("depth", "edge")
    _assert_same(tparams["controlnets"]["edge"],
                 jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), d["edge"]))
    sched = NoiseSchedule.from_file(dst / "scheduler")
    assert sched.timesteps(50)[0] == 981
    tok = clip_text.load_tokenizer(dst / "tokenizer")
    assert clip_text.tokenize(tok, ["a photo"]).shape == (1, 16)


def test_convert_component_folders_and_separate_vae(tmp_path):
    """A pipeline without vae/ plus --vae (Realistic_Vision_V5.1_noVAE + sd-vae-ft-mse), and
    single component folders (fp16 variant weights)."""
    src = tmp_path / "rv"
    _write_pipeline(src, with_vae=False)
    rc = run_cli(conv.main, [str(src), str(tmp_path / "x")])
    assert rc == 1  # no VAE: error suggesting --vae
    _models()["vae"].save_pretrained(tmp_path / "sd-vae-ft-mse")
    conv.convert(src, tmp_path / "out", vae_path=tmp_path / "sd-vae-ft-mse", log=lambda *_: None)
    _assert_same(vae.load(tmp_path / "out" / "vae")[1], _direct()["vae"])

    # a component folder converts into DST itself
    conv.convert(tmp_path / "cn_depth", tmp_path / "cn_out", log=lambda *_: None)
    _assert_same(controlnet.load(tmp_path / "cn_out")[1], _direct()["depth"])
    # fp16 variant only
    te = tmp_path / "te16"
    copy.deepcopy(_models()["text_encoder"]).to(torch.float16).save_pretrained(te, variant="fp16")
    assert [p.name for p in conv.find_weights(te)] == ["model.fp16.safetensors"]
    conv.convert(te, tmp_path / "te_out", log=lambda *_: None)
    _, p16 = clip_text.load(tmp_path / "te_out")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), p16,
                 _direct()["text_encoder"])


# --- original (LDM) single-file layout, built from the diffusers models -----------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_unet_key(k: str, n: int, up_has_attn: list[bool]) -> str:
    """diffusers UNet key -> CompVis ``model.diffusion_model.`` key (n = layers_per_block)."""
    def resnet(rest):
        name, _, tail = rest.partition(".")
        return f"{_RESNET[name]}.{tail}"

    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in top.items():
        if k.startswith(a + "."):
            return b + k[len(a):]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{i * (n + 1) + j + 1}.0.{resnet(rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
        return f"input_blocks.{int(m[1]) * (n + 1) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", k):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        return f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.0.{resnet(m[3])}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
        return f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
        i = int(m[1])
        return f"output_blocks.{i * (n + 1) + n}.{2 if up_has_attn[i] else 1}.conv.{m[2]}"
    raise KeyError(k)


def _ldm_vae_key(k: str, levels: int) -> tuple[str, bool]:
    """diffusers VAE key -> LDM key (and whether it is a mid-attention linear stored as conv)."""
    k = k.replace("conv_norm_out", "norm_out")
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}".replace("conv_shortcut",
                                                                  "nin_shortcut"), False
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", k):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}", m[2] != "group_norm"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}".replace("conv_shortcut",
                                                                  "nin_shortcut"), False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}".replace(
            "conv_shortcut", "nin_shortcut"), False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    return k, False


def _original_checkpoint() -> dict[str, torch.Tensor]:
    m = _models()
    ucfg = m["unet"].config
    up_attn = [t.startswith("CrossAttn") for t in ucfg.up_block_types]
    sd = {}
    for k, v in m["unet"].state_dict().items():
        sd["model.diffusion_model." + _ldm_unet_key(k, ucfg.layers_per_block, up_attn)] = v
    levels = len(m["vae"].config.block_out_channels)
    for k, v in m["vae"].state_dict().items():
        key, as_conv = _ldm_vae_key(k, levels)
        sd["first_stage_model." + key] = v[:, :, None, None] if as_conv and v.ndim == 2 else v
    for k, v in m["text_encoder"].state_dict().items():
        sd["cond_stage_model.transformer.text_model." + k] = v
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(16)[None]
    sd["model_ema.decay"] = torch.tensor(0.9999)  # other LDM entries are ignored
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_convert_single_file(tmp_path, fmt):
    from safetensors.torch import save_file

    ckpt = _original_checkpoint()
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(ckpt, str(path))
    else:
        torch.save({"state_dict": ckpt, "global_step": 10}, path)  # Lightning-style pickle
    T.write_tiny_tokenizer(tmp_path / "tok")
    dst = tmp_path / "out"
    heads = str(T.TINY_UNET_TEACHER["attention_head_dim"])
    assert conv.main([str(path), str(dst), "--tokenizer", str(tmp_path / "tok"),
                      "--unet-heads", heads, "--controlnet", "depth=" + str(_save_cn(tmp_path))]
                     ) == 0
    d = _direct()
    module, params = unet.load(dst / "unet")
    _assert_same(params, d["unet"])
    ref = unet.UNetConfig.from_diffusers(dict(_models()["unet"].config))
    assert module.config == ref  # inferred from the weights (+ --unet-heads)
    vmod, vparams = vae.load(dst / "vae")
    _assert_same(vparams, d["vae"])
    assert vmod.config == vae.VAEConfig.from_diffusers(dict(_models()["vae"].config))
    cmod, cparams = clip_text.load(dst / "text_encoder")
    _assert_same(cparams, d["text_encoder"])
    assert cmod.config.vocab_size == T.TINY_CLIP["vocab_size"]
    assert cmod.config.num_hidden_layers == T.TINY_CLIP["num_hidden_layers"]
    sched = json.loads((dst / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "scaled_linear" and sched["steps_offset"] == 1
    assert (dst / "tokenizer" / "merges.txt").is_file()
    _assert_same(controlnet.load(dst / "controlnet_depth")[1], d["depth"])


def _save_cn(tmp_path):
    _models()["depth"].save_pretrained(tmp_path / "cn")
    return tmp_path / "cn"


# --- errors -----------------------------------------------------------------------------------


def test_conversion_errors_name_the_keys():
    m = _models()["unet"]
    cfg = dict(m.config)
    sd = T.state_dict(m)
    bad = dict(sd)
    bad["down_blocks.0.bogus.weight"] = np.zeros(3, np.float32)
    del bad["conv_in.bias"]
    bad["conv_out.weight"] = np.zeros((4, 32, 5, 5), np.float32)
    with pytest.raises(ValueError) as e:
        unet.convert(bad, cfg)
    msg = str(e.value)
    assert "unexpected (1): down_blocks.0.bogus.weight" in msg
    assert "missing (1): conv_in/bias" in msg
    assert "conv_out.weight -> conv_out/kernel: (5, 5, 32, 4) != expected (3, 3, 32, 4)" in msg
    # a config that does not match the weights
    with pytest.raises(ValueError, match="wrong shape"):
        unet.convert(sd, {**cfg, "cross_attention_dim": 48})


def test_cli_and_load_errors(tmp_path, capsys):
    assert run_cli(conv.main, [str(tmp_path / "nope"), str(tmp_path / "o")]) == 1
    assert "source not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel"}))
    assert run_cli(conv.main, [str(tmp_path / "empty"), str(tmp_path / "o")]) == 1
    assert "no weights in" in capsys.readouterr().err
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert run_cli(conv.main, [str(tmp_path / "empty"), str(tmp_path / "o")]) == 1
    assert "unsupported network 'UNet2DModel'" in capsys.readouterr().err
    (tmp_path / "empty" / "config.json").write_text("{not json")
    assert run_cli(conv.main, [str(tmp_path / "empty"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json: not valid JSON" in err
    # component flags on a component folder: a usage error (exit 2)
    (tmp_path / "empty" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel"}))
    assert run_cli(conv.main, [str(tmp_path / "empty"), str(tmp_path / "o"), "--vae", "x"]) == 2
    (tmp_path / "sd2.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing params.safetensors, config.json"):
        unet.load(tmp_path / "o")
    # converted params that do not fit the saved config
    from jaxhead.utils.params_io import save_params

    d = _direct()
    save_params(tmp_path / "wrong", d["depth"], dict(_models()["unet"].config))
    with pytest.raises(ValueError, match="UNet parameters .* do not match"):
        unet.load(tmp_path / "wrong")
    with pytest.raises(ValueError, match="SD 2.x"):
        conv.split_single_file({"cond_stage_model.model.ln_final.weight": np.zeros(2),
                                "model.diffusion_model.x": np.zeros(1)})
    with pytest.raises(ValueError, match="original-layout"):
        conv.split_single_file({"foo": np.zeros(2)})


def test_parse_controlnet_arg():
    assert conv.parse_controlnet_arg("depth=/x/y") == ("depth", conv.Path("/x/y"))
    assert conv.parse_controlnet_arg("/m/sd-controlnet-canny/")[0] == "canny"
    assert conv.parse_controlnet_arg("/m/control_v11f1p_sd15_depth")[0] == \
        "control_v11f1p_sd15_depth"
