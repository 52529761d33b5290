"""The objective zoo inside the real train step (demo models, one compile for everything)."""

import jax
import numpy as np
import pytest

from configs import demo
from jaxhead import train

pytestmark = pytest.mark.slow  # one compile of the demo step (single view only)

TERMS = ("relative_distance", "displacement_variance", "nada", "identity", "sgf_directional",
         "sgf_reconstruction")


def test_every_zoo_term_and_prompt_variant_trains_a_demo_step():
    """NFSD (its negative prompt as extra teacher rows), the IESD blend (neutral-prompt rows),
    view-dependent prompts and all six regularising terms in one jitted step on two
    identities: each term is logged finite and the step updates the generator. The analytic
    demo teacher (no UNet, pooling VAE) keeps compile time and memory small; the extra
    prompt rows still go through the one teacher call."""
    c = demo.get_config()
    c.demo_teacher = "gaussian"
    c.batch_size = 2
    c.grid.enabled = False
    c.single.mirror = False
    c.lpips_weight = 0.0
    c.tweedie_weight = 0.0
    c.ldis_weight = 0.0
    c.objective = "nfsd"
    c.blend.enabled = True
    c.view_prompts = True
    for name in TERMS:
        c.terms[name].weight = 0.1
    b = train.build(c)
    assert set(b.frozen["terms"]) == {"nada", "identity"}
    assert set(b.frozen["text"]) == {"cond", "neg", "cond_views", "blend", "blend_views",
                                     "obj:negative_quality_prompt"}
    state = b.init()
    assert state.term_state == {}  # the zoo's terms keep no state
    before = jax.device_get(state.params)
    new, m = b.step(state, b.frozen)
    m = jax.device_get(m)
    for name in TERMS + ("ld_single",):
        assert np.isfinite(float(m[name])), (name, m)
    assert float(m["skipped"]) == 0.0 and float(m["update_norm"]) > 0
    assert 0.0 < float(m["relative_distance"]) and 0.0 <= float(m["displacement_variance"])
    assert 0.0 < float(m["nada"]) <= 0.2 + 1e-6 and 0.0 <= float(m["identity"]) <= 0.2 + 1e-6
    changed = [np.any(np.asarray(x) != np.asarray(y)) for x, y in
               zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(before),
                   strict=True)]
    assert any(changed)
