"""Burda et al. (2015), Table 1, IWAE with two stochastic layers, k = 5: ``burda_vae_2layer.py``
(784-200-200-100 and 100-100-50 tanh, bottom-up inference, dynamic binarization, their Adam
schedule over 3,280 passes, k = 5000 importance sampling on the test set) trained on the
5-sample importance-weighted bound.

    python -m vae_jax.main --config configs/paper/burda_iwae5_2layer.py \\
        --workdir runs/burda_iwae5_2layer --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("burda_vae_2layer.py")


def get_config():
    c = load_config_file(BASE)
    c.objective.name = "iwae"
    c.objective.num_samples = 5
    return c
