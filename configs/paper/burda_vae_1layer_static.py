"""Burda et al. (2015)'s one-layer VAE (``burda_vae_1layer.py``: 784-200-200-50 tanh, k = 1,
their Adam schedule over 3,280 passes, k = 5000 importance sampling) on Larochelle & Murray's
statically binarized MNIST (TFDS ``binarized_mnist``, ``data.binarization='none'``), trained on
train + validation (60,000 images) as in the paper, evaluated on its 10,000 test images.

    python -m vae_jax.main --config configs/paper/burda_vae_1layer_static.py \\
        --workdir runs/burda_vae_1layer_static --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("burda_vae_1layer.py")


def get_config():
    c = load_config_file(BASE)
    c.data.name = "binarized_mnist"
    c.data.binarization = "none"
    c.data.train_split = "train+validation"
    return c
