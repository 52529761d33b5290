"""PyTorch restatements of 3DDFA_V2's networks and numpy restatements of its geometry, written
for the parity tests (module / parameter names follow the reference so their ``state_dict``
is what the released checkpoints hold). Tests only; torch is a test dependency."""

from __future__ import annotations

import math
import pickle
from itertools import product
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# --- FaceBoxes ------------------------------------------------------------------------------

class ConvBN(nn.Module):
    """``BasicConv2d`` / ``CRelu`` parameters: ``conv`` (no bias) and ``bn``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, crelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.crelu = crelu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(torch.cat([x, -x], 1) if self.crelu else x)


class TorchInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch1x1 = ConvBN(128, 32, 1)
        self.branch1x1_2 = ConvBN(128, 32, 1)
        self.branch3x3_reduce = ConvBN(128, 24, 1)
        self.branch3x3 = ConvBN(24, 32, 3)
        self.branch3x3_reduce_2 = ConvBN(128, 24, 1)
        self.branch3x3_2 = ConvBN(24, 32, 3)
        self.branch3x3_3 = ConvBN(32, 32, 3)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch1x1_2(F.avg_pool2d(x, 3, 1, 1))
        c = self.branch3x3(self.branch3x3_reduce(x))
        d = self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x)))
        return torch.cat([a, b, c, d], 1)


class TorchFaceBoxes(nn.Module):
    """``FaceBoxesNet(phase="test", num_classes=2)``: (loc [B, P, 4], softmax scores [B, P, 2])."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBN(3, 24, 7, 4, crelu=True)
        self.conv2 = ConvBN(48, 64, 5, 2, crelu=True)
        self.inception1, self.inception2, self.inception3 = (TorchInception() for _ in range(3))
        self.conv3_1 = ConvBN(128, 128, 1)
        self.conv3_2 = ConvBN(128, 256, 3, 2)
        self.conv4_1 = ConvBN(256, 128, 1)
        self.conv4_2 = ConvBN(128, 256, 3, 2)
        self.loc = nn.Sequential(nn.Conv2d(128, 84, 3, padding=1), nn.Conv2d(256, 4, 3, padding=1),
                                 nn.Conv2d(256, 4, 3, padding=1))
        self.conf = nn.Sequential(nn.Conv2d(128, 42, 3, padding=1),
                                  nn.Conv2d(256, 2, 3, padding=1), nn.Conv2d(256, 2, 3, padding=1))

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        x = F.max_pool2d(self.conv2(x), 3, 2, 1)
        x = self.inception3(self.inception2(self.inception1(x)))
        srcs = [x]
        x = self.conv3_2(self.conv3_1(x))
        srcs.append(x)
        x = self.conv4_2(self.conv4_1(x))
        srcs.append(x)
        loc = torch.cat([lay(s).permute(0, 2, 3, 1).reshape(s.shape[0], -1)
                         for s, lay in zip(srcs, self.loc, strict=True)], 1)
        conf = torch.cat([lay(s).permute(0, 2, 3, 1).reshape(s.shape[0], -1)
                          for s, lay in zip(srcs, self.conf, strict=True)], 1)
        return loc.view(loc.shape[0], -1, 4), F.softmax(conf.view(conf.shape[0], -1, 2), -1)


def random_faceboxes(seed: int) -> TorchFaceBoxes:
    """Random FaceBoxes whose activations stay O(1) on 0..255 images (conv1 scaled by 1/100,
    as trained BatchNorm statistics would), so scores are not all saturated at 0 or 1."""
    net = randomize(TorchFaceBoxes(), seed)
    with torch.no_grad():
        net.conv1.conv.weight /= 100.0
    return net


def ref_priors(h: int, w: int) -> np.ndarray:
    """``PriorBox(image_size=(h, w)).forward()`` restated with its Python loops."""
    min_sizes, steps = [[32, 64, 128], [256], [512]], [32, 64, 128]
    anchors = []
    for k, step in enumerate(steps):
        for i, j in product(range(math.ceil(h / step)), range(math.ceil(w / step))):
            for m in min_sizes[k]:
                skx, sky = m / w, m / h
                n = {32: 4, 64: 2}.get(m)
                if n:
                    offs = [t / n for t in range(n)]
                    cxs = [(j + o) * step / w for o in offs]
                    cys = [(i + o) * step / h for o in offs]
                    for cy, cx in product(cys, cxs):
                        anchors += [cx, cy, skx, sky]
                else:
                    anchors += [(j + 0.5) * step / w, (i + 0.5) * step / h, skx, sky]
    return torch.Tensor(anchors).view(-1, 4).numpy()


def ref_decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2)), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def ref_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Fast R-CNN's ``cpu_nms`` loop, element by element in float32."""
    x1, y1, x2, y2, scores = (dets[:, k].astype(np.float32) for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    suppressed = np.zeros(len(dets), int)
    keep = []
    for a in range(len(dets)):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(int(i))
        for b in range(a + 1, len(dets)):
            j = order[b]
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]) + np.float32(1))
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]) + np.float32(1))
            inter = np.float32(w * h)
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                suppressed[j] = 1
    return keep


def float_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize of a float image [H, W, C] to (w, h) with ``cv2.resize`` INTER_LINEAR's
    sample positions, without its rounding to uint8 (``F.interpolate``, align_corners=False)."""
    x = torch.from_numpy(np.float32(img).transpose(2, 0, 1))[None]
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return y[0].numpy().transpose(1, 2, 0)


def cv2_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """The reference's ``cv2.resize(img, dsize=(w, h))`` (INTER_LINEAR)."""
    import cv2

    return cv2.resize(img, dsize=(w, h))


def ref_detect(net: TorchFaceBoxes, img_bgr: np.ndarray, resize=cv2_resize) -> np.ndarray:
    """``FaceBoxes.__call__``: down-scaling rule, forward, decode, threshold, top-k, NMS;
    ``resize(img, w, h)`` is its ``cv2.resize`` (or a stand-in for float images)."""
    h, w = img_bgr.shape[:2]
    scale = 1
    if h > 720:
        scale = 720 / h
    if w * scale > 1080:
        scale *= 1080 / (w * scale)
    img = img_bgr if scale == 1 else resize(img_bgr, int(scale * w), int(scale * h))
    img = np.float32(img)
    hs, ws = img.shape[:2]
    img = img - (104, 117, 123)
    with torch.no_grad():
        loc, conf = net(torch.from_numpy(np.float32(img).transpose(2, 0, 1))[None])
    boxes = ref_decode(loc[0], torch.from_numpy(ref_priors(hs, ws)))
    boxes = (boxes * torch.Tensor([ws, hs, ws, hs]) / scale / 1).numpy()
    scores = conf[0].numpy()[:, 1]
    inds = np.where(scores > 0.05)[0]
    boxes, scores = boxes[inds], scores[inds]
    order = scores.argsort()[::-1][:5000]
    dets = np.hstack((boxes[order], scores[order, None])).astype(np.float32)
    dets = dets[ref_cpu_nms(dets, 0.3)][:750] if len(dets) else dets
    return np.array([d for d in dets if d[4] > 0.5], np.float32).reshape(-1, 5)


# --- 3DDFA_V2 MobileNet ---------------------------------------------------------------------

class DepthWiseBlock(nn.Module):
    def __init__(self, cin: float, cout: float, stride: int = 1):
        super().__init__()
        cin, cout = int(cin), int(cout)
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin)
        self.conv_sep = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_sep = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.bn_dw(self.conv_dw(x)))
        return F.relu(self.bn_sep(self.conv_sep(x)))


class TorchMobileNet(nn.Module):
    """``MobileNet(widen_factor, num_classes=62)`` of 3DDFA_V2."""

    def __init__(self, widen_factor: float = 1.0, num_classes: int = 62):
        super().__init__()
        wf = widen_factor
        self.conv1 = nn.Conv2d(3, int(32 * wf), 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(int(32 * wf))
        spec = [("dw2_1", 32, 64, 1), ("dw2_2", 64, 128, 2), ("dw3_1", 128, 128, 1),
                ("dw3_2", 128, 256, 2), ("dw4_1", 256, 256, 1), ("dw4_2", 256, 512, 2),
                ("dw5_1", 512, 512, 1), ("dw5_2", 512, 512, 1), ("dw5_3", 512, 512, 1),
                ("dw5_4", 512, 512, 1), ("dw5_5", 512, 512, 1), ("dw5_6", 512, 1024, 2),
                ("dw6", 1024, 1024, 1)]
        self.names = [s[0] for s in spec]
        for name, ci, co, st in spec:
            setattr(self, name, DepthWiseBlock(ci * wf, co * wf, st))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(int(1024 * wf), num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self.names:
            x = getattr(self, name)(x)
        return self.fc(self.avgpool(x).flatten(1))


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-trivial BatchNorm statistics (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net.eval()


# --- geometry (numpy restatements of utils/functions.py, tddfa_util.py, pose.py) -----------

def ref_parse_roi_box_from_bbox(bbox):
    left, top, right, bottom = bbox[:4]
    old_size = (right - left + bottom - top) / 2
    center_x = right - (right - left) / 2.0
    center_y = bottom - (bottom - top) / 2.0 + old_size * 0.14
    size = int(old_size * 1.58)
    sx, sy = center_x - size / 2, center_y - size / 2
    return [sx, sy, sx + size, sy + size]


def ref_crop_img(img, roi_box):
    h, w = img.shape[:2]
    sx, sy, ex, ey = [int(round(v)) for v in roi_box]
    dh, dw = ey - sy, ex - sx
    res = np.zeros((dh, dw, 3), dtype=np.uint8)
    dsx = -sx if sx < 0 else 0
    sx = max(sx, 0)
    dex = dw - (ex - w) if ex > w else dw
    ex = min(ex, w)
    dsy = -sy if sy < 0 else 0
    sy = max(sy, 0)
    dey = dh - (ey - h) if ey > h else dh
    ey = min(ey, h)
    res[dsy:dey, dsx:dex] = img[sy:ey, sx:ex]
    return res


def ref_similar_transform(pts3d, roi_box, size):
    pts3d = np.array(pts3d, np.float64)
    pts3d[0, :] -= 1
    pts3d[2, :] -= 1
    pts3d[1, :] = size - pts3d[1, :]
    sx, sy, ex, ey = roi_box
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    pts3d[0, :] = pts3d[0, :] * scale_x + sx
    pts3d[1, :] = pts3d[1, :] * scale_y + sy
    pts3d[2, :] *= (scale_x + scale_y) / 2
    pts3d[2, :] -= np.min(pts3d[2, :])
    return np.array(pts3d, dtype=np.float32)


def ref_landmarks(u, w_shp, w_exp, keypoints, param):
    """``BFMModel`` keypoint rows + ``recon_vers(dense_flag=False)`` before the transform."""
    u_base = u[keypoints].reshape(-1, 1)
    ws, we = w_shp[..., :40][keypoints], w_exp[..., :10][keypoints]
    r_ = param[:12].reshape(3, -1)
    r, offset = r_[:, :3], r_[:, -1].reshape(3, 1)
    a_shp, a_exp = param[12:52].reshape(-1, 1), param[52:].reshape(-1, 1)
    return r @ (u_base + ws @ a_shp + we @ a_exp).reshape(3, -1, order="F") + offset


def ref_p2srt(p):
    t3d = p[:, 3]
    r1, r2 = p[0:1, :3], p[1:2, :3]
    s = (np.linalg.norm(r1) + np.linalg.norm(r2)) / 2.0
    r1, r2 = r1 / np.linalg.norm(r1), r2 / np.linalg.norm(r2)
    return s, np.concatenate((r1, r2, np.cross(r1, r2)), 0), t3d


def ref_matrix2angle(r):
    if r[2, 0] > 0.998:
        x, z = np.pi / 2, 0.0
        y = z + math.atan2(-r[0, 1], -r[0, 2])
    elif r[2, 0] < -0.998:
        x, z = -np.pi / 2, 0.0
        y = -z + math.atan2(r[0, 1], r[0, 2])
    else:
        x = math.asin(r[2, 0])
        y = math.atan2(r[2, 1] / math.cos(x), r[2, 2] / math.cos(x))
        z = math.atan2(r[1, 0] / math.cos(x), r[0, 0] / math.cos(x))
    return x, y, z


# --- a fake 3DDFA_V2 clone ------------------------------------------------------------------

def fake_bfm(n_vertices: int = 300, seed: int = 0, dims: tuple[int, int] = (45, 12)) -> dict:
    """A reduced BFM with consistent shapes (u [3N, 1], w_shp [3N, 45], w_exp [3N, 12], 68
    keypoints as x, y, z row triples of distinct vertices)."""
    rng = np.random.default_rng(seed)
    u = (rng.standard_normal((3 * n_vertices, 1)) * 50).astype(np.float32)
    w_shp = (rng.standard_normal((3 * n_vertices, dims[0])) * 1e3).astype(np.float32)
    w_exp = (rng.standard_normal((3 * n_vertices, dims[1])) * 1e3).astype(np.float32)
    verts = rng.choice(n_vertices, 68, replace=False)
    kp = (3 * verts[:, None] + np.arange(3)).reshape(-1).astype(np.int64)
    return {"u": u, "w_shp": w_shp, "w_exp": w_exp, "keypoints": kp,
            "tri": rng.integers(0, n_vertices, (3, 10)).astype(np.int32)}


def fake_mean_std(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"mean": rng.standard_normal(62).astype(np.float32),
            "std": rng.uniform(0.5, 2.0, 62).astype(np.float32)}


def write_fake_clone(root: Path, arch: str = "mb05", seed: int = 0, bfm: dict | None = None,
                     ) -> tuple[TorchFaceBoxes, TorchMobileNet, dict, dict]:
    """A 3DDFA_V2 clone's five files with random weights, written the way the released ones
    are (MobileNet: ``{"state_dict": {"module.*", "module.fc_param.*", "module.fc_lm.*"}}``)."""
    fb = random_faceboxes(seed)
    net = randomize(TorchMobileNet({"mb1": 1.0, "mb05": 0.5}[arch]), seed + 1)
    for d in ("FaceBoxes/weights", "weights", "configs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    torch.save(fb.state_dict(), root / "FaceBoxes/weights/FaceBoxesProd.pth")
    sd = {}
    for k, v in net.state_dict().items():
        sd["module." + k.replace("fc.", "fc_param.")] = v
    sd["module.fc_lm.weight"] = torch.zeros(136, net.fc.in_features)
    sd["module.fc_lm.bias"] = torch.zeros(136)
    torch.save({"state_dict": sd}, root / f"weights/{arch}_120x120.pth")
    bfm = fake_bfm(seed=seed) if bfm is None else bfm
    ms = fake_mean_std(seed)
    with open(root / "configs/bfm_noneck_v3.pkl", "wb") as f:
        pickle.dump(bfm, f)
    with open(root / "configs/param_mean_std_62d_120x120.pkl", "wb") as f:
        pickle.dump(ms, f)
    return fb, net, bfm, ms
