"""Depth Anything V2: parity with transformers' PyTorch model, conversion of both name layouts,
the presets, pre-/post-processing against cv2 / PIL, and the official depth control pipeline."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DepthAnythingConfig as HFConfig
from transformers import DepthAnythingForDepthEstimation, Dinov2Config

from convert_weights import depth_anything as conv
from jaxhead.models import depth_anything as da
from jaxhead.utils.params_io import flatten

# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny random transformers model (6 blocks, the head reads blocks 1-4, so block 5 is
# computed by nobody but must still be converted), its state dict in both name layouts.


def _hf_config(hidden=32, layers=6, heads=2, image_size=56, out_indices=(2, 3, 4, 5),
               neck=(8, 16, 24, 32), fusion=16, head_hidden=8) -> HFConfig:
    bb = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      image_size=image_size, patch_size=14, out_indices=list(out_indices),
                      reshape_hidden_states=False)
    return HFConfig(backbone_config=bb, reassemble_hidden_size=hidden,
                    neck_hidden_sizes=list(neck), fusion_hidden_size=fusion,
                    head_hidden_size=head_hidden, patch_size=14)


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random at a scale that keeps activations O(1) (fan-in scaled weights, non-
    trivial norms, biases and layer scales), so a wrong layout or op cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "embeddings" in name and p.ndim == 3:  # cls / position embeddings
                p.copy_(0.5 * r)
            elif p.ndim >= 2:
                fan_in = p.shape[0] if ".resize." in name and p.ndim == 4 and p.shape[-1] in (
                    2, 4) else p[0].numel()  # ConvTranspose [in, out, k, k]: 1 tap per input
                p.copy_(r / math.sqrt(fan_in))
            elif "lambda1" in name:
                p.copy_(0.5 + 0.2 * r)
            elif name.endswith("weight"):  # norms
                p.copy_(1.0 + 0.2 * r)
            else:
                p.copy_(0.2 * r)


def to_official_layout(sd: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """The test's own statement of the official names (dpt.py / dinov2.py) for transformers'
    in-memory (v5) names; independent of the converter's rename table."""
    o: dict[str, np.ndarray] = {}
    e = "backbone.embeddings."
    o["pretrained.cls_token"] = sd[e + "cls_token"]
    o["pretrained.mask_token"] = sd[e + "mask_token"]
    o["pretrained.pos_embed"] = sd[e + "position_embeddings"]
    for t in ("weight", "bias"):
        o[f"pretrained.patch_embed.proj.{t}"] = sd[e + f"patch_embeddings.projection.{t}"]
        o[f"pretrained.norm.{t}"] = sd[f"backbone.layernorm.{t}"]
        for i in range(n_layers):
            hf, of = f"backbone.encoder.layer.{i}.", f"pretrained.blocks.{i}."
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                o[of + f"{n}.{t}"] = sd[hf + f"{n}.{t}"]
            o[of + f"attn.qkv.{t}"] = np.concatenate(
                [sd[hf + f"attention.{x}_proj.{t}"] for x in "qkv"])
            o[of + f"attn.proj.{t}"] = sd[hf + f"attention.o_proj.{t}"]
        for i in range(4):
            rs = f"neck.reassemble_stage.layers.{i}."
            o[f"depth_head.projects.{i}.{t}"] = sd[rs + f"projection.{t}"]
            if i != 2:
                o[f"depth_head.resize_layers.{i}.{t}"] = sd[rs + f"resize.{t}"]
            fu, rn = f"neck.fusion_stage.layers.{i}.", f"depth_head.scratch.refinenet{4 - i}."
            o[rn + f"out_conv.{t}"] = sd[fu + f"projection.{t}"]
            for r in (1, 2):
                for c in (1, 2):
                    o[rn + f"resConfUnit{r}.conv{c}.{t}"] = sd[
                        fu + f"residual_layer{r}.convolution{c}.{t}"]
        o[f"depth_head.scratch.output_conv1.{t}"] = sd[f"head.conv1.{t}"]
        o[f"depth_head.scratch.output_conv2.0.{t}"] = sd[f"head.conv2.{t}"]
        o[f"depth_head.scratch.output_conv2.2.{t}"] = sd[f"head.conv3.{t}"]
    for i in range(n_layers):
        for s in (1, 2):
            o[f"pretrained.blocks.{i}.ls{s}.gamma"] = sd[
                f"backbone.encoder.layer.{i}.layer_scale{s}.lambda1"]
    for i in range(4):
        o[f"depth_head.scratch.layer{i + 1}_rn.weight"] = sd[f"neck.convs.{i}.weight"]
    assert len(o) == len(sd) - 4 * n_layers  # q, k, v, o (x2) -> qkv, proj (x2)
    return o


@pytest.fixture(scope="module")
def tiny():
    cfg = _hf_config()
    model = DepthAnythingForDepthEstimation(cfg).eval()
    _randomize_(model, 0)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    jcfg = conv.config_from_transformers(cfg.to_dict())
    params = conv.convert_state_dict(sd, jcfg)
    return dict(hf=model, hf_cfg=cfg, sd=sd, cfg=jcfg, params=params,
                model=da.DepthAnythingV2(jcfg), apply=jax.jit(da.DepthAnythingV2(jcfg).apply))


def _hf_depth(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))
                     ).predicted_depth.numpy()


# ------------------------------------------------------------------------------------------------
# Network parity and conversion.


@pytest.mark.parametrize("hw", [(56, 56), (70, 84)])
def test_parity_with_transformers(tiny, hw):
    """(56, 56) uses the stored position embeddings; (70, 84) interpolates them (bicubic)."""
    x = np.random.default_rng(sum(hw)).normal(size=(2, *hw, 3)).astype(np.float32)
    ref = _hf_depth(tiny["hf"], x)
    out = np.asarray(tiny["apply"](tiny["params"], jnp.asarray(x)))
    err = np.abs(out - ref).max()
    print(f"{hw}: max |ref| {np.abs(ref).max():.3f}, max-abs err {err:.2e}")
    assert out.shape == ref.shape == (2, *hw)
    assert np.abs(ref).max() > 1.0 and (ref > 0).mean() > 0.2  # a non-degenerate output
    assert err <= 1e-4


def test_official_layout_gives_same_params(tiny):
    sd_off = to_official_layout(tiny["sd"], tiny["cfg"].depth)
    assert conv.detect_layout(sd_off) == "official"
    cfg_off = conv.config_from_official(sd_off, num_heads=2, layers=(1, 2, 3, 4))
    assert cfg_off == dataclasses.replace(tiny["cfg"], interpolate_offset=0.1)
    params_off = conv.convert_state_dict(sd_off, cfg_off)
    a, b = flatten(tiny["params"]), flatten(params_off)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_cli_converts_both_formats_and_load(tiny, tmp_path):
    # Official: a plain state dict saved with torch.save (read back with weights_only=True).
    sd_off = to_official_layout(tiny["sd"], tiny["cfg"].depth)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd_off.items()},
               tmp_path / "depth_anything_v2_tiny.pth")
    conv.main([str(tmp_path / "depth_anything_v2_tiny.pth"), str(tmp_path / "from_pth"),
               "--num-heads", "2", "--layers", "1,2,3,4"])
    # transformers: save_pretrained writes the v4 names (attention.attention.query, ...).
    tiny["hf"].save_pretrained(tmp_path / "hf")
    conv.main([str(tmp_path / "hf"), str(tmp_path / "from_hf")])

    m1, p1 = da.load(tmp_path / "from_pth")
    m2, p2 = da.load(tmp_path / "from_hf")
    assert m1.config.interpolate_offset == 0.1 and m2.config.interpolate_offset == 0.0
    assert dataclasses.replace(m1.config, interpolate_offset=0.0) == m2.config
    f1, f2 = flatten(p1), flatten(p2)
    assert f1.keys() == f2.keys()
    assert all(np.array_equal(f1[k], f2[k]) for k in f1)
    x = np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(np.float32)  # compiled
    np.testing.assert_allclose(np.asarray(tiny["apply"](p2, jnp.asarray(x))),
                               _hf_depth(tiny["hf"], x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["vits", "vitb", "vitl"])
def test_presets_match_the_released_architectures(name):
    """The official sizes (transformers' Depth-Anything-V2-{Small,Base,Large}-hf configs) convert
    in both layouts onto our presets; shapes only (meta tensors, no memory)."""
    dim, layers, heads, out_idx, neck, fusion = {
        "vits": (384, 12, 6, (3, 6, 9, 12), (48, 96, 192, 384), 64),
        "vitb": (768, 12, 12, (3, 6, 9, 12), (96, 192, 384, 768), 128),
        "vitl": (1024, 24, 16, (5, 12, 18, 24), (256, 512, 1024, 1024), 256),
    }[name]
    cfg = _hf_config(dim, layers, heads, 518, out_idx, neck, fusion, 32)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(cfg)
    sd = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in model.state_dict().items()}
    assert conv.config_from_transformers(cfg.to_dict()) == dataclasses.replace(
        da.CONFIGS[name], interpolate_offset=0.0)
    sd_off = to_official_layout(sd, layers)
    assert conv.config_from_official(sd_off) == da.CONFIGS[name]  # heads & layers inferred
    conv.convert_state_dict(sd_off, da.CONFIGS[name])  # raises on any name / shape mismatch


def test_conversion_errors(tiny, tmp_path):
    sd_off = to_official_layout(tiny["sd"], tiny["cfg"].depth)
    cfg_off = conv.config_from_official(sd_off, num_heads=2, layers=(1, 2, 3, 4))
    missing = {k: v for k, v in sd_off.items() if "refinenet2.out_conv" not in k}
    with pytest.raises(ValueError, match=r"missing \(2\).*refinenet2/out_conv"):
        conv.convert_state_dict(missing, cfg_off)
    with pytest.raises(ValueError, match=r"unexpected \(1\).*pretrained/extra"):
        conv.convert_state_dict({**sd_off, "pretrained.extra.weight": np.zeros(3)}, cfg_off)
    bad = {**sd_off, "depth_head.projects.1.weight": np.zeros((16, 32, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"wrong shape \(1\).*projects_1/kernel"):
        conv.convert_state_dict(bad, cfg_off)
    with pytest.raises(ValueError, match="unexpected transformers keys.*neck.foo"):
        conv.transformers_to_official({**tiny["sd"], "neck.foo.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="not a Depth Anything V2 state dict"):
        conv.detect_layout({"model.conv.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="no official layer choice"):
        conv.config_from_official(sd_off, num_heads=2)  # 6 blocks: not an official size
    with pytest.raises(ValueError, match="metric-depth"):
        conv.main([str(tmp_path / "depth_anything_v2_metric_hypersim_vitl.pth"), "out"])
    with pytest.raises(FileNotFoundError, match="not a transformers.*config.json"):
        conv.main([str(tmp_path), str(tmp_path / "out")])
    # The command line reports errors as one line and a non-zero exit status.
    r = subprocess.run([sys.executable, "-m", "convert_weights.depth_anything",
                        str(tmp_path / "nope.pth"), str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 1 and "error: checkpoint file not found" in r.stderr


def test_load_missing_weights_names_files_and_command(tmp_path):
    assert not da.weights_available(tmp_path / "da")
    with pytest.raises(FileNotFoundError) as e:
        da.load(tmp_path / "da")
    msg = str(e.value)
    assert "params.safetensors" in msg and "config.json" in msg
    assert "python -m convert_weights.depth_anything" in msg


# ------------------------------------------------------------------------------------------------
# Pre-/post-processing pieces.


def test_pos_embed_interpolation_official_offset():
    """Official DINOv2: F.interpolate(scale_factor=(g + 0.1) / S, bicubic) on the S x S grid."""
    rng = np.random.default_rng(0)
    s, dim, grid = 5, 8, (4, 7)
    pos = rng.normal(size=(1, 1 + s * s, dim)).astype(np.float32)
    ours = da.interpolate_pos_embed(jnp.asarray(pos), grid, (56, 98), 0.1)
    t = torch.from_numpy(pos[:, 1:]).reshape(1, s, s, dim).permute(0, 3, 1, 2)
    t = torch.nn.functional.interpolate(t, scale_factor=((grid[0] + 0.1) / s,
                                                         (grid[1] + 0.1) / s), mode="bicubic")
    ref = np.concatenate([pos[:, :1], t.permute(0, 2, 3, 1).reshape(1, -1, dim).numpy()], 1)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)
    assert da.interpolate_pos_embed(jnp.asarray(pos), (5, 5), (70, 70), 0.1) is not None


def test_net_input_size_follows_official_resize():
    assert da.net_input_size(512, 512) == (518, 518)
    assert da.net_input_size(480, 640) == (518, 686)  # 690.7 -> 686 (round to 14s)
    assert da.net_input_size(1000, 300) == (1722, 518)
    assert da.net_input_size(64, 64, 56) == (56, 56)


def test_bicubic_resize_matches_cv2_inter_cubic():
    """Our resize vs cv2.resize(INTER_CUBIC) on a 512 px render-like float image -> 518."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512] / 512.0
    img = np.stack([np.sin(9 * xx + 4 * yy), np.cos(7 * yy), xx * yy], -1) * 0.5 + 0.5
    img = (img + 0.05 * rng.normal(size=img.shape)).astype(np.float32)
    ref = cv2.resize(img, (518, 518), interpolation=cv2.INTER_CUBIC)
    ours = np.asarray(da.resize_cubic(jnp.asarray(img[None]), (518, 518)))[0]
    err = np.abs(ours - ref).max()
    jax_cubic = np.abs(np.asarray(jax.image.resize(img, (518, 518, 3), "cubic")) - ref).max()
    print(f"max-abs vs cv2: ours {err:.1e}, jax.image.resize('cubic') {jax_cubic:.1e}")
    assert err <= 1e-5


def test_resize_control_matches_pil_lanczos():
    """diffusers' control-image resize: uint8 PIL image, LANCZOS, 1024 -> 512."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :320]
    d = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.2 * rng.random((256, 320))
    u8 = (np.clip(d, 0, 0.999) * 255).astype(np.uint8)
    ref = np.asarray(Image.fromarray(u8).convert("RGB").resize((160, 96), Image.LANCZOS))
    ours = np.asarray(da.resize_control(jnp.asarray(u8[None, ..., None] / 255.0), (96, 160)))
    diff = np.abs(np.round(ours[0, ..., 0] * 255) - ref[..., 0].astype(np.float64))
    print(f"PIL Lanczos: {(diff > 0).mean() * 100:.3f}% of pixels differ by one level")
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002  # PIL's 22-bit fixed-point rounding


# ------------------------------------------------------------------------------------------------
# The control image, against the official train_LD.py pipeline with the transformers network.


def _official_views(hf_model, imgs: np.ndarray, input_size: int) -> list[np.ndarray]:
    """infer_image_torch + normalize on each view (HWC in [-1, 1]): cv2 cubic resize of
    0.5 x + 0.5, ImageNet normalization (float64, as numpy does), network, bilinear
    (align_corners) back, min-max."""
    views = []
    for img in imgs:
        raw = 0.5 * img + 0.5
        h, w = raw.shape[:2]
        th, tw = da.net_input_size(h, w, input_size)
        x = cv2.resize(raw, (tw, th), interpolation=cv2.INTER_CUBIC)
        x = ((x - np.array(da.IMAGENET_MEAN)) / np.array(da.IMAGENET_STD)).astype(np.float32)
        with torch.no_grad():
            d = hf_model(pixel_values=torch.from_numpy(x.transpose(2, 0, 1))[None]).predicted_depth
            d = torch.nn.functional.interpolate(d[:, None], (h, w), mode="bilinear",
                                                align_corners=True)[0, 0]
        views.append(((d - d.min()) / (d.max() - d.min() + 1e-6)).numpy())
    return views


def _grid(v):
    return np.concatenate([np.concatenate(v[:2], 1), np.concatenate(v[2:], 1)], 0)


def _renders(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w) * 2 - 1
    out = []
    for i in range(n):
        r2 = (xx - 0.1 * i) ** 2 / 0.4 + yy ** 2 / 0.6
        base = np.where(r2 < 1, np.sqrt(np.clip(1 - r2, 0, 1)), -0.8)
        img = np.stack([base, 0.8 * base + 0.1 * xx, base * yy], -1)
        out.append(img + 0.03 * rng.normal(size=img.shape))  # a little over [-1, 1]: unclipped
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def control_fn(tiny):
    """Controls at the view size and at half of it (one compile for both)."""
    return jax.jit(lambda p, x: (da.depth_control(tiny["model"], p, x, None, input_size=56),
                                 da.depth_control(tiny["model"], p, x, 32, input_size=56)))


def test_depth_control_grid_matches_official(tiny, control_fn):
    """2x2 grid of 64 px views -> 128 grid, uint8, PIL Lanczos to 64 (what the depth ControlNet
    sees), against our per-view controls assembled and resized with ``resize_control``, and
    against ``out_size=32`` per view (differs only where Lanczos taps cross the tile seams)."""
    imgs = _renders(4, 64, 64, 0)
    ref_grid = (_grid(_official_views(tiny["hf"], imgs, 56)) * 255).astype(np.uint8)
    ref = np.asarray(Image.fromarray(ref_grid).convert("RGB").resize((64, 64), Image.LANCZOS),
                     np.float32) / 255.0

    views, halves = control_fn(tiny["params"], jnp.asarray(imgs))
    assert views.shape == (4, 64, 64, 3) and float(views.min()) == 0.0
    ours = np.asarray(da.resize_control(_grid(list(views))[None], 64))[0]
    diff = np.abs(ours - ref) * 255
    print(f"grid control: max {diff.max():.2f} levels, {(diff > 0.5).mean() * 100:.3f}% differ")
    assert diff.max() <= 1 + 1e-3 and (diff > 0.5).mean() < 0.01

    tiles = np.asarray(_grid(list(halves)))
    seam = np.zeros((64, 64), bool)
    seam[29:35], seam[:, 29:35] = True, True  # Lanczos support: 3 output px either side
    diff = np.abs(tiles - ref)[~seam] * 255
    assert diff.max() <= 1 + 1e-3 and (diff > 0.5).mean() < 0.01


def test_depth_control_non_square_and_unquantized(tiny):
    imgs = _renders(2, 64, 80, 1)  # network input 56 x 70: interpolated position embeddings
    ref = np.stack(_official_views(tiny["hf"], imgs, 56))
    f = jax.jit(lambda p, x: da.depth_control(tiny["model"], p, x, quantize=False,
                                              input_size=56))
    out = np.asarray(f(tiny["params"], jnp.asarray(imgs)))
    assert out.shape == (2, 64, 80, 3)
    np.testing.assert_allclose(out[..., 0], ref, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_depth_control_bad_input_and_no_host_transfer(tiny, control_fn):
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        da.depth_control(tiny["model"], tiny["params"], jnp.zeros((2, 64, 64)))
    params = jax.device_put(tiny["params"])
    x = jax.device_put(jnp.zeros((4, 64, 64, 3)))
    jax.block_until_ready(control_fn(params, x))
    with jax.transfer_guard("disallow"):
        jax.block_until_ready(control_fn(params, x))


@pytest.mark.slow
def test_full_size_vits_parity_at_518():
    """ViT-S at its real size and input (37 x 37 tokens, 1370-token attention, odd 37 -> 19
    stride-2 level), random weights, one 518 px image."""
    cfg = _hf_config(384, 12, 6, 518, (3, 6, 9, 12), (48, 96, 192, 384), 64, 32)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    _randomize_(model, 1)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    params = conv.convert_state_dict(sd, dataclasses.replace(da.CONFIGS["vits"],
                                                             interpolate_offset=0.0))
    x = np.random.default_rng(0).normal(size=(1, 518, 518, 3)).astype(np.float32)
    ref = _hf_depth(model, x)
    out = np.asarray(jax.jit(da.DepthAnythingV2(da.CONFIGS["vits"]).apply)(params, x))
    err = np.abs(out - ref).max()
    print(f"ViT-S 518: max |ref| {np.abs(ref).max():.3f}, max-abs err {err:.2e}")
    assert np.abs(ref).max() > 1.0 and err <= 1e-4
