"""Single-portrait mode (3DArtmator, Zheng et al. 2024): stylize PanoHead from one art portrait
instead of a prompt.

    python -m jaxhead.train --config configs/portrait.py --config.reference=art/ \
        --config.workdir=runs/portrait
    # one image and its camera (radians), or an inversion made earlier by jaxhead.invert:
    python -m jaxhead.train --config configs/portrait.py --config.reference=mona.png \
        --config.reference_yaw=0.3 --config.reference_w=out/inv/mona.npz
    # the demo models (tiny random generator, CLIP and LPIPS; nothing downloaded):
    python -m jaxhead.train --config configs/portrait.py --config.models.generator=demo \
        --config.models.sd=demo --config.reference=art.png --config.reference_yaw=0

The portrait is inverted into the frozen generator first (``reference_invert_steps`` steps of
PanoHead's projector, cached as ``<workdir>/reference_w.npz``; skipped with ``reference_w``),
then the generator is trained with the image-direction CLIP loss and the LPIPS of its render
at the reference camera against the portrait (``terms.portrait``, all weights 1 as in the
paper; jaxhead/training/terms/portrait.py). No score distillation (``objective="none"``): no Stable
Diffusion weights are needed, only the generator, CLIP (``models.clip``) and LPIPS-VGG16
(``models.lpips_vgg``).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.workdir = "runs/portrait"
    c.objective = "none"  # no teacher: the portrait term is the whole loss
    c.single.enabled = False
    c.grid.enabled = False
    c.ldis_weight = 0.0
    c.tweedie_weight = 0.0
    c.lpips_weight = 0.0
    c.terms.portrait.weight = 1.0  # lambda_3 = lambda_4 = 1 (terms.portrait.*_weight)
    c.optimizer.lr = 1e-5  # the paper's second stage (Adam, 1e-5)
    c.steps = 1000  # not stated in the paper ("within 20 minutes" on an A100)
    c.preview_every = 100
    c.checkpoint_every = 100
    return c
