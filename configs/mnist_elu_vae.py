"""The flat-VAE baseline beside ``mnist_tdvae.py``: the same ELU MLP 784-200-200 encoder (and its
mirror as decoder), one Gaussian latent layer of 64 (= the top-down model's 32 + 32), and
exactly that config's data (dynamically binarized MNIST), objective (linear KL warm-up over
2,340 steps), optimizer and schedule, so the two differ only in the model.

    python -m vae_jax.main --config configs/mnist_elu_vae.py --workdir runs/mnist_elu_vae \\
        --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("mnist_tdvae.py")


def get_config():
    c = load_config_file(BASE)  # data, objective, optimizer and training as mnist_tdvae.py
    c.model.family = "vae"
    c.model.latent_dim = 64
    return c
