"""The comparison on the demo models (tiny random generator, the demo teacher, tiny random
metric networks): proves the machinery on a CPU, the numbers mean nothing.

    python -m jaxhead.compare --config configs/compare_demo.py --config.only=ld,sds

Every method compiles its own train step (one to four minutes each on 2 CPU cores), so all
nine rows take a while; ``only`` picks a few.
"""

from configs import compare, demo, eval_demo


def get_config():
    c = compare.get_config()
    c.workdir = "runs/compare_demo"
    c.steps = 2
    c.train = demo.get_config()
    c.train.preview_every = 0
    c.train.checkpoint_every = 1
    c.train.final_turntable_identities = 0
    c.eval = eval_demo.get_config()
    c.eval.sd = ""
    c.eval.identities = "seeds:0-3"
    c.eval.sheet_identities = 2
    return c
