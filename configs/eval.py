"""The paper's evaluation protocol (§4 and supplement), one command:

    python -m jaxhead.evaluate --config configs/eval.py \
        --config.generators=frozen=checkpoints/panohead,pixar=runs/pixar/generator \
        --config.style=pixar --config.identities=inversions/

Identities (W+ inversions, or sampled seeds) are rendered by every generator (set #2; the
reference generator's renders are set #3); the reference renders of the ``views.edit`` views
are edited by Stable Diffusion with the style prompt (set #1: SDEdit, noised to step
``(1 - edit.strength) * edit.steps`` of ``edit.steps`` DDIM steps, then denoised). FID / KID /
CLIP similarity compare #1 with #2, CLIP-S #2 with the prompt, ArcFace ID and ΔD #2 with #3,
diversity is within #2. Renders and edits are cached under ``workdir/cache`` by content hash.
"""

import math

import ml_collections

from jaxhead.evaluation.assets import METRICS


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/eval"  # metrics.json, report.md, sheets/, metrics.png, cache/
    # NAME=DIR pairs, comma-separated: converted generators (jaxhead.render's format; the
    # trainer's runs/<style>/generator). "demo" / "demo:S" = the tiny built-in demo generator
    # (with its synthesis weights perturbed by S x their scale: a stand-in for a stylized one)
    c.generators = "frozen=checkpoints/panohead"
    c.reference = "frozen"  # the unedited generator (sets #1 and #3 come from it)
    # a directory of inverted identities (<stem>.npz with key "w" [1, num_ws, 512]) or
    # "seeds:0-99" (z = RandomState(seed).randn(512), mapped by the reference generator)
    c.identities = "seeds:0-99"
    c.truncation_psi = 0.8  # seeds only (paper 0.8)
    c.truncation_cutoff = 14
    c.cond_yaw = 0.0  # seeds only: conditioning camera of the mapping
    c.cond_pitch = 0.2

    c.style = "pixar"  # pixar statue joker sketch werewolf zombie (its config's prompt) ...
    c.prompt = ""  # ... or a prompt, which then wins
    c.negative_prompt = ""

    c.views = ml_collections.ConfigDict()
    c.views.yaw = (0.0, -math.pi / 6, math.pi / 6)  # radians, 0 = frontal; ID and ΔD use all
    c.views.pitch = (0.0, 0.0, 0.0)
    c.views.edit = (0,)  # indices of the views that get an SD edit (FID / KID / CLIP)
    c.views.background = "white"  # the official inference renders' background
    c.views.noise_mode = "const"
    c.views.batch = 3  # views rendered per call

    c.sd = "checkpoints/sd"  # python -m convert_weights.diffusers (the style's SD checkpoint)
    c.edit = ml_collections.ConfigDict()
    c.edit.strength = 0.5  # paper: noise to step 25 of 50, then denoise
    c.edit.steps = 50
    c.edit.guidance_scale = 7.5
    c.edit.eta = 0.0
    c.edit.seed = 0  # identity i's edit noise: key(fold_in(seed, i))
    c.edit.dtype = "float32"  # "bfloat16": UNet in bf16 (GPUs)
    c.edit.batch = 1  # edits per call

    c.metrics = METRICS  # any subset of fid kid clip clip_score id depth diversity
    c.models = ml_collections.ConfigDict()  # converted metric networks ("demo": random weights)
    c.models.inception = "checkpoints/inception_fid"  # convert_weights.inception (FID, KID)
    c.models.clip = "checkpoints/clip-vit-b32"  # convert_weights.clip (CLIP, CLIP-S)
    c.models.arcface = "checkpoints/arcface_r50"  # convert_weights.arcface (ID, diversity)
    c.models.lpips = "checkpoints/lpips_alex"  # convert_weights.lpips (diversity)
    c.kid_subset_size = 1000  # capped at the number of images
    c.kid_subsets = 100
    c.metric_batch = 16
    c.sheet_identities = 4  # identities shown in sheets/
    # compiled XLA programs kept across runs (jaxhead.train's cache; "" turns it off)
    c.compilation_cache = "auto"
    return c
