"""A plain-torch reference of pytorch-fid's FID Inception-v3 (no torchvision: torchvision's
``Inception3`` with pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` patches, written out here from the
layer definitions) and seeded weights in pytorch-fid's state-dict naming. Used by
tests/test_inception.py and benchmarks/metrics.py; torch is a test/bench extra only.

Independent of ``jaxhead.metrics.inception.LAYERS`` on purpose: the layer sizes, paddings and
branch orders here are typed from torchvision's ``inception.py`` and pytorch-fid's
``inception.py``, so a mistake in the JAX table shows up as a shape or parity failure.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3_no_pad(x):  # FID patch: TF's average pool ignores the padded zeros
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3_no_pad(x))
        return torch.cat([a, b, c, d], 1)


class MixedB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            c = m(c)
        d = self.branch_pool(_avg3_no_pad(x))
        return torch.cat([a, b, c, d], 1)


class MixedD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for m in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = m(b)
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedE(nn.Module):
    """``max_pool=False``: FIDInceptionE_1 (average pool without padding); True: E_2."""

    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        if self.max_pool:
            p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            p = _avg3_no_pad(x)
        return torch.cat([a, b, c, self.branch_pool(p)], 1)


class FIDInceptionTorch(nn.Module):
    """pytorch-fid's ``InceptionV3()`` (default: pool3 block, resize and normalize on):
    ``forward(x)`` takes NCHW in [0, 1] and returns ``[N, 2048]``. The state dict has the
    names of ``pt_inception-2015-12-05-6726825d.pth``."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = MixedB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = MixedD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # in the weight file; not used for pool3

    def net(self, x):
        """Preprocessed input (NCHW in [-1, 1]) -> [N, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

    def forward(self, x):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(2 * x - 1)


def seeded_state_dict(seed: int = 0, *, batches_tracked: bool = True) -> dict[str, np.ndarray]:
    """Seeded weights for every tensor of ``FIDInceptionTorch().state_dict()`` (pytorch-fid's
    names; ``num_batches_tracked`` included as torchvision's BatchNorm saves it unless
    ``batches_tracked=False``, the layout of torch-fidelity's file). Convs He-normal, random
    BatchNorm affine and running statistics, so every BatchNorm term is exercised."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in FIDInceptionTorch().state_dict().items():
        shape = tuple(v.shape)
        if k.endswith("num_batches_tracked"):
            if batches_tracked:
                out[k] = np.array(0, np.int64)
            continue
        if k.endswith("running_var"):
            a = rng.uniform(0.5, 2.0, shape)
        elif k.endswith("bn.weight"):
            a = rng.uniform(0.5, 1.5, shape)
        elif k.endswith(("running_mean", "bn.bias", "fc.bias")):
            a = 0.2 * rng.standard_normal(shape)
        else:  # conv OIHW / fc [out, in]
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        out[k] = a.astype(np.float32)
    return out


def torch_model(state: dict[str, np.ndarray]) -> FIDInceptionTorch:
    """The reference in eval mode with ``state`` loaded (strict: names and shapes must fit)."""
    m = FIDInceptionTorch()
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    if not any(k.endswith("num_batches_tracked") for k in sd):
        sd.update({k: v for k, v in m.state_dict().items() if k.endswith("num_batches_tracked")})
    m.load_state_dict(sd, strict=True)
    return m.eval()
