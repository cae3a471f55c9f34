"""Conditional VAE on MNIST (seeds 000, 004): q(z|x, y), p(x|z, y), learned class prior p(z|y).
Figures add class-conditional sample grids and "same z, every class" style-transfer grids.

    python -m vae_jax.main --config configs/mnist_cvae.py --workdir runs/mnist_cvae \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.family = "cvae"
    c.model.cvae.prior = "learned"
    c.model.hidden = (400, 400)
    c.model.latent_dim = 20
    c.train.num_epochs = 20
    return c
