"""Burda et al. (2015), Table 1, IWAE with one stochastic layer, k = 50: ``burda_vae_1layer.py``
(784-200-200-50 tanh, dynamic binarization, their Adam schedule over 3,280 passes, k = 5000
importance sampling on the test set) trained on the 50-sample importance-weighted bound.

    python -m vae_jax.main --config configs/paper/burda_iwae50_1layer.py \\
        --workdir runs/burda_iwae50_1layer --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("burda_vae_1layer.py")


def get_config():
    c = load_config_file(BASE)
    c.objective.name = "iwae"
    c.objective.num_samples = 50
    return c
