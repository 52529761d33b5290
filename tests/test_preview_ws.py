"""The trainer's previews follow inverted identities (``config.preview_ws``)."""

import jax
import numpy as np
import pytest

from configs import demo
from jaxhead import train
from jaxhead.errors import DataError, UsageError
from jaxhead.latents import save_ws
from jaxhead.training.config import validate_config
from jaxhead.training.demo import demo_models
from jaxhead.training.preview import compose, make_preview_fn, read_preview_ws
from jaxhead.training.sampling import conditioning_ws


def _config(**kw):
    c = demo.get_config()
    c.final_turntable_identities = 0
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_missing_preview_ws_is_refused_with_the_config(tmp_path):
    with pytest.raises(UsageError, match=r"preview_ws='.*nope' does not exist"):
        validate_config(_config(preview_ws=str(tmp_path / "nope")))
    validate_config(_config(preview_ws=str(tmp_path)))  # exists: files are read later
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="holds no .npz files"):
        read_preview_ws(_config(preview_ws=str(tmp_path)))


def test_wrong_num_ws_stops_before_the_first_step(tmp_path):
    d = tmp_path / "inv"
    d.mkdir()
    save_ws(d / "me.npz", np.zeros((1, 14, 512), np.float32))  # the full model's num_ws
    c = _config(preview_ws=str(d), steps=1, demo_teacher="gaussian")  # cheapest build
    with pytest.raises(DataError, match=r"me.npz'.*w is \[1, 14, 512\].*takes \[1, 8, 512\]"):
        train.train_and_evaluate(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow  # compiles the preview renders (512 px SR) twice
def test_previews_render_the_given_identities(tmp_path):
    c = validate_config(_config(preview_identities=2))
    models, frozen = demo_models(c)
    fparams = frozen["generator"]
    # the default preview's identities, written as inverted latents
    z = jax.random.normal(jax.random.key(c.seed + 12345), (2, models.G.z_dim))
    ws = np.asarray(conditioning_ws(models.G, c, fparams, z))
    d = tmp_path / "inv"
    d.mkdir()
    for name, w in zip(("bob", "amy"), ws, strict=True):
        save_ws(d / f"{name}.npz", w[None])
    items = read_preview_ws(validate_config(_config(preview_ws=str(d))))
    assert [n for n, _ in items] == ["amy", "bob"]  # sorted by name
    given = make_preview_fn(models, c, 2, c.seed, ws=np.concatenate([w for _, w in items]))
    default = make_preview_fn(models, c, 2, c.seed)
    trainable = {}  # nothing trained yet: "after" is the frozen generator too
    a = jax.device_get(given(trainable, frozen))
    b = jax.device_get(default(trainable, frozen))
    # amy is the default's identity 1, bob its identity 0
    for k in ("before", "after"):
        np.testing.assert_allclose(a[k][0], b[k][1], atol=1e-5)
        np.testing.assert_allclose(a[k][1], b[k][0], atol=1e-5)
    assert np.abs(a["before"][0] - a["before"][1]).max() > 0.1  # two different people
    u8 = {k: np.clip(np.rint(np.asarray(v) * 127.5 + 128), 0, 255).astype(np.uint8)
          for k, v in a.items()}
    sheet_named, _ = compose(u8, ["amy", "bob"])
    sheet_default, _ = compose(u8)
    assert sheet_named.shape == sheet_default.shape
    assert not np.array_equal(sheet_named, sheet_default)  # the names are written in
