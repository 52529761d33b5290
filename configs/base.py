"""Base configuration of the stylization run (the paper's settings; the prompt is set by the
style configs). Run a style with

    python -m jaxhead.train --config configs/pixar.py --config.workdir=runs/pixar

Any field can be overridden from the command line (``--config.steps=2000``); unknown fields are
refused. Paths to real weights are under ``models``; see the README for the convert commands.
"""

import math

import ml_collections

from jaxhead.training.config import objective_kw_config
from jaxhead.training.terms import terms_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # root PRNG seed; step keys are fold_in(root, step), so resuming needs no key
    c.workdir = "runs/default"  # checkpoints, metrics, previews, exported generator
    c.steps = 10_000  # paper: 10k iterations
    c.batch_size = 1  # identities per step (paper: 1); split over the devices' data axis
    c.fixed_batch = False  # debugging: the same batch (key fold_in(root, 0)) every step

    # --- models (converted with convert_weights.*; "demo" = tiny random models built in code)
    c.models = ml_collections.ConfigDict()
    c.models.generator = "checkpoints/panohead"  # python -m convert_weights.panohead
    c.models.sd = "checkpoints/sd"  # python -m convert_weights.diffusers (unet, vae, text, ...)
    c.models.depth_anything = "checkpoints/depth_anything_v2_vitb"  # convert_weights.depth_anything
    c.models.lpips = "checkpoints/lpips_alex"  # python -m convert_weights.lpips (if lpips_weight)
    c.models.teacher_dtype = "float32"  # "bfloat16": frozen teacher params + activations in bf16
    c.models.shard_teacher = False  # shard the frozen teacher's params over the devices
    c.models.clip = "checkpoints/clip-vit-b32"  # python -m convert_weights.clip (terms.nada)
    c.models.arcface = "checkpoints/arcface_r50"  # convert_weights.arcface (terms.identity)
    # python -m convert_weights.lpips --net vgg ... (or convert_weights.vgg16_nvidia): the
    # portrait mode's inversion and spatial LPIPS (terms.portrait)
    c.models.lpips_vgg = "checkpoints/lpips_vgg"
    # with models "demo" only: "gaussian" (an analytic teacher pulling latents towards a palette,
    # jaxhead.training.demo_teacher) or "random_sd" (a tiny random-weight SD stack)
    c.demo_teacher = "random_sd"

    # --- text
    c.prompt = ""  # set by the style configs
    c.negative_prompt = ""  # official: ''

    # --- generator sampling
    c.truncation_psi = 0.8  # paper 0.8 (official code 0.75)
    c.truncation_cutoff = 14
    c.cond_yaw = 0.0  # camera conditioning the mapping network (official: yaw 0, pitch 0.2)
    c.cond_pitch = 0.2
    c.noise_mode = "random"  # backbone noise of the trained and frozen generators (official)

    # --- optimizer: Adam on backbone.synthesis + superresolution, every bias frozen
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # adam | sgd
    c.optimizer.lr = 1e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.trainable = ("params/backbone/synthesis/", "params/superresolution/")
    c.optimizer.frozen = ("/bias$",)  # regexes over "/"-joined paths, applied after trainable

    # --- teacher and objective
    c.num_inference_steps = 50  # DDIM schedule the step indices refer to
    # a name registered in jaxhead.losses.OBJECTIVES: ld | sds | bsd | sds_dreamfusion | csd |
    # nfsd | sas (docs/objectives.md; sas samples the style bank below); "none": no score
    # distillation, no teacher (views off; the terms are the loss: configs/portrait.py)
    c.objective = "ld"
    # the objective's keyword arguments (unset = its registered default), e.g.
    # --config.objective_kw.form=paper (LD with the full CFG eps as the score; default official:
    # s (eps_c - eps_u) sqrt(abar)) or, for sds, form=standard (DreamFusion) / official;
    # objective_kw.t_range replaces the views' t_range (sds_dreamfusion, csd and nfsd register
    # (0.02, 0.98)); objective_kw.negative_quality_prompt: NFSD's negative prompt
    c.objective_kw = objective_kw_config()
    c.guidance_scale = 7.5  # teacher CFG scale (also the objective's unless objective_kw sets it)
    c.controlnet_scale = 1.0
    c.alpha_index = "step"  # "step": alphas_cumprod[step index] as the official code;
    #                         "timestep": alphas_cumprod[timestep] (the formula's abar_t)
    # view-dependent prompts: the single view's rows use the prompt + ", front view" /
    # ", side view" / ", back view" by the camera's yaw (|yaw| < 45 deg front, > 135 deg back)
    c.view_prompts = False
    # identity-aware prompt blend (HeadSculpt's IESD): eps_cond = w eps(x_t; prompt) +
    # (1 - w) eps(x_t; blend.prompt), same x_t, noise and control; works with any objective
    c.blend = ml_collections.ConfigDict()
    c.blend.enabled = False
    c.blend.weight = 0.6  # omega_e (HeadSculpt: 0.6); 1 = the style prompt alone
    c.blend.prompt = "Portrait of a person"  # the neutral prompt y
    # the style bank of objectives that take style statistics (sas): style_bank.count teacher
    # samples of the prompt (DDIM text-to-image, style_bank.steps steps, CFG
    # style_bank.guidance_scale, the negative prompt, no ControlNet; sample i's noise from
    # fold_in(key(style_bank.seed), i)) at the views' latent size; their latent channel mean
    # [4] and covariance [4, 4] feed the objective. Sampled once into <workdir>/style_bank.npz
    # (with its settings) and reused by a resumed run; a bank of other settings is resampled.
    # Defaults: the SAS paper's 20 samples, 20 steps, CFG 7.5
    c.style_bank = ml_collections.ConfigDict()
    c.style_bank.count = 20
    c.style_bank.steps = 20
    c.style_bank.guidance_scale = 7.5
    c.style_bank.seed = 0
    c.style_bank.batch = 4  # samples per sampler call (memory only, not part of the cache key)
    c.grad_mask = True  # multiply by the frozen generator's 64 px opacity
    c.grad_div = 1000.0
    c.grad_clamp = 1.0

    # --- single view + mirror score
    c.single = ml_collections.ConfigDict()
    c.single.enabled = True  # the single-view (+ mirror) score
    c.single.yaw_range = (-math.pi / 3, math.pi / 3)
    c.single.pitch_range = (-math.pi / 6, math.pi / 6)
    c.single.t_range = (0.70, 0.96)  # paper: fraction of the 50 DDIM steps: draws 35..47
    c.single.step_range = ()  # (lo, hi): step index uniform on lo..hi inclusive, replacing
    #                           t_range; (35, 49) = the official code's randint(35, 49)
    c.single.control = "canny"  # jaxhead.training.controls.CONTROLS: none | canny |
    #                             depth_anything | renderer_depth
    c.single.rank_weights = (1.0, 0.75, 0.5, 0.25)  # () disables rank weighting
    c.single.rank_renorm = True
    c.single.mirror = True
    c.single.base_weight = 0.75
    c.single.mirror_weight = 0.25

    # --- 2x2 grid score
    c.grid = ml_collections.ConfigDict()
    c.grid.enabled = True
    c.grid.mode = "before_sr"  # before_sr: 64 px raw renders x4; after_sr: 512 px SR renders / 2
    c.grid.yaw_range = (-math.pi, math.pi)
    c.grid.pitch_range = (-math.pi / 6, math.pi / 6)
    c.grid.t_range = (0.30, 0.80)  # paper: draws 15..39
    c.grid.step_range = ()  # official: (35, 49) by its command line, (15, 40) in its train()
    c.grid.control = "depth_anything"  # official (weights must exist); renderer_depth: the
    #                                    frozen renderer's 64 px depth, no weights | none
    c.grid.weight = 1.0

    # --- extra terms (official defaults)
    c.tweedie_weight = 0.1  # |x0_hat - (img + 1) / 2|^2 of the single view
    c.ldis_weight = 1.0  # relative distances of tri-planes of consecutive batches
    c.lpips_weight = 0.05  # LPIPS(alex) of x0_hat vs the single-view render (official)
    # regularising terms of the baselines (jaxhead.training.terms.regularizers), each
    # terms.<name>.weight (0 = off) and its options: relative_distance (DiffusionGAN3D, batch
    # >= 2), displacement_variance (StyleMM CDL, batch >= 2), nada (StyleGAN-NADA CLIP
    # direction: source, target), identity (ArcFace 1 - cos), sgf_directional and
    # sgf_reconstruction (StyleGAN-Fusion: div, clamp), portrait (3DArtmator's single-portrait
    # mode: configs/portrait.py; its options are documented in jaxhead/training/terms/portrait.py)
    c.terms = terms_config()

    # --- single-portrait mode (3DArtmator; configs/portrait.py, terms.portrait)
    # the art portrait: an aligned square crop with a camera, either a folder in PanoHead's
    # layout (dataset.json) holding one image, or an image file with reference_yaw (required)
    # and reference_pitch in radians (jaxhead.invert's two forms)
    c.reference = ""
    c.reference_yaw = ml_collections.config_dict.placeholder(float)
    c.reference_pitch = 0.0
    # its W+ inversion, an .npz with 'w' [1, num_ws, w_dim] (jaxhead.invert's output): skips
    # the inversion. "": inverted at start (reference_invert_steps projector steps, PanoHead's
    # projector) and cached as <workdir>/reference_w.npz with its settings (a resumed run
    # reuses it; a cache of another reference or setting is refused)
    c.reference_w = ""
    c.reference_invert_steps = 500

    # --- resuming and divergence
    c.resume_changed = ()  # fields allowed to differ from the workdir's saved config.json
    #                        (beyond logging cadence and length, which always may)
    c.max_skipped_steps = 10  # stop after this many consecutive steps with a non-finite
    #                           gradient (each such step is skipped: no update, counted)

    # --- compilation: the train CLI keeps compiled programs here, so a rerun of the same
    # config starts in seconds ("auto": ~/.cache/jaxhead/xla or $XDG_CACHE_HOME; "": off)
    c.compilation_cache = "auto"

    # --- memory
    c.remat = True  # recompute renders / VAE encoder activations in the backward pass
    # one backward pass per view (single + mirror, then grid), their gradients summed (as the
    # official code backpropagates its two losses separately): only one view's activations are
    # live at a time; same update to fp32 round-off
    c.split_backward = True

    # --- sharding / multi-host
    c.mesh_axis = "data"
    c.num_devices = 0  # devices on the data axis (0: as many as split batch_size evenly)
    c.distributed = False  # call jax.distributed.initialize() (multi-host; docs/sharding.md)
    # where the processes meet; unset (""/0/-1): auto-detected on SLURM, Open MPI, TPU pods
    c.coordinator_address = ""  # "host:port" of process 0
    c.num_processes = 0
    c.process_id = -1

    # --- logging
    c.log_every = 10
    c.preview_every = 250  # 0: no previews
    c.preview_identities = 3
    # previews follow inverted identities: a directory of <name>.npz files with 'w'
    # [1, num_ws, w_dim] (jaxhead.invert's output, PanoHead's projected_w.npz layout), the first
    # preview_identities by name (and final_turntable_identities for the final turntables);
    # "" = seeded random identities
    c.preview_ws = ""
    c.checkpoint_every = 250
    c.keep_checkpoints = 3
    c.final_turntable_identities = 3
    c.final_turntable_frames = 24
    return c
