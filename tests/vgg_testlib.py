"""Plain-torch references for LPIPS-VGG16, with seeded weights of any stage widths.

- :func:`seeded_state_dicts`: torchvision ``features.N.*`` + lpips ``linK.model.1.weight``.
- :class:`LpipsVGG`: the ``lpips`` package's ``LPIPS(net="vgg", version="0.1")`` in eval mode
  (ScalingLayer, vgg16 slices to relu5_3, ``normalize_tensor``, lin 1x1 convs, spatial mean).
- :class:`NvidiaVGG16`: a TorchScript-able module with the semantics and tensor names of
  StyleGAN2-ADA's ``vgg16.pt`` (``layers.conv1..13``, ``layers.fc1..3``, ``lpips0..4`` of
  shape [C, 1, 1]; ``forward(img, resize_images=True, return_lpips=False)`` on [0, 255] RGB).

Also used (outside the repository) to make ``tests/fixtures/inversion/projector_reference.npz``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxhead.models.lpips_vgg import STAGE_CONVS, TV_INDEX, conv_channels

SMALL = (8, 12, 16, 16, 16)  # fast test widths (the released network: 64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def seeded_state_dicts(widths=SMALL, seed: int = 4321) -> tuple[dict, dict]:
    """``(vgg, lin)`` float32 numpy tensors in torchvision / lpips layouts."""
    rng = np.random.default_rng(seed)
    vgg, lin = {}, {}
    for tv, (cin, cout) in zip(TV_INDEX, conv_channels(widths), strict=True):
        vgg[f"features.{tv}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) *
                                        np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        vgg[f"features.{tv}.bias"] = (0.05 * rng.standard_normal(cout)).astype(np.float32)
    for k, w in enumerate(widths):
        lin[f"lin{k}.model.1.weight"] = (np.abs(rng.standard_normal((1, w, 1, 1))) /
                                         np.sqrt(w)).astype(np.float32)
    return vgg, lin


def _trunk(widths) -> nn.ModuleList:
    return nn.ModuleList([nn.Conv2d(cin, cout, 3, padding=1)
                          for cin, cout in conv_channels(widths)])


def _stages(convs: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    feats = []
    i = 0
    for s, n in enumerate(STAGE_CONVS):
        if s:
            x = F.max_pool2d(x, 2, 2)
        for _ in range(n):
            x = F.relu(convs[i](x))
            i += 1
        feats.append(x)
    return feats


def _load_trunk(convs: nn.ModuleList, vgg: dict) -> None:
    with torch.no_grad():
        for conv, tv in zip(convs, TV_INDEX, strict=True):
            conv.weight.copy_(torch.from_numpy(vgg[f"features.{tv}.weight"]))
            conv.bias.copy_(torch.from_numpy(vgg[f"features.{tv}.bias"]))


class LpipsVGG(nn.Module):
    """``lpips.LPIPS(net="vgg", version="0.1")``, eval mode; inputs NCHW in [-1, 1]."""

    def __init__(self, vgg: dict, lin: dict, widths=SMALL):
        super().__init__()
        self.convs = _trunk(widths)
        _load_trunk(self.convs, vgg)
        self.lins = [torch.from_numpy(lin[f"lin{k}.model.1.weight"]) for k in range(5)]
        self.shift = torch.tensor(_SHIFT)[None, :, None, None]
        self.scale = torch.tensor(_SCALE)[None, :, None, None]

    def forward(self, x, y):
        fx = _stages(self.convs, (x - self.shift) / self.scale)
        fy = _stages(self.convs, (y - self.shift) / self.scale)
        layers = []
        for k in range(5):
            a = fx[k] / (torch.sqrt(torch.sum(fx[k] ** 2, 1, keepdim=True)) + 1e-10)
            b = fy[k] / (torch.sqrt(torch.sum(fy[k] ** 2, 1, keepdim=True)) + 1e-10)
            layers.append(F.conv2d((a - b) ** 2, self.lins[k]).mean([2, 3])[:, 0])
        return torch.stack(layers)


class _Layers(nn.Module):
    def __init__(self, widths):
        super().__init__()
        for i, (cin, cout) in enumerate(conv_channels(widths)):
            setattr(self, f"conv{i + 1}", nn.Conv2d(cin, cout, 3, padding=1))
        self.fc1 = nn.Linear(widths[4], 8)  # classifier head (present in the archive, unused)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        f1 = x
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        f2 = x
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv7(F.relu(self.conv6(F.relu(self.conv5(x))))))
        f3 = x
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv10(F.relu(self.conv9(F.relu(self.conv8(x))))))
        f4 = x
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv13(F.relu(self.conv12(F.relu(self.conv11(x))))))
        return [f1, f2, f3, f4, x]


class NvidiaVGG16(nn.Module):
    """The ``vgg16.pt`` semantics: [0, 255] RGB -> LPIPS ScalingLayer -> VGG16 -> with
    ``return_lpips``, per stage ``normalize(f) * sqrt(lpips_k / (H W))`` flattened and
    concatenated. Without it, the flattened 2x2-pooled last stage (the real archive returns
    fc features there; not used by the projectors)."""

    def __init__(self, vgg: dict, lin: dict, widths=SMALL):
        super().__init__()
        self.layers = _Layers(widths)
        with torch.no_grad():
            for i, tv in enumerate(TV_INDEX):
                conv = getattr(self.layers, f"conv{i + 1}")
                conv.weight.copy_(torch.from_numpy(vgg[f"features.{tv}.weight"]))
                conv.bias.copy_(torch.from_numpy(vgg[f"features.{tv}.bias"]))
        for k in range(5):
            self.register_buffer(f"lpips{k}",
                                 torch.from_numpy(lin[f"lin{k}.model.1.weight"][0].copy()))
        self.register_buffer("shift", torch.tensor(_SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).reshape(1, 3, 1, 1))

    def forward(self, img: torch.Tensor, resize_images: bool = True,
                return_lpips: bool = False) -> torch.Tensor:
        x = img.to(torch.float32)
        if resize_images:
            x = F.interpolate(x, size=(224, 224), mode="area")
        x = (x / 127.5 - 1.0 - self.shift) / self.scale
        feats = self.layers(x)
        if not return_lpips:
            return F.max_pool2d(feats[4], 2, 2).flatten(1)
        ws = [self.lpips0, self.lpips1, self.lpips2, self.lpips3, self.lpips4]
        out = []
        for k in range(5):
            f, w = feats[k], ws[k]
            f = f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)
            f = f * torch.sqrt(w / float(f.shape[2] * f.shape[3]))
            out.append(f.flatten(1))
        return torch.cat(out, dim=1)


def save_nvidia_archive(path, widths=SMALL, seed: int = 4321) -> None:
    """Script :class:`NvidiaVGG16` with seeded weights and save it as a TorchScript archive."""
    vgg, lin = seeded_state_dicts(widths, seed)
    m = NvidiaVGG16(vgg, lin, widths).eval().requires_grad_(False)  # as the real archive
    torch.jit.save(torch.jit.script(m), str(path))


def seeded_images(seed: int = 7, batch: int = 2, size: int = 64) -> tuple[np.ndarray, ...]:
    """Two NHWC batches in [-1, 1] (smooth patterns and a noisy copy)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    x = np.stack([np.stack([np.sin((3 + i) * xx + c) * np.cos((2 + c) * yy) for c in range(3)],
                           -1) for i in range(batch)])
    x = np.clip(0.8 * x + 0.1 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    return x, y
