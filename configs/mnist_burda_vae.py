"""Burda et al. (2015)'s one-stochastic-layer MNIST model, the like-for-like plain VAE beside
``mnist_hvae.py``: x -> 200-200 (tanh) -> z (50), mirrored decoder, Bernoulli likelihood,
dynamically binarized MNIST, Adam 1e-3, batch 128: the training settings of
``mnist_hvae.py``, so the two columns differ only in the model (pass any objective override,
e.g. a warm-up or free bits, to both). Add --config.objective.name=iwae --config.objective.num_samples=5
--config.objective.free_bits=0 for the IWAE (k = 5) column of their table.

    python -m vae_jax.main --config configs/mnist_burda_vae.py --workdir runs/mnist_burda_vae \\
        --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("mnist_hvae.py")


def get_config():
    c = load_config_file(BASE)  # data, objective, optimizer and training exactly as mnist_hvae.py
    c.model.family = "vae"
    c.model.latent_dim = 50
    return c
