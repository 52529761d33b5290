"""The whole evaluation protocol on demo models, on a CPU in minutes, downloading nothing:

    python -m jaxhead.evaluate --config configs/eval_demo.py

The tiny demo generator is the reference; ``perturbed`` is the same generator with its
synthesis weights perturbed (a stand-in for a stylized one); the SD stack is tiny with random
weights and the metric networks have random weights (full-size Inception and LPIPS, tiny CLIP
and ArcFace), so the numbers show the machinery, not a result. Add a generator the demo
trainer exported with ``--config.generators=frozen=demo,perturbed=demo:0.3,ld=runs/demo/generator``.
"""

from configs import eval as base


def get_config():
    c = base.get_config()
    c.workdir = "runs/eval_demo"
    c.generators = "frozen=demo,perturbed=demo:0.3"
    c.identities = "seeds:0-3"
    c.style = "zombie"
    c.sd = "demo"
    c.edit.steps = 10  # SDEdit from step 5 of 10
    c.edit.batch = 2
    c.models.inception = "demo"
    c.models.clip = "demo"
    c.models.arcface = "demo"
    c.models.lpips = "demo"
    c.kid_subsets = 10
    c.sheet_identities = 2
    return c
