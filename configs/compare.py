"""The paper's comparison (Table 1) on one style: every method below fine-tunes the same
frozen PanoHead on the same identities (``train.seed``) for the same budget (``steps``), then
``jaxhead.evaluate`` scores them all (one row per method) into ``<workdir>/report/``.

    python -m jaxhead.compare --config configs/compare.py --config.workdir=runs/compare_pixar
    python -m jaxhead.compare --config configs/compare.py --config.only=ld,sds,nada

``methods``: name -> overrides of the training config ``train`` (``FIELD=VALUE`` pairs
separated by ``;``; values are Python literals, else strings; ``""``: ``train`` as it is).
Change a row from the command line (``--config.methods.sds="objective=sds; guidance_scale=
100.0"``); add one in a config file of your own::

    from configs import compare
    def get_config():
        c = compare.get_config()
        c.methods.ld_no_grid = "grid.enabled=False"
        return c

``steps``, ``workdir``, ``seed`` and ``models.generator`` are the same for every method
(refused in ``methods``). A finished method is reused on a rerun, an interrupted one resumes;
a failing one is reported and the others still run.
"""

import ml_collections

from configs import eval as eval_base
from configs import pixar

# The rows. The paper's baselines as the objective zoo expresses them (docs/objectives.md):
METHODS = {
    # the paper: LD with rank weighting, mirror and 2x2 grid (configs/base.py as it is)
    "ld": "",
    # StyleGAN-Fusion-like: SDS (the stylization code's SDS switch) on the same views
    "sds": "objective=sds",
    # DiffusionGAN3D-like: SDS + the relative distance loss over a batch of 2 identities
    "sds_rd": "objective=sds; batch_size=2; terms.relative_distance.weight=1.0",
    # StyleGAN-NADA: the directional CLIP loss alone on the single view. The score's weight is
    # 0 (single.base_weight), so the teacher is still called but drives nothing
    "nada": ("single.base_weight=0.0; single.mirror=False; grid.enabled=False; "
             "tweedie_weight=0.0; lpips_weight=0.0; ldis_weight=0.0; terms.nada.weight=1.0"),
    # each other registered objective with its registry defaults (docs/objectives.md)
    "sds_dreamfusion": "objective=sds_dreamfusion",
    "csd": "objective=csd",
    "nfsd": "objective=nfsd",
    "bsd": "objective=bsd",
    "sas": "objective=sas",
}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/compare"  # <workdir>/<method>/ (training runs), report/, compare.json
    c.steps = 10_000  # every method's training budget (paper: 10k iterations)
    c.train = pixar.get_config()  # the training config every method starts from
    c.methods = ml_collections.ConfigDict(dict(METHODS))
    c.only = ""  # comma-separated subset of methods to run (and report), in this order
    # the evaluation (configs/eval.py): identities, views, SD edits, metrics, networks; its
    # generators, reference, prompt, truncation, conditioning camera and workdir are set by
    # the comparison (from train); sd "" = the training teacher's checkpoint (train.models.sd)
    c.eval = eval_base.get_config()
    c.eval.sd = ""
    c.compilation_cache = "auto"  # compiled XLA programs kept across runs ("" turns it off)
    return c
