"""Plain-torch references of the two face-recognition networks behind the identity metrics,
written from the layer definitions (no torchvision, no insightface): insightface's
``arcface_torch`` iresnet (the ArcFace ``w600k_r50``) and TreB1eN's IR-SE ``Backbone`` (the
pSp / e4e / PTI ``model_ir_se50.pth``). Attribute names give the checkpoints' state-dict names.
Sizes are arguments so that tests can build small networks of the same layout (four stride-2
stages: a 112 px input ends at 7x7). Used by tests/test_arcface.py and benchmarks/metrics.py;
torch (and onnx for :func:`export_onnx`) are test/bench extras only.

Independent of ``jaxhead.models.iresnet`` / ``ir_se`` on purpose: a wrong layer order, stride
placement or flatten order on the JAX side shows up as a parity failure.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

FULL = dict(layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), stem=64, dim=512)
# Same layout, small: still four stages, a downsampling and a plain block in one stage, widths
# that grow at each stage (the IR-SE converter finds stages there), SE reduction 16 with at
# least one hidden channel.
SMALL = dict(layers=(1, 2, 1, 1), widths=(16, 24, 32, 48), stem=16, dim=24)


class IBasicBlock(nn.Module):
    """arcface_torch's pre-activation block: BN -> 3x3 -> BN -> PReLU -> 3x3 (stride) -> BN,
    plus the input (through ``downsample``, a 1x1 strided conv + BN, in a stage's first
    block)."""

    def __init__(self, cin, cout, stride=1, downsample=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                         nn.BatchNorm2d(cout, eps=1e-5))
                           if downsample else None)

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """``iresnet50()`` of arcface_torch with ``FULL`` sizes: NCHW 112 px RGB in [-1, 1] ->
    ``[N, dim]`` (not normalised)."""

    def __init__(self, layers, widths, stem, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)
        cin = stem
        for s, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = [IBasicBlock(cin, w, 2, downsample=True)]
            blocks += [IBasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            cin = w
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(cin * 7 * 7, dim)
        self.features = nn.BatchNorm1d(dim, eps=1e-5)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        for s in range(4):
            x = getattr(self, f"layer{s + 1}")(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class SEModule(nn.Module):
    def __init__(self, c, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // reduction, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(c // reduction, c, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    """TreB1eN's ``bottleneck_IR_SE``: BN -> 3x3 -> PReLU -> 3x3 (stride) -> BN -> SE, plus a
    shortcut that subsamples (``MaxPool2d(1, stride)``) when the width is kept, else a 1x1
    strided conv + BN."""

    def __init__(self, cin, depth, stride):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
            SEModule(depth, 16))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSEBackbone(nn.Module):
    """TreB1eN's ``Backbone(50, drop_ratio, mode="ir_se")`` with ``FULL`` sizes (pSp's
    ``Backbone(112, 50, "ir_se")``), *without* its final ``l2_norm``: NCHW 112 px RGB in
    [-1, 1] -> raw ``[N, dim]``."""

    def __init__(self, layers, widths, stem, dim):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(stem), nn.PReLU(stem))
        units, cin = [], stem
        for n, w in zip(layers, widths, strict=True):
            for i in range(n):
                units.append(BottleneckIRSE(cin, w, 2 if i == 0 else 1))
                cin = w
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(cin * 7 * 7, dim), nn.BatchNorm1d(dim))

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights for every tensor, BatchNorm running statistics included (so every BN
    term is exercised), scaled so that activations stay O(1) through 20+ residual blocks;
    returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)

    def rand(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                gain = 0.5 if ("conv2" in name or "res_layer.3" in name) else 1.4
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                c = m.num_features
                m.weight.copy_(rand(c, 0.5, 1.5))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(rand(c, 0.5, 2.0))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(rand(m.weight.shape, 0.05, 0.4))
    return model.eval()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def export_onnx(model: nn.Module, *, input_name: str = "input.1", fold: bool = True) -> bytes:
    """The model as insightface's ``torch2onnx.py`` exports it (TorchScript exporter, eval
    mode, constant folding on: BatchNorms that follow a conv are folded into it). Returns the
    serialized ``.onnx``. ``fold=False`` keeps every BatchNorm as its own node."""
    f = io.BytesIO()
    kw = {} if fold else {"training": torch.onnx.TrainingMode.PRESERVE,
                          "do_constant_folding": False}
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), f, input_names=[input_name],
                      dynamic_axes={input_name: {0: "batch"}}, dynamo=False,
                      keep_initializers_as_inputs=False, **kw)
    return f.getvalue()


def run_torch(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
                     ).numpy()
