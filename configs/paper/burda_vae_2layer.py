"""Burda et al. (2015), Table 1, VAE with two stochastic layers, k = 1: x -> 784-200-200 (tanh)
-> z1 (100) -> 100-100 (tanh) -> z2 (50), mirrored top-down, with their inference path
q(z1|x) q(z2|z1) (``model.hvae.inference='bottom_up'``); data, optimizer, schedule (3,280
passes) and evaluation (k = 5000 on all 10,000 test images) as ``burda_vae_1layer.py``.

    python -m vae_jax.main --config configs/paper/burda_vae_2layer.py \\
        --workdir runs/burda_vae_2layer --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("burda_vae_1layer.py")


def get_config():
    c = load_config_file(BASE)
    c.model.family = "hvae"
    c.model.hvae.latents = (100, 50)
    c.model.hvae.upper_hidden = (100, 100)
    c.model.hvae.inference = "bottom_up"
    return c
