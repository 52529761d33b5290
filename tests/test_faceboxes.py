"""FaceBoxes port vs a PyTorch restatement of 3DDFA_V2's ``FaceBoxesNet`` (random weights,
converted from its ``state_dict``) and the reference's priors, decoding, NMS and detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tddfa_testlib import (  # noqa: E402
        cv2_resize,
    float_resize,
    random_faceboxes,
    ref_cpu_nms,
    ref_decode,
    ref_detect,
    ref_priors,
)

from convert_weights.tddfa import faceboxes_params  # noqa: E402
from jaxhead.models import faceboxes  # noqa: E402


@pytest.fixture(scope="module")
def nets():
    net = random_faceboxes(seed=3)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    return net, faceboxes_params(sd)


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("hw", [(128, 192)])
def test_forward_matches_reference(nets, hw):
    net, params = nets
    x = np.random.default_rng(0).uniform(-120, 150, (1, *hw, 3)).astype(np.float32)
    with torch.no_grad():
        loc_t, conf_t = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    loc, conf = jax.jit(faceboxes.forward)(params, jnp.asarray(x))
    assert loc.shape == loc_t.shape and conf.shape == conf_t.shape
    assert loc.shape[1] == faceboxes.priors(*hw).shape[0]
    assert _rel(loc, loc_t.numpy()) < 1e-4
    assert np.abs(np.asarray(conf) - conf_t.numpy()).max() < 1e-4  # scores: scale 1
    s = conf_t.numpy()[..., 1]
    assert np.mean((s > 0.05) & (s < 0.95)) > 0.2  # unsaturated scores: a real comparison


@pytest.mark.parametrize("hw", [(64, 64), (100, 70), (720, 1080), (33, 300)])
def test_priors_match_reference(hw):
    np.testing.assert_array_equal(faceboxes.priors(*hw), ref_priors(*hw))


def test_decode_matches_reference():
    rng = np.random.default_rng(1)
    pri = ref_priors(100, 70)
    loc = rng.standard_normal(pri.shape).astype(np.float32)
    want = ref_decode(torch.from_numpy(loc), torch.from_numpy(pri)).numpy()
    np.testing.assert_allclose(np.asarray(faceboxes.decode(jnp.asarray(loc), jnp.asarray(pri))),
                               want, rtol=1e-6, atol=1e-6)


def test_nms_matches_cpu_nms():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 80, (300, 2))
    wh = rng.uniform(5, 40, (300, 2))
    dets = np.hstack([xy, xy + wh, rng.uniform(0, 1, (300, 1))]).astype(np.float32)
    dets[10] = dets[11]  # identical boxes: IoU 1
    dets[20, :4] = dets[21, :4] + [0, 0, 0, 0.5]
    keep = faceboxes.nms(dets, 0.3)
    assert keep == ref_cpu_nms(dets, 0.3)
    assert 20 < len(keep) < 300  # some suppressed, some kept
    # the ">=" of cpu_nms: two boxes with IoU exactly 1/3 vs a threshold of 1/3
    pair = np.array([[0, 0, 9, 9, 0.9], [0, 5, 9, 14, 0.8]], np.float32)  # IoU 50/150
    assert faceboxes.nms(pair, 1 / 3) == ref_cpu_nms(pair, 1 / 3) == [0]


@pytest.mark.parametrize("hw, dtype", [((150, 200), np.uint8), ((730, 60), np.uint8),
                                       ((40, 1200), np.uint8), ((730, 60), np.float32)])
def test_detect_matches_reference(nets, hw, dtype):
    """Whole ``FaceBoxes.__call__``; (730, 60) and (40, 1200) take the down-scaling path:
    uint8 images through the reference's own cv2.resize, float images (which the reference
    does not take) against a float bilinear resize at the same sample points."""
    net, params = nets
    img = np.random.default_rng(4).uniform(0, 255, (*hw, 3)).astype(np.uint8).astype(dtype)
    want = ref_detect(net, img, resize=cv2_resize if dtype == np.uint8 else float_resize)
    got = faceboxes.detect(params, img)
    assert len(want) > 0
    assert got.shape == want.shape
    scale = max(hw)
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1e-4 * scale)
    np.testing.assert_allclose(got[:, 4], want[:, 4], atol=1e-5)
    assert np.all(got[:, 4] > 0.5) and np.all(np.diff(got[:, 4]) <= 0)


def test_detector_scale_rule():
    assert faceboxes.detector_scale(700, 1000) == 1.0
    assert faceboxes.detector_scale(1440, 1000) == 0.5
    assert faceboxes.detector_scale(100, 2160) == pytest.approx(0.5)
    assert faceboxes.detector_scale(1440, 4320) == pytest.approx(0.25)
